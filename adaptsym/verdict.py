"""A verdict on the paper's two headline numbers for one measured checkpoint.

Li's observations (Fig 7b, 7c) that a user comes to check:
- *concentration*: at least 95% of Hessian entries have |z| < 0.15, z = mean / std of the
  minibatch entry H_a(S) (rising to about 98% during training);
- *sparsity*: each entry correlates with 3.39e-4 of the others (the relative correlation
  coupling set size).

For each, the row holds the paper's value, ours with its 95% interval (pool resamples for the
fraction, entry resamples for the coupling size; `hessian_entries`), the regime we measured in,
and a verdict:
- *reproduced* / *not reproduced*: in the paper's regime (vgg12 at full width on binarised
  CIFAR-10), the interval lies on the paper's side of 0.95 (concentration), or contains 3.39e-4
  (sparsity) / does not;
- *inconclusive*: in that regime, but the interval straddles 0.95;
- *untested in this regime*: another network or data set, or a statistic that the pool cannot
  test (too few active examples). The comparison at face value is still given.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .config import nest_legacy_keys

PAPER = {"z_fraction": 0.95, "corr_relative": 3.39e-4}
PAPER_REGIME = "vgg12 at full width (N = 9,664,704) on binarised CIFAR-10"


@dataclass
class Verdict:
    claim: str
    paper: str
    ours: float
    ci_low: float
    ci_high: float
    regime: str
    face_value: str  # what the interval says against the paper's number, whatever the regime
    verdict: str
    why: str = ""

    def row(self) -> dict:
        return asdict(self)


def regime_of(config: dict, model_name: str, epoch: int, scalars: dict) -> tuple[str, bool]:
    """A one-line description of the measured regime, and whether it is the paper's."""
    spec = config.get("models", {}).get(model_name, {})
    kind, width = spec.get("kind", "?"), float(spec.get("width_multiplier", 1.0))
    data = config.get("data", {}).get("name", "?")
    n = scalars.get("hessian_entries.n_params")
    pool, active = scalars.get("hessian_entries.pool_size"), scalars.get("hessian_entries.n_active_examples")
    desc = (f"{kind}" + (f" x{width:g}" if kind == "vgg12" and width != 1 else "")
            + (f", N = {int(n):,}" if n is not None and np.isfinite(n) else "") + f", {data}, epoch {epoch}"
            + (f", {int(active)} of {int(pool)} pool examples active" if pool is not None and active is not None else ""))
    return desc, kind == "vgg12" and width == 1.0 and data == "cifar10-binary"


def _num(scalars: dict, key: str) -> float:
    v = scalars.get(key, np.nan)
    return float(v) if v is not None else float("nan")


def judge(scalars: dict, config: dict, model_name: str, epoch: int) -> list[Verdict]:
    """The two verdict rows from one checkpoint's scalars (`hessian_entries.*`)."""
    regime, paper_regime = regime_of(config, model_name, epoch, scalars)
    rows = []
    # the exact-z fraction, whose interval the pool resamples give (older stores: the replicate one)
    zkey = "z_fraction_exact" if "hessian_entries.z_fraction_exact" in scalars else "z_fraction"
    z = _num(scalars, f"hessian_entries.{zkey}")
    lo, hi = (_num(scalars, f"hessian_entries.z_fraction{s}") for s in ("_ci_low", "_ci_high"))
    cut = _num(scalars, "hessian_entries.z_cut")
    measure = nest_legacy_keys(config.get("measure", {}))[0]
    cut = cut if np.isfinite(cut) else float(measure.get("hessian_entries", {}).get("z_cut", 0.15))
    if not np.isfinite(z):
        face, why = "untested", "no entry varies over the pool (H = 0 here)"
    elif not np.isfinite(lo):
        face, why = "untested", "no interval (too few pool resamples with a varying entry)"
    elif lo >= PAPER["z_fraction"]:
        face, why = "reproduced", f"the whole interval is at or above {PAPER['z_fraction']}"
    elif hi < PAPER["z_fraction"]:
        face, why = "not reproduced", f"the whole interval is below {PAPER['z_fraction']}"
    else:
        face, why = "inconclusive", f"the interval contains {PAPER['z_fraction']}"
    if np.isfinite(z) and np.isfinite(lo) and not lo <= z <= hi:
        # the basic interval is centred on the bias-corrected value 2 z - (resample quantiles' centre)
        why += (f"; our value lies outside its interval because resampling the pool shifts the fraction "
                f"(the interval is bias-corrected; its centre is {(lo + hi) / 2:.3g})")
    rows.append(Verdict(f"fraction of entries with |z| < {cut:g}", ">= 0.95 (Fig 7b)", z, lo, hi, regime, face,
                        face if paper_regime or face == "untested" else "untested in this regime", why))
    rel, lo, hi = (_num(scalars, f"hessian_entries.corr.relative{s}") for s in ("", "_ci_low", "_ci_high"))
    if scalars.get("hessian_entries.corr.untestable"):
        face, why = "untested", "the pool has too few active examples for the correlation test"
    elif not np.isfinite(rel):
        face, why = "untested", "no correlation statistics at this checkpoint"
    elif lo <= PAPER["corr_relative"] <= hi:
        face, why = "reproduced", f"the interval contains {PAPER['corr_relative']:g}"
    else:
        side = "above" if lo > PAPER["corr_relative"] else "below"
        face, why = "not reproduced", f"the interval lies {side} {PAPER['corr_relative']:g}"
    rows.append(Verdict("relative correlation coupling size", "3.39e-4 (Fig 7c)", rel, lo, hi, regime, face,
                        face if paper_regime or face == "untested" else "untested in this regime", why))
    for r in rows:
        if r.verdict == "untested in this regime":
            r.why = f"{r.why}; not the paper's regime ({PAPER_REGIME})"
    return rows


def format_rows(rows: list[Verdict]) -> str:
    """Plain-text lines for the console."""
    out = []
    for r in rows:
        ours = "n/a" if not np.isfinite(r.ours) else f"{r.ours:.4g} [{r.ci_low:.4g}, {r.ci_high:.4g}]"
        out.append(f"{r.claim}: paper {r.paper}; ours {ours} ({r.regime}): {r.verdict.upper()}"
                   + (f" (at face value: {r.face_value}; {r.why})" if r.face_value != r.verdict else f" ({r.why})"))
    return "\n".join(out)
