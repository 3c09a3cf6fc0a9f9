"""Calibration of the non-zero tests: false discoveries and power against the number of active examples.

    python -m jobs.calibration [--out runs/calibration] [--reps 2] [--quick]

On the synthetic entries of `adaptsym.nulls` (n = 512 pool examples, A of them active through one
shared mask, optionally entry-specific zeros; normal, heavy-tailed and skewed values) it measures,
for correlations, co-skewness and co-kurtosis as the service tests them:
- `null_declared`: the fraction of tests declared non-zero when every hypothesis is null (<= q);
- `fdp`, `recall`: on planted groups of coupled entries among free ones, the realised false
  discovery proportion (<= 2q) and the fraction of the true couplings found: the power at this A.
It writes `calibration.json`, `calibration.md` (the table in `docs/statistics.md`) and
`calibration.png`, and prints the table. Fisher's z with n - 3 (the rule the service used before)
is measured on the same nulls for comparison.

Truth on planted data: groups share one factor (`nulls.planted`); a pair is coupled when both are
in one group. Co-skewness of a triple needs all three in one group (and a skewed law); excess
co-kurtosis is non-zero when the four split into within-group pairs, since a shared activity mask
with p = A/n active makes two independent correlated pairs co-kurtic: kappa4 = 1/(4p) - 1/4.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

N = 512
ACTIVE = (512, 256, 128, 64, 32, 13, 3)


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


def one_setting(law: str, masks: str, active: int, rep: int, q: float) -> dict:
    from adaptsym.bootstrap import multinomial_counts, replicates
    from adaptsym.comoments import comoment
    from adaptsym.correlation import coupling_counts, standardise
    from adaptsym.fdr import bh_reject, pvalue, two_sided_p
    from adaptsym.nonzero import detectability, product_t
    from adaptsym.nulls import drop_constant, null, planted

    rng = np.random.default_rng([active, rep, len(law), len(masks)])
    row: dict = {"law": law, "masks": masks, "active": active}
    h = drop_constant(null(N, 200, active, law, masks, rng))
    res = coupling_counts(standardise(h), q=q)
    row["corr.null_declared"] = res.n_nonzero / res.n_tests
    Z = standardise(h)
    r = (Z.T @ Z / N)[np.triu_indices(h.shape[1], 1)]
    row["corr.null_declared_fisher"] = float(bh_reject(two_sided_p(fisher_abs_z(r, N)), q).mean())
    row["corr.min_detectable_rho"] = detectability(active, res.n_tests, q).min_detectable_rho

    hp, label = drop_constant(*planted(N, 10, 5, active, law, masks, rng, k_null=150))
    Zp = standardise(hp)
    iu = np.triu_indices(hp.shape[1], 1)
    rej = bh_reject(pvalue(np.abs(product_t(Zp, Zp)[1][iu])), q)
    truth = label[iu[0]] == label[iu[1]]
    row["corr.fdp"] = float((rej & ~truth).sum() / max(rej.sum(), 1))
    row["corr.recall"] = float((rej & truth).sum() / max(truth.sum(), 1))

    hn = drop_constant(null(N, 120, active, law, masks, rng))
    hc, lc = drop_constant(*planted(N, 4, 12, active, "skewed" if law == "normal" else law, masks, rng, k_null=16))
    for order, name in ((3, "coskew"), (4, "cokurt")):
        X = replicates(hn, multinomial_counts(N, 32, 200, rng), 32)
        row[f"{name}.null_declared"] = float(comoment(X, hn, order, 64, rng, q=q).nonzero.mean())
        Xc = replicates(hc, multinomial_counts(N, 32, 200, rng), 32)
        res_c = comoment(Xc, hc, order, 200, rng, q=q)
        t = comoment_truth(lc, res_c.tuples)
        row[f"{name}.fdp"] = float((res_c.nonzero & ~t).sum() / max(res_c.nonzero.sum(), 1))
        row[f"{name}.recall"] = float((res_c.nonzero & t).sum() / max(t.sum(), 1))
    return row


def table(rows: list[dict]) -> str:
    keys = ["corr.null_declared", "corr.null_declared_fisher", "corr.fdp", "corr.recall", "corr.min_detectable_rho",
            "coskew.null_declared", "coskew.fdp", "coskew.recall", "cokurt.null_declared", "cokurt.fdp",
            "cokurt.recall"]
    head = "| law | masks | A | " + " | ".join(keys) + " |"
    lines = [head, "|" + " --- |" * (3 + len(keys))]
    for r in rows:
        cells = [f"{r[k]:.3g}" if np.isfinite(r[k]) else "-" for k in keys]
        lines.append(f"| {r['law']} | {r['masks']} | {r['active']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True, sharey=True)
    for ax, name in zip(axes, ("corr", "coskew", "cokurt")):
        for law in sorted({r["law"] for r in rows}):
            for masks, ls in (("shared", "-"), ("entry", "--")):
                pts = sorted((r["active"], r[f"{name}.recall"]) for r in rows if r["law"] == law and r["masks"] == masks)
                if pts:
                    ax.plot(*zip(*pts), "o" + ls, label=f"{law}, {masks} mask")
        ax.set_xscale("log")
        ax.set_xlabel("active pool examples A (of 512)")
        ax.set_title(f"{name}: power on planted couplings")
    axes[0].set_ylabel("recall (fraction of true couplings found)")
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs.calibration", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/calibration", help="output folder (default runs/calibration)")
    p.add_argument("--reps", type=int, default=2, help="independent data sets per setting, averaged (default 2)")
    p.add_argument("--q", type=float, default=0.05, help="false discovery rate level (default 0.05)")
    p.add_argument("--quick", action="store_true", help="normal and lognormal laws, shared masks, A in {512, 64, 3}")
    args = p.parse_args(argv)
    laws = ("normal", "lognormal") if args.quick else ("normal", "lognormal", "skewed")
    masks_all = ("shared",) if args.quick else ("shared", "entry")
    actives = (512, 64, 3) if args.quick else ACTIVE
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    grid = [(law, m, a) for law in laws for m in masks_all for a in actives]
    it = tqdm(grid, desc="calibration", disable=None) if tqdm else grid
    rows = []
    for law, m, a in it:
        reps = [one_setting(law, m, a, rep, args.q) for rep in range(args.reps)]
        row = {k: (float(np.mean([r[k] for r in reps])) if isinstance(reps[0][k], float) else reps[0][k])
               for k in reps[0]}
        rows.append(row)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps({"n": N, "q": args.q, "reps": args.reps, "rows": rows},
                                                     indent=1) + "\n")
    md = table(rows)
    (out / "calibration.md").write_text(md + "\n")
    figure(out / "calibration.png", rows)
    print(md)
    bad = [r for r in rows if r["corr.null_declared"] > args.q or r["corr.fdp"] > 2 * args.q
           or r["coskew.null_declared"] > args.q or r["cokurt.null_declared"] > args.q]
    print(f"\n{len(rows)} settings; written to {out}/calibration.{{json,md,png}}")
    if bad:
        print(f"CALIBRATION FAILED in {len(bad)} settings", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
