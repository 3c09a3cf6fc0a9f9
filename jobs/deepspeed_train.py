"""DeepSpeed ZeRO training through Ray Train (`python -m jobs.train --deepspeed ...`).

    python -m jobs.train --deepspeed --config C [--out runs] [--model M] [--workers 2] [--zero-stage 1]
                         [--ray ADDRESS]

Each Ray Train worker holds a replica of the bias-free network wrapped by `deepspeed.initialize`
(ZeRO stage 1 or 2: optimizer state, and for 2 gradients, partitioned over the workers) and
trains on its shard of every epoch's seeded permutation; the global batch is the config's
batch size. On CPU DeepSpeed runs with DS_ACCELERATOR=cpu over gloo. Rank 0 writes the same
self-describing checkpoints as plain training (`adaptsym.train.checkpoint_payload`, optimizer
state left out since ZeRO partitions it), the zarr training history and the MLflow run, so
`adaptsym measure` reads the run unchanged.

Resume: after every epoch all ranks save the engine's own checkpoint (`engine.save_checkpoint`:
module and ZeRO-partitioned optimizer state, with the epoch, history and MLflow run id as client
state) under `<run>/deepspeed/`. A killed run started again with the same command loads the
latest one on every rank and continues with the next epoch; the data order is seeded per epoch,
so it follows the uninterrupted run (tested: bit-identical weights on CPU/gloo).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def _loop(config: dict) -> None:
    import torch

    cpu = not torch.cuda.is_available()
    if cpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    if cpu:
        # DeepSpeed's CPU backend JIT-builds a shared-memory all-reduce kernel (deepspeed_shm_comm) in
        # init_distributed. ZeRO training does not use it (gradients go through gloo); the build takes
        # ~50 s per environment, and a build killed midway leaves a lock in ~/.cache/torch_extensions
        # on which every later run waits forever. Marking the op incompatible skips the build.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    import ray.train
    import torch.distributed as dist

    from adaptsym.nets.checkpoint import checkpoint_name, save_checkpoint
    from adaptsym.config import parse_config
    from adaptsym.nets.data import load_dataset
    from adaptsym.nets.losses import hinge
    from adaptsym.nets.models import BiasFreeNet
    from adaptsym.train import HISTORY_KEYS, checkpoint_payload, open_run_store, record_epoch, write_history

    cfg = parse_config(config["cfg"])
    name, run_dir = config["model"], Path(config["run_dir"])
    tcfg = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    device = torch.device("cuda", ctx.get_local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    data = load_dataset(cfg.data, cfg.seed).to(device)
    torch.manual_seed(cfg.seed)
    model = BiasFreeNet(cfg.models[name], data.input_shape, seed=cfg.seed).to(device)
    micro = max(1, tcfg.batch_size // world)
    ds_config = {
        "train_batch_size": micro * world,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": config["zero_stage"]},
        "zero_allow_untested_optimizer": True,  # plain SGD with momentum, as in plain training
        "steps_per_print": 10**9,
    }
    opt = torch.optim.SGD(model.parameters(), lr=tcfg.lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay)
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="gloo" if device.type == "cpu" else "nccl")
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds_config)

    history = {"epoch": [], **{k: [] for k in HISTORY_KEYS}}
    start, mlflow_run_id = 0, None
    ds_dir = run_dir / "deepspeed"
    if (ds_dir / "latest").is_file():  # a killed run: every rank reloads its partition
        _, client = engine.load_checkpoint(str(ds_dir))
        start, history, mlflow_run_id = client["epoch"] + 1, client["history"], client.get("mlflow_run_id")
    store = open_run_store(run_dir, cfg, name, model, data.input_shape) if rank == 0 else None
    tracker = None
    if rank == 0 and config["mlflow"]:
        from adaptsym.storage.tracking import Tracker

        tracker = Tracker(run_dir.parent, cfg.name)
    mlrun = tracker.run(f"train-{cfg.name}-{name}", params=config["cfg"],
                        tags={"kind": "train", "model": name, "deepspeed_zero_stage": config["zero_stage"],
                              "zarr_path": store.url}, run_id=mlflow_run_id) if tracker else None
    run = mlrun.__enter__() if mlrun else None
    n = len(data.x_train)
    stop_after = int(os.environ.get("ADAPTSYM_TEST_KILL_AFTER_EPOCH", "-1"))  # tests: die like a killed job
    for epoch in range(start, tcfg.epochs + 1):
        if epoch > 0:
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100003 + epoch)).to(device)
            for i in range(0, n - micro * world + 1, micro * world):
                idx = perm[i + rank * micro : i + (rank + 1) * micro]
                loss = hinge(engine(data.x_train[idx]), data.y_train[idx]).mean()
                engine.backward(loss)
                engine.step()
        if rank == 0:
            metrics = record_epoch(model, data, tcfg.lr, epoch, history, tracker)
        # every rank saves its ZeRO partition; rank 0's history travels as client state
        shared = [history, run.info.run_id if run else mlflow_run_id]
        dist.broadcast_object_list(shared, src=0)
        engine.save_checkpoint(str(ds_dir), tag=f"epoch_{epoch:04d}",
                               client_state={"epoch": epoch, "history": shared[0], "mlflow_run_id": shared[1]})
        dist.barrier()
        if rank == 0:  # keep the latest engine checkpoint only
            for old in ds_dir.glob("epoch_*"):
                if old.is_dir() and old.name != f"epoch_{epoch:04d}":
                    shutil.rmtree(old)
        if rank == 0:
            payload = checkpoint_payload(cfg, name, data.input_shape, epoch, model.weights, {}, history,
                                         run.info.run_id if run else None,
                                         trainer={"deepspeed_zero_stage": config["zero_stage"], "workers": world})
            if epoch in tcfg.checkpoints:
                save_checkpoint(run_dir / "checkpoints" / checkpoint_name(epoch), payload)
            save_checkpoint(run_dir / "checkpoints" / "last.pt", payload)
            write_history(store, history)
            ray.train.report({"epoch": epoch, "train_loss": metrics["train_loss"]})
        else:
            ray.train.report({"epoch": epoch})
        if epoch == stop_after:
            os._exit(137)  # as SIGKILL would: no cleanup
    if mlrun:
        mlrun.__exit__(None, None, None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs.train --deepspeed", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--out", default="runs")
    p.add_argument("--model", default=None)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads-per-worker", type=int, default=1)
    p.add_argument("--zero-stage", type=int, choices=(1, 2), default=1)
    p.add_argument("--ray", default=None, metavar="ADDRESS", help="a running cluster (default: a local one)")
    p.add_argument("--no-mlflow", action="store_true")
    args = p.parse_args(argv)

    from ray.train import RunConfig as TrainRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from adaptsym.config import config_to_dict, load_config
    from adaptsym.train import run_dir_for
    from services.cluster import connect

    cfg = load_config(args.config)
    names = [args.model] if args.model else cfg.model_names()
    resources = connect(args.ray)
    use_gpu = resources.get("GPU", 0) > 0
    for name in names:
        run_dir = run_dir_for(args.out, cfg, name).resolve()
        trainer = TorchTrainer(
            _loop,
            train_loop_config={"cfg": config_to_dict(cfg), "model": name, "run_dir": str(run_dir),
                               "zero_stage": args.zero_stage, "threads": args.threads_per_worker,
                               "mlflow": not args.no_mlflow},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=use_gpu,
                                         resources_per_worker={"CPU": args.threads_per_worker}),
            run_config=TrainRunConfig(name=f"{cfg.name}-{name}-deepspeed", storage_path=str(run_dir / "ray_train")),
        )
        trainer.fit()
        from adaptsym.nets.checkpoint import load_checkpoint

        h = load_checkpoint(run_dir / "checkpoints" / "last.pt")["history"]
        print(f"[{name}] DeepSpeed ZeRO-{args.zero_stage} on {args.workers} workers: epoch {h['epoch'][-1]}, "
              f"train loss {h['train_loss'][-1]:.4g}, held-out acc {h['test_acc'][-1]:.3f}")
        print(f"[{name}] run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
