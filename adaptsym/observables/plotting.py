"""What every report figure needs: a reader of a run's store by observable and checkpoint
(`Reader`, raising `MissingData` for what is not there) and the shared drawing helpers. The
figures themselves live with their observables (each module's `OBSERVABLE.figures`), and
`adaptsym.report` draws them."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..storage.store import RunStore  # noqa: E402


class MissingData(LookupError):
    """The arrays or scalars a figure needs are not in the store (the figure is skipped)."""


# marginal scalars under their names before the two readings (stores written before 2026-11-30)
LEGACY = {"z_fraction_exact_ci_low": "z_fraction_ci_low", "z_fraction_exact_ci_high": "z_fraction_ci_high",
          "z_fraction_exact_std": "z_fraction_std"}


def legacy_key(key: str) -> str | None:
    """The name a `marginal.` scalar (without the observable's prefix) had before the two readings."""
    if not key.startswith("marginal."):
        return None
    rest = key[len("marginal."):]
    return LEGACY.get(rest, rest)


class Reader:
    """Arrays of a run's store by (observable, name) per checkpoint; raises MissingData."""

    def __init__(self, store: RunStore):
        self.store = store
        self.groups = [g for g in store.checkpoint_groups() if store.is_complete(g)]
        self.epochs = [int(g.split("_")[1]) for g in self.groups]

    def series(self, obs: str, name: str) -> tuple[list[int], list[np.ndarray]]:
        eps, vals = [], []
        for e, g in zip(self.epochs, self.groups):
            if self.store.has(f"{g}/{obs}", name):
                eps.append(e)
                vals.append(self.store.read(f"{g}/{obs}", name))
        if not vals:
            raise MissingData(f"{obs}/{name} (in no complete checkpoint group)")
        return eps, vals

    def scalar(self, obs: str, key: str) -> tuple[list[int], np.ndarray]:
        """One scalar per checkpoint; a `marginal.` key falls back to its name before the two readings."""
        eps, vals = [], []
        for e, g in zip(self.epochs, self.groups):
            sc = self.store.attrs(g).get("scalars", {})
            v = sc.get(f"{obs}.{key}")
            if v is None and legacy_key(key) is not None:
                v = sc.get(f"{obs}.{legacy_key(key)}")
            if v is not None and not isinstance(v, str) and np.isfinite(v):
                eps.append(e)
                vals.append(float(v))
        if not vals:
            raise MissingData(f"scalar {obs}.{key}")
        return eps, np.array(vals)

    def training(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if not self.store.has("training", name):
            raise MissingData(f"training/{name}")
        return self.store.read("training", "epoch"), self.store.read("training", name)


def colors(n):
    return plt.cm.viridis(np.linspace(0.05, 0.95, max(n, 1)))


def ridgeline(ax, centers, curves, epochs, xlabel):
    """One filled density per epoch, stacked upwards (first epoch at the bottom), each scaled to its
    peak; the y axis is labelled with the epochs."""
    for i, (c, e, col) in enumerate(zip(curves, epochs, colors(len(curves)))):
        c = c / c.max() if c.max() > 0 else c
        ax.fill_between(centers, i, i + 0.9 * c, color=col, alpha=0.7, lw=0.5)
    ax.set_yticks(range(len(curves)), [str(e) for e in epochs], fontsize=7)
    ax.set_ylabel("epoch (density / its peak)", fontsize=8)
    ax.set_xlabel(xlabel)


def has(r: Reader, name: str) -> bool:
    try:
        r.series("hessian_entries", name)
        return True
    except MissingData:
        return False


def band(r: Reader, ax, ep, key: str, values, **kw) -> None:
    """A shaded 95% interval from the scalars `<key>_ci_low/high` (a +-std band from
    `<key>_std` for stores written before intervals existed)."""
    try:
        _, lo = r.scalar("hessian_entries", f"{key}_ci_low")
        _, hi = r.scalar("hessian_entries", f"{key}_ci_high")
    except MissingData:
        try:
            _, sd = r.scalar("hessian_entries", f"{key}_std")
        except MissingData:
            return
        lo, hi = values - sd, values + sd
    if len(lo) == len(ep):
        ax.fill_between(ep, lo, hi, alpha=0.25, **kw)
