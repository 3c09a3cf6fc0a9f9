"""Calibration of the non-zero tests in both readings: false discoveries and power against the number of active examples.

    python -m jobs.calibration [--out runs/calibration] [--reps 2] [--quick]

On the synthetic entries of `adaptsym.stats.nulls` (n = 512 pool examples, A of them active through one
shared mask, optionally entry-specific zeros and per-example scale factors; values from seven
mean-zero laws, symmetric, heavy-tailed and skewed up to skewness 1.2e4) it runs the service's
decisions (`correlation.reading_decision`, `comoments.reading_comoment`: the studentised product
sum, BH, and the untestable rule) in each reading (marginal: over the pool; active: over the A
active examples) and measures, for correlations, co-skewness and co-kurtosis:
- `null_declared`: the fraction of tests the test declares non-zero when every hypothesis is null;
  `null_counted`: what the service counts after the untestable rule (must be <= q);
- `fdp`, `recall`: on planted groups of coupled entries among free ones, the realised false
  discovery proportion of what is counted (<= 2q on average) and the share of true couplings
  found: the power at this A;
- `mask_declared`: with independent one-signed values, every pair is correlated over the pool
  through the mask alone and uncorrelated over the active examples: the marginal reading should
  find them (power) and the active one must not (<= q).
Laws beyond what any test can tell from 512 examples (`nulls.LIMIT_LAWS`) run in a separate table
(`--limits`), outside the pass criterion, to show where the limit lies.

It writes `calibration.json`, `calibration.md` (the tables of `docs/calibration.md`) and
`calibration.png`, and prints the tables. Fisher's z with n - 3 (the rule before issue 11) is
measured on the same marginal nulls for comparison. Exit 1 when any setting fails its criterion.

Truth on planted data: groups share one factor (`nulls.planted`); a pair is coupled when both are
in one group. Co-skewness of a triple needs all three in one group (and a skewed law); excess
co-kurtosis is non-zero when the four split into within-group pairs, since a shared activity mask
with p = A/n active makes two independent correlated pairs co-kurtic over the pool.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

N = 512
ACTIVE = (512, 256, 128, 64, 32, 13, 3)
READINGS = ("marginal", "active")
KEYS = ("corr.null_counted", "corr.fdp", "corr.recall", "corr.min_detectable_rho", "mask_declared",
        "coskew.null_counted", "coskew.fdp", "coskew.recall", "cokurt.null_counted", "cokurt.fdp", "cokurt.recall")


def fisher_abs_z(r: np.ndarray, n: int) -> np.ndarray:
    """|atanh(r)| sqrt(n - 3): the rule used before issue 11 (valid only for n bivariate-normal samples)."""
    return np.abs(np.arctanh(np.clip(r, -1 + 1e-15, 1 - 1e-15))) * np.sqrt(n - 3)


def comoment_truth(label: np.ndarray, tuples: np.ndarray) -> np.ndarray:
    """Which sampled tuples have a non-zero co-moment under planted groups and a shared mask."""
    out = np.empty(len(tuples), dtype=bool)
    for i, t in enumerate(label[tuples]):
        if len(t) == 3:
            out[i] = t[0] == t[1] == t[2] and t[0] >= 0
        else:
            out[i] = all(c % 2 == 0 for c in Counter(t.tolist()).values())  # free entries have unique labels
    return out


def _keep_varying(h: np.ndarray, label: np.ndarray | None = None):
    keep = h.std(axis=0) > 0
    return (h[:, keep], label[keep]) if label is not None else h[:, keep]


def one_setting(law: str, masks: str, scales: str, active: int, rep: int, q: float) -> dict:
    """Both readings' measurements on one data set of each kind: {reading: {key: value}}."""
    from adaptsym.stats.bootstrap import multinomial_counts, replicates
    from adaptsym.stats.comoments import reading_comoments
    from adaptsym.stats.correlation import reading_decisions, standardise
    from adaptsym.stats.fdr import bh_reject, two_sided_p
    from adaptsym.stats.nonzero import product_t
    from adaptsym.stats.nulls import null, one_signed, planted

    rng = np.random.default_rng([active, rep, len(law), len(masks), len(scales), sum(map(ord, law))])
    rows = {r: {} for r in READINGS}
    h, mask = null(N, 200, active, law, masks, rng, scales, return_mask=True)
    h = _keep_varying(h)
    hp, label, mask_p = planted(N, 10, 5, active, law, masks, rng, k_null=150, scales=scales, return_mask=True)
    hp, label = _keep_varying(hp, label)
    iu = np.triu_indices(hp.shape[1], 1)
    truth = label[iu[0]] == label[iu[1]]
    null_dec = reading_decisions(h, mask, q=q, rng=rng)
    planted_dec = reading_decisions(hp, mask_p, q=q, rng=rng)
    Z = standardise(h)
    pool_T = np.abs(product_t(Z, Z)[1])[np.triu_indices(h.shape[1], 1)]
    for reading in READINGS:
        row, dec, dp = rows[reading], null_dec[reading], planted_dec[reading]
        row["corr.null_counted"] = dec.counted / max(dec.n_tests, 1)
        row["corr.untestable"] = float(dec.detectability.untestable)
        row["corr.min_detectable_rho"] = dec.detectability.min_detectable_rho
        row["corr.fdp"] = float((dp.declared & ~truth).sum() / max(dp.declared.sum(), 1))
        row["corr.recall"] = float((dp.declared & truth).sum() / max(truth.sum(), 1))
    # what the pool test alone would declare (the rule of issues 11 to 20), and Fisher's z (before issue 11)
    rows["marginal"]["corr.null_declared"] = float(bh_reject(two_sided_p(pool_T), q).mean())
    r = (Z.T @ Z / N)[np.triu_indices(h.shape[1], 1)]
    rows["marginal"]["corr.null_declared_fisher"] = float(bh_reject(two_sided_p(fisher_abs_z(r, N)), q).mean())
    if scales == "none" and active < N:  # the mask as the only coupling (none at full activity)
        hm, mask_m = one_signed(N, 120, active, masks, rng)
        hm = _keep_varying(hm)
        for reading, dec in reading_decisions(hm, mask_m, q=q, rng=rng).items():
            rows[reading]["mask_declared"] = dec.counted / max(dec.n_tests, 1)
    hn, mask_n = null(N, 120, active, law, masks, rng, scales, return_mask=True)
    hn = _keep_varying(hn)
    hc, lc, mask_c = planted(N, 4, 12, active, "skewed" if law in ("normal", "lognormal") else law, masks, rng,
                             k_null=16, scales=scales, return_mask=True)
    hc, lc = _keep_varying(hc, lc)
    Xn = replicates(hn, multinomial_counts(N, 32, 200, rng), 32)
    Xc = replicates(hc, multinomial_counts(N, 32, 200, rng), 32)
    for order, name in ((3, "coskew"), (4, "cokurt")):
        null_c = reading_comoments(Xn, hn, order, 64, rng, mask_n, q=q, s=32)
        planted_c = reading_comoments(Xc, hc, order, 200, rng, mask_c, q=q, s=32)
        t = comoment_truth(lc, planted_c["tuples"])
        for reading in READINGS:
            rows[reading][f"{name}.null_counted"] = float(null_c[reading][0].mean())
            found = planted_c[reading][0]
            rows[reading][f"{name}.fdp"] = float((found & ~t).sum() / max(found.sum(), 1))
            rows[reading][f"{name}.recall"] = float((found & t).sum() / max(t.sum(), 1))
    return rows


def average(reps: list[dict]) -> dict:
    """Mean over the data sets of each key, and its Monte Carlo standard error as `<key>_se`."""
    out = {}
    for key in sorted({k for r in reps for k in r}):
        vals = np.array([r[key] for r in reps if key in r], dtype=float)
        vals = vals[np.isfinite(vals)]
        out[key] = float(vals.mean()) if vals.size else float("nan")
        out[f"{key}_se"] = float(vals.std(ddof=1) / np.sqrt(vals.size)) if vals.size > 1 else 0.0
    return out


# laws on which the marginal reading's pool test (mask-borne couplings among mildly skewed entries)
# keeps FDR <= 2q on planted structure; on the more skewed ones a pool often lacks the rare values
# that carry an entry's mean, and that part of the marginal reading cannot be tested (docs/statistics.md)
MARGINAL_DOMAIN = ("normal", "lognormal", "skewed", "chi2")


def outside_domain(r: dict) -> bool:
    return r["reading"] == "marginal" and r["law"] not in MARGINAL_DOMAIN


def failures(rows: list[dict], q: float, domain: bool = True) -> list[str]:
    """Every setting that breaks a criterion by more than two Monte Carlo standard errors (over the
    data sets), one line each (limit laws excluded). With power near 0 the FDR of one data set is 0
    or 1, so a single false discovery among few data sets is within the error, not a failure.
    domain=False: instead, the marginal reading's planted-structure FDR outside `MARGINAL_DOMAIN`
    (the documented limit)."""
    bad = []

    def over(r, key, limit):
        return r[key] - 2 * r.get(f"{key}_se", 0.0) > limit

    for r in rows:
        if r.get("limit"):
            continue
        where = f"{r['law']}/{r['masks']}/{r['scales']}/A={r['active']}/{r['reading']}"
        for name in ("corr", "coskew", "cokurt"):
            if domain and over(r, f"{name}.null_counted", q):
                bad.append(f"{where}: {name} counts {r[f'{name}.null_counted']:.3g} of null tests (> q = {q})")
            if over(r, f"{name}.fdp", 2 * q) and outside_domain(r) != domain:
                bad.append(f"{where}: {name} FDR {r[f'{name}.fdp']:.3g} +- {r[f'{name}.fdp_se']:.2g} on planted "
                           f"structure (> 2q)")
        if domain and r["reading"] == "active" and np.isfinite(r.get("mask_declared", np.nan)) \
                and over(r, "mask_declared", q):
            bad.append(f"{where}: the active reading counts {r['mask_declared']:.3g} of mask-only couplings (> q)")
    return bad


def table(rows: list[dict], keys=KEYS) -> str:
    head = "| law | masks | scales | A | reading | " + " | ".join(keys) + " |"
    lines = [head, "|" + " --- |" * (5 + len(keys))]
    for r in rows:
        cells = [f"{r[k]:.3g}" if np.isfinite(r.get(k, np.nan)) else "-" for k in keys]
        lines.append(f"| {r['law']} | {r['masks']} | {r['scales']} | {r['active']} | {r['reading']} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(path: Path, rows: list[dict]) -> None:
    """False discoveries and power against A: one colour per law, solid marginal, dashed given
    activity (each point the mean over masks and scales)."""
    import matplotlib

    from adaptsym.util import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main_rows = [r for r in rows if not r.get("limit")]
    laws = sorted({r["law"] for r in main_rows})
    colours = dict(zip(laws, plt.cm.tab10(np.arange(len(laws)))))
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), constrained_layout=True, sharex=True)
    for col, name in enumerate(("corr", "coskew", "cokurt")):
        for row, key in enumerate((f"{name}.null_counted", f"{name}.recall")):
            ax = axes[row][col]
            for law in laws:
                for reading, ls in (("marginal", "-"), ("active", "--")):
                    pts = sorted({(r["active"], float(np.mean([x[key] for x in main_rows if x["law"] == law
                                                                and x["reading"] == reading and x["active"] == r["active"]])))
                                  for r in main_rows if r["law"] == law and r["reading"] == reading})
                    if pts:
                        ax.plot(*zip(*pts), "o" + ls, ms=3, color=colours[law])
            if row == 0:
                ax.axhline(0.05, color="k", lw=0.8, ls=":")
            ax.set_xscale("log")
            ax.set_title(f"{name}: {'share of null tests counted' if row == 0 else 'recall on planted couplings'}",
                         fontsize=10)
        axes[1][col].set_xlabel("active pool examples A (of 512)")
    axes[0][0].set_ylabel("share of null tests (q = 0.05 dotted)")
    axes[1][0].set_ylabel("recall (power)")
    handles = [plt.Line2D([], [], color=colours[law], marker="o", ms=3, label=law) for law in laws]
    handles += [plt.Line2D([], [], color="k", ls="-", label="marginal"),
                plt.Line2D([], [], color="k", ls="--", label="given activity")]
    fig.legend(handles=handles, loc="outside right center", fontsize=8, title="law / reading")
    save_figure(fig, path, "Calibration of the non-zero tests (mean over shared/entry masks and with/without "
                "per-example scales)")


def main(argv: list[str] | None = None) -> int:
    from adaptsym.stats.nulls import LAWS, LIMIT_LAWS, SCALES

    p = argparse.ArgumentParser(prog="jobs.calibration", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/calibration", help="output folder (default runs/calibration)")
    p.add_argument("--reps", type=int, default=2, help="independent data sets per setting, averaged (default 2)")
    p.add_argument("--q", type=float, default=0.05, help="false discovery rate level (default 0.05)")
    p.add_argument("--quick", action="store_true",
                   help="laws normal, lognormal, extreme; shared masks; A in {512, 64, 13}")
    p.add_argument("--no-limits", action="store_true", help="skip the table of limit laws")
    args = p.parse_args(argv)
    laws = ("normal", "lognormal", "extreme") if args.quick else LAWS
    masks_all = ("shared",) if args.quick else ("shared", "entry")
    actives = (512, 64, 13) if args.quick else ACTIVE
    grid = [(law, m, sc, a, False) for law in laws for m in masks_all for sc in SCALES for a in actives]
    if not args.no_limits:
        grid += [(law, "shared", sc, a, True) for law in LIMIT_LAWS for sc in SCALES for a in actives]
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    it = tqdm(grid, desc="calibration", disable=None) if tqdm else grid
    rows, t0 = [], time.perf_counter()
    for law, m, sc, a, limit in it:
        reps = [one_setting(law, m, sc, a, rep, args.q) for rep in range(args.reps)]
        for reading in READINGS:
            row = {"law": law, "masks": m, "scales": sc, "active": a, "reading": reading, "limit": limit}
            row.update(average([r[reading] for r in reps]))
            rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps({"n": N, "q": args.q, "reps": args.reps, "rows": rows,
                                                      "seconds": time.perf_counter() - t0}, indent=1) + "\n")
    main_rows = [r for r in rows if not r["limit"]]
    md = table(main_rows)
    md += ("\n\nThe rules before, on the same marginal nulls (share of null pairs declared): the pool test alone "
           "(issues 11 to 20) and Fisher's z with n - 3 (before issue 11):\n\n"
           + table([r for r in main_rows if r["reading"] == "marginal"],
                   ("corr.null_declared", "corr.null_declared_fisher")))
    limits = [r for r in rows if r["limit"]]
    if limits:
        md += "\n\nLimit laws (outside the pass criterion):\n\n" + table(limits)
    (out / "calibration.md").write_text(md + "\n")
    figure(out / "calibration.png", rows)
    print(md)
    bad = failures(rows, args.q)
    limits = failures(rows, args.q, domain=False)
    if limits:
        print(f"outside the marginal reading's documented domain ({len(limits)}):\n  " + "\n  ".join(limits))
    print(f"\n{len(grid)} settings x 2 readings in {time.perf_counter() - t0:.0f} s; written to "
          f"{out}/calibration.{{json,md,png}}")
    if bad:
        print(f"CALIBRATION FAILED in {len(bad)} places:\n  " + "\n  ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
