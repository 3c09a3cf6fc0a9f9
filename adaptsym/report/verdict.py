"""A verdict on the paper's two headline numbers for one measured checkpoint, in both readings.

Li's observations (Fig 7b, 7c) that a user comes to check:
- *concentration*: at least 95% of Hessian entries have |z| < 0.15, z = mean / std of the
  minibatch entry H_a(S) (rising to about 98% during training);
- *sparsity*: each entry correlates with 3.39e-4 of the others (the relative correlation
  coupling set size).

Each is judged in both readings of `docs/statistics.md`: *marginal*, over the measurement pool
(the paper's definition: its bootstrap of minibatch means draws from every example), and *given
activity*, over the pool examples where the hinge loss is active. Concentration is judged at the
minibatch size s (the SPEC's z) and per example (z / sqrt(s), the other reading of Fig 7a).

For each row: the paper's value, ours with its 95% interval (pool resamples for the fraction,
entry resamples for the coupling size; `hessian_entries`), the regime we measured in, and a verdict:
- *reproduced* / *not reproduced*: in the paper's regime (vgg12 at full width on binarised
  CIFAR-10), the interval lies on the paper's side of 0.95 (concentration), or contains 3.39e-4
  (sparsity) / does not;
- *inconclusive*: in that regime, but the interval straddles 0.95;
- *forced by sparsity*: an entry non-zero on a fraction p of the rows has |mean / sd| <=
  sqrt(p / (1 - p)) whatever its values, so when that bound alone puts at least 95% of the
  entries below the cut, or the claim holds only thanks to the entries it forces, the fraction
  says which examples are active, not how entries are distributed;
- *other regime*: another network or data set than the paper's; the comparison at face value is
  still given, with its reasons;
- *untested*: a statistic that the pool cannot test (too few active examples).
"""

from __future__ import annotations

import textwrap
from dataclasses import asdict, dataclass

import numpy as np

from ..config import nest_legacy_keys
from ..observables.hessian_entries import PAPER
from ..observables.plotting import legacy_key

PAPER_REGIME = "vgg12 at full width (N = 9,664,704) on binarised CIFAR-10"
READING_LABEL = {"marginal": "marginal", "active": "given activity"}
FORCED = "forced by sparsity"


@dataclass
class Verdict:
    claim: str
    reading: str  # "marginal" (over the pool) or "active" (over the pool's active examples)
    paper: str
    ours: float
    ci_low: float
    ci_high: float
    regime: str
    face_value: str  # what the interval says against the paper's number, whatever the regime
    verdict: str
    why: str = ""
    forced: float = float("nan")  # concentration: share of entries forced below the cut by sqrt(p / (1 - p))
    paper_definition: bool = False  # the reading and normalisation the paper's number is defined in

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


def scalar(scalars: dict, reading: str, key: str) -> float:
    """`hessian_entries.<reading>.<key>`, or for the marginal reading its older name (`legacy_key`)."""
    v = scalars.get(f"hessian_entries.{reading}.{key}")
    old = legacy_key(f"{reading}.{key}")
    if v is None and old is not None:
        v = scalars.get(f"hessian_entries.{old}")
    return float(v) if v is not None else float("nan")


def _concentration(scalars: dict, reading: str, per_example: bool, cut: float) -> tuple:
    """(value, low, high, forced, unforced fraction, face, why) of one concentration row."""
    key = "z_fraction_per_example" if per_example else "z_fraction_exact"
    z = scalar(scalars, reading, key)
    if not np.isfinite(z) and reading == "marginal" and not per_example:  # stores before the exact fraction
        key = "z_fraction"
        z = scalar(scalars, reading, key)
    lo, hi = scalar(scalars, reading, f"{key}_ci_low"), scalar(scalars, reading, f"{key}_ci_high")
    suffix = "_per_example" if per_example else ""
    forced = scalar(scalars, reading, f"z_forced_fraction{suffix}")
    free = scalar(scalars, reading, f"z_fraction_unforced{suffix}")
    level = PAPER["z_fraction"]
    if not np.isfinite(z):
        return z, lo, hi, forced, free, "untested", "no entry varies over these examples (H = 0 here)"
    if not np.isfinite(lo):
        face, why = "untested", "no interval (too few resamples with a varying entry)"
    elif lo >= level:
        face, why = "reproduced", f"the whole interval is at or above {level}"
    elif hi < level:
        face, why = "not reproduced", f"the whole interval is below {level}"
    else:
        face, why = "inconclusive", f"the interval contains {level}"
    if lo <= hi and np.isfinite(lo) and not lo <= z <= hi:
        why += (f"; the value lies outside its interval: resampling the examples shifts the fraction, and the "
                f"interval is bias-corrected (its centre is {(lo + hi) / 2:.3g})")
    if np.isfinite(forced):
        why += f"; the sparsity bound forces {forced:.0%} of the entries below {cut:g}"
        if np.isfinite(free):
            why += f", and {free:.3g} of the others are below it"
        if forced >= level:
            face = FORCED
            why += f": the bound alone puts at least {level:.0%} of the entries below the cut, whatever their values"
        elif face in ("reproduced", "inconclusive") and z >= level and np.isfinite(free) and free < level:
            face = FORCED
            why += f": the fraction reaches {level} only with the entries the bound forces"
    return z, lo, hi, forced, free, face, why


def _sparsity(scalars: dict, reading: str) -> tuple:
    rel, lo, hi = (scalar(scalars, reading, f"corr.relative{s}") for s in ("", "_ci_low", "_ci_high"))
    untestable = scalar(scalars, reading, "corr.untestable")
    if untestable == 1.0:
        return rel, lo, hi, "untested", "the pool has too few active examples for the correlation test"
    if not np.isfinite(rel):
        return rel, lo, hi, "untested", "no correlation statistics at this checkpoint"
    if lo <= PAPER["corr_relative"] <= hi:
        return rel, lo, hi, "reproduced", f"the interval contains {PAPER['corr_relative']:g}"
    side = "above" if lo > PAPER["corr_relative"] else "below"
    return rel, lo, hi, "not reproduced", f"the interval lies {side} {PAPER['corr_relative']:g}"


def judge(scalars: dict, config: dict, model_name: str, epoch: int) -> list[Verdict]:
    """The verdict rows from one checkpoint's scalars (`hessian_entries.*`): concentration at the
    minibatch size and per example, then sparsity, each in the marginal reading and given activity.
    The marginal reading at the minibatch size is the paper's definition of both numbers."""
    regime, paper_regime = regime_of(config, model_name, epoch, scalars)
    cut = scalars.get("hessian_entries.z_cut")
    measure = nest_legacy_keys(config.get("measure", {}))[0]
    cut = float(cut) if cut is not None and np.isfinite(cut) else float(
        measure.get("hessian_entries", {}).get("z_cut", 0.15))
    s = scalars.get("hessian_entries.minibatch")
    s_txt = f"s = {int(s)}" if s is not None and np.isfinite(s) else "the minibatch size"
    readings = [r for r in ("marginal", "active")
                if r == "marginal" or f"hessian_entries.{r}.n_rows" in scalars]  # older stores: marginal only
    rows = []
    for per_example in (False, True):
        for reading in readings:
            z, lo, hi, forced, _, face, why = _concentration(scalars, reading, per_example, cut)
            norm = "per example" if per_example else f"at {s_txt}"
            rows.append(Verdict(f"fraction of entries with |z| < {cut:g}, {norm}", reading,
                                ">= 0.95 (Fig 7b)", z, lo, hi, regime, face, face, why, forced,
                                reading == "marginal" and not per_example))
    for reading in readings:
        rel, lo, hi, face, why = _sparsity(scalars, reading)
        rows.append(Verdict("relative correlation coupling size", reading, "3.39e-4 (Fig 7c)", rel, lo, hi, regime,
                            face, face, why, paper_definition=reading == "marginal"))
    for r in rows:
        if r.face_value not in ("untested", FORCED) and not paper_regime:
            r.verdict = "other regime"
            r.why = f"{r.why}; not the paper's regime ({PAPER_REGIME})"
    return rows


def key(v: Verdict) -> str:
    """A short name of a row's claim and reading: z, z_per_example or corr, with `_active` given activity."""
    kind = "corr" if "coupling" in v.claim else ("z_per_example" if "per example" in v.claim else "z")
    return kind + ("_active" if v.reading == "active" else "")


def format_rows(rows: list[Verdict], width: int = 100) -> str:
    """Short plain-text lines for the console: per row, the claim and our value, then the verdict and
    its reasons, wrapped."""
    out = []
    for r in rows:
        ours = "n/a" if not np.isfinite(r.ours) else f"{r.ours:.4g} [{r.ci_low:.4g}, {r.ci_high:.4g}]"
        label = READING_LABEL.get(r.reading, r.reading) + (", the paper's definition" if r.paper_definition else "")
        out += textwrap.wrap(f"{r.claim} ({label}): paper {r.paper}; ours {ours}", width=width,
                             subsequent_indent="     ")
        verdict = r.verdict.upper() + (f" (at face value: {r.face_value})" if r.face_value != r.verdict else "")
        out += textwrap.wrap(f"-> {verdict}: {r.why}", width=width, initial_indent="  ", subsequent_indent="     ")
    return "\n".join(out)
