"""adaptsym against PyHessian 0.1, side by side on the same model, pool and hinge loss (JSON).

    pip install --no-deps --target /tmp/pyhessian pyhessian==0.1     # a scratch copy, not a dependency
    PYTHONPATH=/tmp/pyhessian python -m jobs.pyhessian_compare [--models cnn vgg12q] [--states init trained]

Models: `cnn`, the demo CNN (N = 8,880) on 512 digits in float64; `vgg12q`, vgg12 at width
0.25 (N = 605,106) on 64 photo-patches in float32. States: `init` (the seeded initialisation)
and `trained` (a few epochs of SGD; most examples then have margin > 1).

For each, three workloads, each timed from the operator's construction (PyHessian builds its
first-order graph there, we pick the active examples and build ours) to the answer, as the best
of `--repeats` interleaved runs:

- top eigenvalue: PyHessian's power iteration (`eigenvalues(maxIter=100, tol=1e-3)`) against our
  Lanczos (`spectrum.extreme_eigenvalues`, tol=1e-3); both values are compared with a reference
  from Lanczos run to tol=1e-9;
- trace at equal sample counts: `trace(maxIter=m, tol=-inf)` (so that it takes all m samples)
  against `spectrum.hutchinson` with m samples;
- density: `density(iter=steps, n_v=starts)` against `spectrum.slq` with the same steps and
  starts; the first two moments of the two quadratures are compared.

Ratios are pyhessian_seconds / adaptsym_seconds. torch 2 removed `torch.eig`, which PyHessian's
density calls: this script supplies it (through `torch.linalg.eigh`, T is symmetric) while it runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time

import numpy as np
import torch

from adaptsym.config import ModelSpec, load_config
from adaptsym.nets.data import load_dataset
from adaptsym.config import DataSpec
from adaptsym.curvature.hvp import PoolHessian
from adaptsym.nets.losses import hinge
from adaptsym.nets.models import BiasFreeNet
from adaptsym.observables.spectrum import extreme_eigenvalues, hutchinson, slq
from adaptsym.train import sgd_epoch

HOWTO = ("PyHessian is not installed here. Put a scratch copy on the path:\n"
         "  pip install --no-deps --target /tmp/pyhessian pyhessian==0.1\n"
         "  PYTHONPATH=/tmp/pyhessian python -m jobs.pyhessian_compare")


def _torch_eig(T, eigenvectors=True):
    """torch.eig as PyHessian 0.1 calls it: (eigenvalues as (n, 2) real/imaginary, eigenvectors)."""
    vals, vecs = torch.linalg.eigh(T)
    return torch.stack([vals, torch.zeros_like(vals)], dim=1), vecs


def setup(name: str, state: str, seed: int = 0):
    """(model, x, y) in the model's dtype."""
    if name == "cnn":
        cfg = load_config("configs/demo.yaml")
        data = load_dataset(cfg.data, seed).to(dtype=torch.float64)
        model = BiasFreeNet(cfg.models["cnn"], data.input_shape, seed=seed, dtype=torch.float64)
        n, epochs, lr = 512, 5, 0.01
    elif name == "vgg12q":
        data = load_dataset(DataSpec(name="photo-patches", patches={"n_samples": 2048}), seed)
        model = BiasFreeNet(ModelSpec(kind="vgg12", width_multiplier=0.25), data.input_shape, seed=seed)
        n, epochs, lr = 64, 2, 0.01
    else:
        raise SystemExit(f"unknown model {name!r}; choose cnn or vgg12q")
    if state == "trained":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        for epoch in range(1, epochs + 1):
            sgd_epoch(model, opt, data, 64, seed, epoch)
    return model, data.x_train[:n], data.y_train[:n]


def best_of(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Best wall time of each function over interleaved repeats, and its last result."""
    best, out = {k: np.inf for k in fns}, {}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            out[k] = f()
            best[k] = min(best[k], time.perf_counter() - t)
    return best, out


def compare(name: str, state: str, steps: int, starts: int, trace_samples: int, repeats: int) -> dict:
    from pyhessian import hessian

    model, x, y = setup(name, state)
    dtype = x.dtype
    torch.set_default_dtype(dtype)  # PyHessian draws its vectors in the default dtype
    params = model.params()
    criterion = lambda out, t: hinge(out, t).mean()
    n = sum(p.numel() for p in params)
    rng = lambda k: np.random.default_rng(k)
    ours = lambda: PoolHessian(model.plan, params, x, y)

    def theirs():
        # PyHessian calls loss.backward(create_graph=True), which adds to .grad: without this, a
        # second construction would hold the sum of two graphs (2H, and twice the cost)
        model.zero_grad(set_to_none=True)
        return hessian(model, criterion, data=(x, y), cuda=False)

    start = lambda: torch.as_tensor(rng(1).choice([-1.0, 1.0], n), dtype=dtype)

    ref_op = ours()
    ref_lo, ref_hi, _ = extreme_eigenvalues(ref_op.matvec, start(), tol=1e-9, max_steps=400)
    ref_top = ref_hi if abs(ref_hi) >= abs(ref_lo) else ref_lo
    out = {"n_params": n, "n_pool": len(x), "n_active": ref_op.n_active, "dtype": str(dtype).split(".")[-1],
           "hvp_method": ref_op.method, "reference_extremes": [ref_lo, ref_hi]}
    del ref_op

    def top_ours():
        lo, hi, used = extreme_eigenvalues(ours().matvec, start(), tol=1e-3, max_steps=100)
        return (hi if abs(hi) >= abs(lo) else lo), used

    def top_theirs():
        torch.manual_seed(1)
        return theirs().eigenvalues(maxIter=100, tol=1e-3)[0][0]

    t, r = best_of({"pyhessian": top_theirs, "adaptsym": top_ours}, repeats)
    out["top_eigenvalue"] = {
        "pyhessian": r["pyhessian"], "adaptsym": r["adaptsym"][0], "adaptsym_products": r["adaptsym"][1],
        "reference": ref_top, "pyhessian_rel_error": abs(r["pyhessian"] - ref_top) / abs(ref_top),
        "adaptsym_rel_error": abs(r["adaptsym"][0] - ref_top) / abs(ref_top),
        "seconds": t, "ratio": t["pyhessian"] / t["adaptsym"]}

    def trace_theirs():
        torch.manual_seed(2)
        est = theirs().trace(maxIter=trace_samples, tol=float("-inf"))
        return float(np.mean(est)), float(np.std(est, ddof=1) / np.sqrt(len(est)))

    t, r = best_of({"pyhessian": trace_theirs,
                    "adaptsym": lambda: hutchinson(ours().matvec, n, trace_samples, rng(2), dtype=dtype)}, repeats)
    out["trace"] = {"samples": trace_samples, "pyhessian": r["pyhessian"], "adaptsym": r["adaptsym"],
                    "difference_in_joint_stderr": abs(r["pyhessian"][0] - r["adaptsym"][0])
                    / np.hypot(r["pyhessian"][1], r["adaptsym"][1]),
                    "seconds": t, "ratio": t["pyhessian"] / t["adaptsym"]}

    def density_theirs():
        torch.manual_seed(3)
        nodes, weights = theirs().density(iter=steps, n_v=starts)
        return np.array(nodes), np.array(weights)

    def density_ours():
        res = slq(ours().matvec, n, starts, steps, rng(3), dtype=dtype, basis_dtype=torch.float32)
        return res.nodes, res.weights

    t, r = best_of({"pyhessian": density_theirs, "adaptsym": density_ours}, repeats)
    scale = max(abs(ref_lo), abs(ref_hi))
    out["density"] = {
        "steps": steps, "starts": starts,
        "moment1_over_scale": {k: [float((w * v).sum() / scale) for v, w in zip(*r[k])] for k in r},  # per start
        "extremes": {k: [float(r[k][0].min()), float(r[k][0].max())] for k in r},
        "seconds": t, "ratio": t["pyhessian"] / t["adaptsym"]}
    m2 = {k: [float((w * v**2).sum()) for v, w in zip(*r[k])] for k in r}
    out["density"]["moment2_per_start"] = m2
    out["density"]["moment2_gap_over_spread"] = abs(np.mean(m2["pyhessian"]) - np.mean(m2["adaptsym"])) / max(
        np.ptp(m2["pyhessian"] + m2["adaptsym"]), 1e-300)
    torch.set_default_dtype(torch.float32)
    model.zero_grad(set_to_none=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="jobs.pyhessian_compare", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["cnn", "vgg12q"], choices=["cnn", "vgg12q"])
    p.add_argument("--states", nargs="+", default=["init", "trained"], choices=["init", "trained"])
    p.add_argument("--steps", type=int, default=80, help="Lanczos steps per start (density)")
    p.add_argument("--starts", type=int, default=2, help="Lanczos starts (density)")
    p.add_argument("--trace-samples", type=int, default=50)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if importlib.util.find_spec("pyhessian") is None:
        print(HOWTO, file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.eig = _torch_eig
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "runs": {}}
    for name in args.models:
        for state in args.states:
            out["runs"][f"{name}/{state}"] = compare(name, state, args.steps, args.starts, args.trace_samples,
                                                     args.repeats)
    print(json.dumps(out, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
