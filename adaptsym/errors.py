"""The base of every error whose message tells the user what to do (a bad config, a missing data
set, a corrupt checkpoint, an unreachable server, ...). The command line prints such an error
and exits with status 2; anything else is a bug and keeps its traceback.

Errors raised in more than one layer live here, so that `services/` never imports an observable
module for its error type."""


class UserFacingError(Exception):
    pass


class TileError(UserFacingError, RuntimeError):
    """A tile failed repeatedly; the message names it and the last error."""
