"""The Hessian-entry results of measured runs as markdown tables, both readings side by side.

    python -m jobs.results_table runs/demo-mlp runs/demo-cnn [--verdicts]

Per run and checkpoint, from the zarr store alone:
1. concentration: the |z| < cut fraction with its 95% interval, at the minibatch size and per
   example, marginal (over the pool) and given activity (over the examples with margin <= 1), each
   with the share of entries the sparsity bound sqrt(p / (1 - p)) forces below the cut (in braces);
2. couplings: the relative correlation, co-skewness and co-kurtosis coupling sizes in both
   readings ("untestable" where too few examples are active), the smallest detectable |rho|;
3. with --verdicts: the verdict per claim and reading (`adaptsym.report.verdict`);
4. with --training: per epoch, the fraction of training examples with margin < 1 and the training
   and held-out accuracies (the run's training history).
This is what `docs/results.md` quotes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def _fmt(v: float, digits: int = 2) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    return f"{v:.{digits}g}" if abs(v) < 0.01 and v != 0 else f"{v:.{digits}f}"


def _interval(sc: dict, key: str) -> str:
    v, lo, hi = (sc.get(f"hessian_entries.{key}{s}", np.nan) for s in ("", "_ci_low", "_ci_high"))
    return "-" if not np.isfinite(v) else f"{_fmt(v)} [{_fmt(lo)}, {_fmt(hi)}]"


def _size(sc: dict, reading: str, stat: str) -> str:
    p = f"hessian_entries.{reading}.{stat}"
    if sc.get(f"{p}.untestable"):
        return "untestable"
    rel, lo, hi = sc.get(f"{p}.relative", np.nan), sc.get(f"{p}.relative_ci_low", np.nan), sc.get(f"{p}.relative_ci_high", np.nan)
    if not np.isfinite(rel):
        return "-"
    if rel == 0:
        return "0 (ub)"
    return f"{rel:.2g} [{lo:.2g}, {hi:.2g}]"


def rows(run_dir: Path) -> list[tuple[int, dict]]:
    from adaptsym.storage.store import RunStore

    store = RunStore.for_run(run_dir, mode="r")
    out = []
    for g in store.checkpoint_groups():
        if store.is_complete(g):
            out.append((int(g.split("_")[1]), store.attrs(g).get("scalars", {})))
    return out


def training_table(runs: list[Path]) -> str:
    """Per run and epoch: active fraction of the training set, training and held-out accuracy."""
    from adaptsym.storage.store import RunStore

    out = ["| run | epoch | active (margin < 1), training set | training accuracy | held-out accuracy |",
           "| --- | --- | --- | --- | --- |"]
    for run in runs:
        store = RunStore.for_run(run, mode="r")
        epochs = store.read("training", "epoch")
        have = set(store.root["training"].array_keys())
        active = store.read("training", "train_active") if "train_active" in have else np.full(len(epochs), np.nan)
        tr, te = store.read("training", "train_acc"), store.read("training", "test_acc")
        for i, e in enumerate(epochs):
            out.append(f"| {run.name} | {int(e)} | {_fmt(active[i])} | {_fmt(tr[i])} | {_fmt(te[i])} |")
    return "\n".join(out)


def tables(runs: list[Path], verdicts: bool = False) -> str:
    conc = ["| run | epoch | active | marginal, at s {forced} | marginal, per example {forced} | "
            "given activity, at s {forced} | given activity, per example {forced} |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    coup = ["| run | epoch | active | corr marginal | corr given activity | min detectable abs(rho), given activity | "
            "co-skew marginal / given activity | co-kurt marginal / given activity |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    verd = ["| run | epoch | claim | reading | ours | verdict |", "| --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        from adaptsym.storage.store import RunStore
        from adaptsym.report.verdict import judge

        attrs = RunStore.for_run(run, mode="r").attrs()
        for epoch, sc in rows(run):
            A, n = sc.get("hessian_entries.n_active_examples"), sc.get("hessian_entries.pool_size")
            act = f"{int(A)} / {int(n)}" if A is not None and n is not None else "-"
            if "hessian_entries.marginal.n_rows" not in sc or not np.isfinite(
                    sc.get("hessian_entries.marginal.z_fraction_exact", np.nan)):
                conc.append(f"| {run.name} | {epoch} | {act} | skipped: H = 0 | | | |")
                coup.append(f"| {run.name} | {epoch} | {act} | | | | | |")
                continue
            cells = []
            for reading in ("marginal", "active"):
                for key, forced in (("z_fraction_exact", "z_forced_fraction"),
                                    ("z_fraction_per_example", "z_forced_fraction_per_example")):
                    f = sc.get(f"hessian_entries.{reading}.{forced}", np.nan)
                    cells.append(f"{_interval(sc, f'{reading}.{key}')} {{{_fmt(f)}}}")
            conc.append(f"| {run.name} | {epoch} | {act} | " + " | ".join(cells) + " |")
            rho = sc.get("hessian_entries.active.corr.min_detectable_rho", np.nan)
            coup.append(f"| {run.name} | {epoch} | {act} | {_size(sc, 'marginal', 'corr')} | {_size(sc, 'active', 'corr')} | "
                        f"{_fmt(rho) if np.isfinite(rho) else 'none <= 1'} | "
                        f"{_size(sc, 'marginal', 'coskew')} / {_size(sc, 'active', 'coskew')} | "
                        f"{_size(sc, 'marginal', 'cokurt')} / {_size(sc, 'active', 'cokurt')} |")
            if verdicts:
                for v in judge(sc, attrs.get("config", {}), attrs.get("model_name", ""), epoch):
                    ours = "-" if not np.isfinite(v.ours) else f"{_fmt(v.ours, 3)} [{_fmt(v.ci_low, 3)}, {_fmt(v.ci_high, 3)}]"
                    reading = "marginal" if v.reading == "marginal" else "given activity"
                    verd.append(f"| {run.name} | {epoch} | {v.claim.replace('|z|', 'abs(z)')} | {reading} | {ours} | {v.verdict}"
                                + (f" ({v.face_value})" if v.face_value != v.verdict else "") + " |")
    out = "\n".join(conc) + "\n\n" + "\n".join(coup)
    return out + ("\n\n" + "\n".join(verd) if verdicts else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs.results_table", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories (each with a results.zarr)")
    p.add_argument("--verdicts", action="store_true", help="also the verdict per claim and reading")
    p.add_argument("--training", action="store_true", help="also the active fraction and accuracies per epoch")
    args = p.parse_args(argv)
    print(tables([Path(r) for r in args.runs], args.verdicts))
    if args.training:
        print("\n" + training_table([Path(r) for r in args.runs]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
