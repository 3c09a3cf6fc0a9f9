"""The GPU proof, as one short script that prints one JSON object (`make gpu-check`).

    python -m jobs.gpu_check [--budget-s 420] [--smoke]

On a machine with CUDA it runs, in under 8 minutes on one GPU:
1. the vgg12 benchmark ratios (`jobs.benchmark.bench_model`, full width, CIFAR-shaped random data);
2. a short vgg12 measurement of `configs/paper-cpu.yaml` on CUDA (2 checkpoints, every observable)
   through Ray with one actor per GPU, with the device of each actor's tensors read back from the
   actors;
3. `adaptsym plan`'s prediction for that measurement next to the measured wall time and peak RSS,
   and its prediction for `configs/paper-vgg12-cifar10.yaml` on 1 and 8 GPUs (an extrapolation
   from this GPU's throughputs; photo-patches stand in for CIFAR-10 when no copy is present).

Without CUDA it says so in the JSON and exits 0, unless `--smoke`: a CPU run of the same steps at
toy size (vgg12 at width 1/16, 16 pool examples), which is how CI tests this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def small_config(smoke: bool, device: str):
    from adaptsym.config import load_config

    cfg = load_config(ROOT / "configs/paper-cpu.yaml")
    upd = {"device": device}
    cfg = cfg.model_copy(update=upd)
    cfg.train = cfg.train.model_copy(update={"epochs": 1, "checkpoints": [0, 1]})
    if smoke:
        cfg.models = {"vgg12": cfg.models["vgg12"].model_copy(update={"width_multiplier": 1 / 16})}
        cfg.data = cfg.data.model_copy(update={"patches": cfg.data.patches.model_copy(update={"n_samples": 96})})
        cfg.measure = cfg.measure.model_copy(update={
            "pool_size": 16, "example_chunk": 8,
            "hessian_entries": cfg.measure.hessian_entries.model_copy(update={
                "minibatch": 8, "replicates": 50,
                "design": cfg.measure.hessian_entries.design.model_copy(update={"rows": 32, "cols": 2})}),
            "spectrum": cfg.measure.spectrum.model_copy(update={"steps": 4}),
            "circuits": cfg.measure.circuits.model_copy(update={"examples": 2, "paths": 16})})
    else:
        cfg.measure = cfg.measure.model_copy(update={"pool_size": 256, "example_chunk": 64})
    return cfg


def benchmark(smoke: bool, device: torch.device) -> dict:
    from adaptsym.config import ModelSpec
    from adaptsym.nets.models import BiasFreeNet
    from jobs.benchmark import bench_model

    width = 1 / 16 if smoke else 1.0
    n = 16 if smoke else 256
    model = BiasFreeNet(ModelSpec(kind="vgg12", width_multiplier=width), (3, 32, 32), seed=0).to(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, 3, 32, 32, generator=g).to(device)
    y = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(device)
    return bench_model(model, x, y, n_cols=4, n_rows=64 if smoke else 256, example_chunk=min(n, 128),
                       column_chunk=2, boot_cols=1, B=20 if smoke else 100, s=8 if smoke else 32, repeats=2)


def measurement(cfg, out: Path, n_actors: int | None) -> dict:
    from adaptsym.measure import measure_run
    from adaptsym.train import train
    from services.cluster import connect
    from services.executor import RayExecutor

    connect(None, num_cpus=2 if not torch.cuda.is_available() else None)
    t0 = time.perf_counter()
    res = train(cfg, "vgg12", out, progress=False)
    t_train = time.perf_counter() - t0
    ex = RayExecutor(n_actors=n_actors, threads_per_actor=1)
    try:
        t0 = time.perf_counter()
        m = measure_run(res.run_dir, cfg=cfg, progress=False, executor=ex, log=lambda *_: None)
        t_measure = time.perf_counter() - t0
        infos = ex.info()
    finally:
        ex.close()
    last = m.scalars[max(m.scalars)]
    return {"train_seconds": t_train, "measure_seconds": t_measure, "actors": infos,
            "actor_tensor_devices": sorted({d for i in infos for d in i.get("tensor_devices", [])}),
            "peak_rss_mb": {k: v for k, v in last.items() if k.startswith("peak_rss_mb.")},
            "checkpoints": sorted(m.scalars), "spectrum.lambda_max": last.get("spectrum.lambda_max"),
            "hessian_entries.marginal.z_fraction": last.get("hessian_entries.marginal.z_fraction")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="run the steps at toy size on CPU (what CI does)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    out = {"cuda": cuda, "torch": torch.__version__}
    if not cuda and not args.smoke:
        out["skipped"] = "torch sees no CUDA device here; nothing was measured (--smoke runs the steps on CPU)"
        print(json.dumps(out, indent=2))
        return 0
    from adaptsym.planning.cost import predict
    from jobs.plan_sampler import measure_throughput

    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpus"] = torch.cuda.device_count()
    t0 = time.perf_counter()
    out["benchmark_vgg12"] = benchmark(args.smoke, device)
    cfg = small_config(args.smoke, "cuda" if cuda else "cpu")
    n_actors = torch.cuda.device_count() if cuda else 1
    tp = measure_throughput(cfg, "vgg12", device, threads=1)
    plan = predict(cfg, tp, "cuda" if cuda else "cpu", n_actors, n_actors)
    with tempfile.TemporaryDirectory() as tmp:
        got = measurement(cfg, Path(tmp), n_actors)
    out["measurement"] = got
    predicted_measure = plan.total_seconds - plan.seconds["train"] - plan.seconds["startup"]
    out["plan"] = {"predicted_train_seconds": plan.seconds["train"], "measured_train_seconds": got["train_seconds"],
                   "predicted_measure_seconds": predicted_measure, "measured_measure_seconds": got["measure_seconds"],
                   "predicted_peak_rss_mb": plan.peak_rss_mb, "measured_peak_rss_mb": got["peak_rss_mb"]}
    if cuda:  # the paper's workload, extrapolated from this GPU's throughputs
        from adaptsym.config import load_config

        pcfg = load_config(ROOT / "configs/paper-vgg12-cifar10.yaml")
        ptp = measure_throughput(pcfg, "vgg12", device, threads=1, driver_modules=("mlflow", "ray"))
        out["paper_vgg12_cifar10_prediction"] = {
            f"cuda:{g}": {"total_hours": p.total_seconds / 3600, "seconds": p.seconds, "peak_rss_mb": p.peak_rss_mb,
                          "notes": p.notes}
            for g, p in ((g, predict(pcfg, ptp, "cuda", g, g)) for g in (1, 8))}
    want = "cuda" if cuda else "cpu"
    out["ok"] = bool(got["actor_tensor_devices"]) and all(d.startswith(want) for d in got["actor_tensor_devices"])
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps(out, indent=2, default=float))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
