"""Progress that never floods a log and never goes silent.

With a terminal, tqdm draws bars (`disable=None`: only when stderr is a terminal). Without one (Ray
job logs, CI, `nohup`), `ProgressLines` prints one flushed line per phase and per step instead,
with the elapsed time and an ETA from the mean time of the steps done so far."""

from __future__ import annotations

import sys
import time


def bar_off(progress: bool) -> bool | None:
    """The `disable` argument of tqdm for a caller that wants bars when `progress` is true."""
    return None if progress else True


def lines_on(progress: bool) -> bool:
    """Whether a caller that wants progress should print lines: it does, and no bar is drawn."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(progress) and not (isatty is not None and isatty())


def fmt_seconds(s: float) -> str:
    """12 s, 3.4 min, 1.2 h."""
    if s < 100:
        return f"{s:.0f} s"
    if s < 6000:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


class ProgressLines:
    """`label`: what runs; `total`: its steps. `phase(...)` and `step(...)` print one line each
    (to stdout, flushed) when `on`; `skip()` counts a step that needed no work (out of the ETA)."""

    def __init__(self, label: str, total: int, on: bool, out=None):
        self.label, self.total, self.on = label, total, on
        self.out = out
        self.t0 = time.perf_counter()
        self.done = self.skipped = 0
        self.work_s = 0.0

    def _print(self, text: str) -> None:
        if self.on:
            print(f"{self.label}: {text}", file=self.out or sys.stdout, flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def phase(self, what: str, seconds: float) -> None:
        self._print(f"{what} done in {fmt_seconds(seconds)} (elapsed {fmt_seconds(self.elapsed())})")

    def skip(self, what: str) -> None:
        self.skipped += 1
        self._print(f"{what}: already measured, kept ({self.done + self.skipped}/{self.total})")

    def step(self, what: str, seconds: float) -> None:
        self.done += 1
        self.work_s += seconds
        left = self.total - self.done - self.skipped
        eta = f", ETA {fmt_seconds(self.work_s / self.done * left)}" if left else ", finished"
        self._print(f"{what} done in {fmt_seconds(seconds)} ({self.done + self.skipped}/{self.total}; "
                    f"elapsed {fmt_seconds(self.elapsed())}{eta})")
