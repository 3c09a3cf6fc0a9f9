"""Regime study: where do the paper's two headline numbers appear? One job, one table.

    python -m jobs.regime_study --config configs/regime-cpu.yaml [--out runs] [--budget-min 45] [--force]

The config names *systems* (a data set and a network, each trained once with the shared `train`
section, any of whose keys a system may replace, e.g. fewer epochs for a large network) and *variants* of the measurement (changes to the shared `measure` section: pool
composition, pool size n, the non-zero rule). Every variant measures the Hessian-entry statistics
at every checkpoint of every system, so each factor is varied one at a time against the `default`
variant. For each (system, variant, epoch) the table holds the fraction of entries with |z| <
0.15 under both normalisations (minibatch and per example) and the relative correlation coupling
size, each with its 95% interval, the active pool examples, and the verdict against the paper
(`adaptsym.report.verdict`). Written to `<out>/<name>-regime/regime.zarr`, two figures, an MLflow run
with one nested run per system, and printed as JSON.

Before anything runs, `adaptsym plan` (`adaptsym.planning.cost`) predicts the study's time from throughputs measured here;
a study predicted to exceed `--budget-min` is refused with the prediction unless `--force`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

# per reading (marginal: over the pool; active: over its examples with margin < 1), then shared
READING_COLUMNS = ("z_fraction_exact", "z_fraction_exact_ci_low", "z_fraction_exact_ci_high", "z_forced_fraction",
                   "z_fraction_per_example", "z_fraction_per_example_ci_low", "z_fraction_per_example_ci_high",
                   "z_forced_fraction_per_example", "corr.relative", "corr.relative_ci_low", "corr.relative_ci_high",
                   "corr.untestable", "corr.min_detectable_rho")
COLUMNS = tuple(f"{r}.{c}" for r in ("marginal", "active") for c in READING_COLUMNS) + (
    "n_active_examples", "pool_size", "n_valid")
# verdict columns, by `verdict.key` of the row (a checkpoint whose statistics were skipped has none)
VERDICTS = tuple(f"verdict_{k}" for k in ("z", "z_active", "z_per_example", "z_per_example_active", "corr", "corr_active"))


class System(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any] = Field(default_factory=dict)  # keys that replace the shared train section's


class RegimeConfig(BaseModel):
    """The study: shared train and measure sections, the systems, the measurement variants."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    device: str = "auto"
    train: dict[str, Any]
    measure: dict[str, Any]
    systems: dict[str, System]
    variants: dict[str, dict[str, Any]] = Field(default_factory=lambda: {"default": {}})

    def run_config(self, system: str, variant: str):
        """The RunConfig of one (system, variant): validated like any config."""
        from adaptsym.config import ConfigError, merge_sections, nest_legacy_keys, parse_config

        sysm = self.systems[system]
        try:
            base, variant_measure = (nest_legacy_keys(m)[0] for m in (self.measure, self.variants[variant]))
        except ValueError as exc:
            raise ConfigError(f"regime study {self.name}: variant {variant}: {exc}") from None
        measure = {**merge_sections(base, variant_measure), "observables": ["hessian_entries"]}
        return parse_config({"name": f"{self.name}-{system}", "seed": self.seed, "device": self.device,
                             "data": sysm.data, "models": {"net": sysm.model}, "train": {**self.train, **sysm.train},
                             "measure": measure}, source=f"regime study {self.name}: {system} / {variant}")


def load(path: str | Path) -> RegimeConfig:
    from adaptsym.config import ConfigError

    try:
        cfg = RegimeConfig.model_validate(yaml.safe_load(Path(path).read_text()))
    except Exception as exc:  # pydantic or yaml: one message naming the file
        raise ConfigError(f"regime study config {path}: {exc}") from None
    if "default" not in cfg.variants:
        raise ConfigError(f"regime study config {path}: variants need a 'default' (the reference, e.g. default: {{}})")
    for s in cfg.systems:
        for v in cfg.variants:
            cfg.run_config(s, v)  # every combination validates before anything runs
    return cfg


def predict_minutes(cfg: RegimeConfig, device) -> tuple[float, dict]:
    """Predicted minutes of the whole study (train once per system, measure once per variant)."""
    from adaptsym.planning.cost import predict
    from jobs.plan_sampler import measure_throughput

    per = {}
    for s in cfg.systems:
        rc = cfg.run_config(s, "default")
        tp = measure_throughput(rc, "net", device, threads=max(1, __import__("torch").get_num_threads()))
        total = 0.0
        for v in cfg.variants:
            p = predict(cfg.run_config(s, v), tp, "cpu", 1, None)
            total += sum(val for k, val in p.seconds.items() if k.startswith("measure.")) + p.seconds["startup"] / 4
            if v == "default":
                total += p.seconds["train"]
        per[s] = total / 60
    return float(sum(per.values())), per




def figure(path: Path, rows: list[dict], systems: list[str]) -> None:
    import matplotlib

    from adaptsym.util import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adaptsym.report.verdict import PAPER

    fig, axes = plt.subplots(2, 3, figsize=(16, 8), constrained_layout=True)
    for row, reading in enumerate(("marginal", "active")):
        for s in systems:
            pts = [r for r in rows if r["system"] == s and r["variant"] == "default"]
            ep = [r["epoch"] for r in pts]
            for ax, key in ((axes[row][0], f"{reading}.z_fraction_exact"), (axes[row][1], f"{reading}.z_fraction_per_example")):
                y = np.array([r[key] for r in pts])
                line = ax.plot(ep, y, "o-", ms=3, label=s)[0]
                ax.fill_between(ep, [r[f"{key}_ci_low"] for r in pts], [r[f"{key}_ci_high"] for r in pts],
                                alpha=0.2, color=line.get_color())
                forced = key.replace("z_fraction_exact", "z_forced_fraction").replace("z_fraction_per", "z_forced_fraction_per")
                ax.plot(ep, [r[forced] for r in pts], "x:", ms=4, lw=0.8, color=line.get_color())
            rel = np.array([r[f"{reading}.corr.relative"] for r in pts])
            ok = np.isfinite(rel) & (rel > 0)
            if ok.any():
                axes[row][2].errorbar(np.array(ep)[ok], rel[ok], fmt="o-", ms=3, label=s,
                                      yerr=[rel[ok] - np.array([r[f"{reading}.corr.relative_ci_low"] for r in pts])[ok],
                                            np.array([r[f"{reading}.corr.relative_ci_high"] for r in pts])[ok] - rel[ok]])
        label = "marginal" if reading == "marginal" else "given activity"
        for ax, title in ((axes[row][0], f"{label}: |z| < 0.15, z at the minibatch size"),
                          (axes[row][1], f"{label}: |z| < 0.15, z per example")):
            ax.axhline(PAPER["z_fraction"], color="k", ls=":", lw=0.8)
            ax.set_ylim(0, 1.02)
            ax.set_title(title + " (x: forced by sparsity)", fontsize=9)
            ax.set_xlabel("epoch")
            ax.set_ylabel("fraction of entries")
        axes[row][2].axhline(PAPER["corr_relative"], color="k", ls=":", lw=0.8, label="paper 3.39e-4")
        axes[row][2].set_yscale("log")
        axes[row][2].set_xlabel("epoch")
        axes[row][2].set_ylabel("relative coupling size")
        axes[row][2].set_title(f"{label}: relative correlation coupling size (testable points)", fontsize=9)
    axes[0][0].legend(fontsize=6)
    axes[0][2].legend(fontsize=6)
    fig.suptitle("Regime study, default measurement: bands and bars are 95% intervals; dotted: the paper")
    save_figure(fig, path)


def variant_figure(path: Path, rows: list[dict], systems: list[str], variants: list[str]) -> None:
    """Each variant's change against `default`, per system, at every epoch both measured."""
    import matplotlib

    from adaptsym.util import save_figure

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4), constrained_layout=True)
    ref = {(r["system"], r["epoch"]): r for r in rows if r["variant"] == "default"}
    others = [v for v in variants if v != "default"]
    for i, v in enumerate(others):
        for ax, key, log in ((axes[0], "marginal.z_fraction_exact", False), (axes[1], "marginal.corr.relative", True)):
            xs, ys = [], []
            for j, s in enumerate(systems):
                for r in rows:
                    base = ref.get((s, r["epoch"]))
                    if r["system"] == s and r["variant"] == v and base is not None:
                        a, b = r[key], base[key]
                        if np.isfinite(a) and np.isfinite(b) and (not log or (a > 0 and b > 0)):
                            xs.append(j + 0.8 * (i + 0.5) / len(others) - 0.4)
                            ys.append(np.log10(a / b) if log else a - b)
            ax.plot(xs, ys, "o", label=v, alpha=0.7)
    for ax, lab in ((axes[0], "change of the |z| < 0.15 fraction vs default"),
                    (axes[1], "log10 ratio of the relative coupling size vs default")):
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(systems)), systems, rotation=20, fontsize=7)
        ax.set_ylabel(lab, fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle("Regime study: what the measurement choices move (every epoch a point)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs.regime_study", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--out", default="runs")
    p.add_argument("--budget-min", type=float, default=45.0, help="refuse a study predicted to take longer")
    p.add_argument("--force", action="store_true", help="run even when predicted over the budget")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    from adaptsym.config import ConfigError, config_to_dict
    from adaptsym.measure import measure_run
    from adaptsym.storage.provenance import provenance, resolve_device
    from adaptsym.storage.store import RunStore
    from adaptsym.storage.tracking import Tracker
    from adaptsym.train import train
    from adaptsym.report.verdict import judge
    from adaptsym.report.verdict import key as verdict_key

    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"jobs.regime_study: error: {exc}", file=sys.stderr)
        return 2
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    minutes, per_system = predict_minutes(cfg, device)
    print(f"predicted {minutes:.1f} min (" + ", ".join(f"{k} {v:.1f}" for k, v in per_system.items())
          + f"; throughputs measured in {time.perf_counter() - t0:.0f} s)", flush=True)
    if minutes > args.budget_min and not args.force:
        print(f"jobs.regime_study: error: predicted {minutes:.1f} min exceeds --budget-min {args.budget_min:g}; "
              "drop systems, variants or checkpoints, or pass --force", file=sys.stderr)
        return 2
    out_dir = Path(args.out) / f"{cfg.name}-regime"
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = None if args.no_mlflow else Tracker(args.out, cfg.name)
    rows: list[dict] = []
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if tracker:
            stack.enter_context(tracker.run(f"regime-{cfg.name}", tags={"kind": "regime_study"}))
        for s in cfg.systems:
            base = cfg.run_config(s, "default")
            res = train(base, "net", out_dir / "runs", progress=not args.quiet)
            n_params = RunStore.for_run(res.run_dir, mode="r").attrs()["n_params"]
            for v in cfg.variants:
                run = out_dir / "runs" / f"{s}__{v}"
                if not (run / "results.zarr").exists():  # a copy of the trained run, measured its own way
                    shutil.copytree(res.run_dir, run, ignore=shutil.ignore_patterns("*.lock"), dirs_exist_ok=True)
                rc = cfg.run_config(s, v)
                m = measure_run(run, cfg=rc, progress=not args.quiet, log=lambda *_: None)
                for epoch in sorted(m.scalars):
                    sc = m.scalars[epoch]
                    row = {"system": s, "variant": v, "epoch": int(epoch), "n_params": int(n_params)}
                    row.update({c: float(sc.get(f"hessian_entries.{c}", np.nan)) for c in COLUMNS})
                    verdicts = {f"verdict_{verdict_key(v)}": v.face_value
                                for v in judge(sc, config_to_dict(rc), "net", epoch)}
                    row.update({name: verdicts.get(name, "untested") for name in VERDICTS})
                    rows.append(row)
                if tracker:
                    with tracker.run(f"{s}/{v}", nested=True, params={"system": s, "variant": v}):
                        for r in rows:
                            if r["system"] == s and r["variant"] == v:
                                tracker.log_metrics({c: r[c] for c in COLUMNS}, step=r["epoch"])
            print(f"[{s}] done at {(time.perf_counter() - started) / 60:.1f} min", flush=True)
        systems, variants = list(cfg.systems), list(cfg.variants)
        store = RunStore(out_dir / "regime.zarr", mode="w")
        for key in ("epoch", "n_params", *COLUMNS):  # missing (untestable, skipped) as -1, as in the sweep
            store.write("table", key, np.nan_to_num(np.array([r[key] for r in rows], dtype=np.float64), nan=-1.0),
                        ["row"])
        store.set_attrs({"missing_value": -1.0, "systems": [r["system"] for r in rows], "variants": [r["variant"] for r in rows],
                         **{name: [r[name] for r in rows] for name in VERDICTS},
                         "config": cfg.model_dump(mode="json"), **provenance()}, group="table")
        figure(out_dir / "regime_default.png", rows, systems)
        variant_figure(out_dir / "regime_variants.png", rows, systems, variants)
        if tracker:
            tracker.log_artifact(out_dir / "regime_default.png")
            tracker.log_artifact(out_dir / "regime_variants.png")
    took = (time.perf_counter() - started) / 60
    print(json.dumps({"predicted_minutes": minutes, "minutes": took, "zarr": str(out_dir / "regime.zarr"),
                      "rows": rows}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
