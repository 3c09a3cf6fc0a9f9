"""The base of every error whose message tells the user what to do (a bad config, a missing data
set, a corrupt checkpoint, an unreachable server, ...). The command line prints such an error
and exits with status 2; anything else is a bug and keeps its traceback."""


class UserFacingError(Exception):
    pass
