"""Progress bars that never flood a log: a bar is drawn only when asked for *and* stderr is a
terminal (tqdm's `disable=None`), so Ray job logs and CI output carry no bar updates."""


def bar_off(progress: bool) -> bool | None:
    """The `disable` argument of tqdm for a caller that wants bars when `progress` is true."""
    return None if progress else True
