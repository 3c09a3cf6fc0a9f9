"""Hessian eigenvalue density by stochastic Lanczos quadrature (SPEC section 3, Fig 8a).

For each Rademacher start v (normalised), m Lanczos steps with full reorthogonalisation give a
tridiagonal T_m; its eigenvalues theta_j (Ritz values) and the squared first components tau_j^2
of its eigenvectors form a Gauss quadrature with sum_j tau_j^2 theta_j^k = v' H^k v for
k <= 2m - 1. The density is the average over starts of sum_j tau_j^2 delta(lambda - theta_j),
Gaussian-smoothed on a linear grid and on a symmetric-log grid. Ritz values and weights are kept.

The only thing used from the network is `matvec` (flat vector -> H v), so any operator,
single-process or distributed, drives it unchanged. The first Lanczos coefficient of each start
is v'Hv, so the Hutchinson trace estimate comes for free from the same starts.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..progress import bar_off
from ..protocols import CurvatureOperator
from .observation import Observation
from ..config import SpectrumSpec
from ..registry import Figure, Observable
from .plotting import MissingData, Reader, colors


BLOCK_BYTES = 32 * 2**20  # basis rows are projected out in blocks of about this size


class LanczosBasis:
    """The Lanczos vectors of one start, memory bounded: rows live in RAM (in `dtype`, e.g.
    float32 for a float64 operator) up to `budget_bytes`; later rows go to an unlinked temporary
    file and are read back one block at a time. The projection is the same blockwise arithmetic
    wherever a row lives, so spilling changes no bit of the result."""

    def __init__(self, n: int, steps: int, dtype: torch.dtype, device=None, budget_bytes: float | None = None,
                 spill_dir: str | None = None):
        self.n, self.dtype, self.device = n, dtype, device
        self.itemsize = torch.empty(0, dtype=dtype).element_size()
        row = n * self.itemsize
        self.block = max(1, int(BLOCK_BYTES // row))
        cap = steps if budget_bytes is None else int(min(steps, max(0, budget_bytes // row)))
        if cap < steps:  # whole blocks only: a block is either in RAM or on disk
            cap = cap // self.block * self.block
        self.mem = torch.empty((cap, n), dtype=dtype, device=device)
        self.count = 0
        self._spill_dir, self._file = spill_dir, None

    @property
    def in_memory(self) -> int:
        return min(self.count, len(self.mem))

    @property
    def spilled(self) -> int:
        return self.count - self.in_memory

    def append(self, q: torch.Tensor) -> None:
        q = q.detach().to(self.dtype)
        if self.count < len(self.mem):
            self.mem[self.count] = q
        else:
            if self._file is None:
                self._file = tempfile.TemporaryFile(dir=self._spill_dir, prefix="adaptsym-lanczos-")
            self._file.seek(self.spilled * self.n * self.itemsize)
            self._file.write(q.cpu().numpy().tobytes())
        self.count += 1

    def _rows(self, start: int, stop: int) -> torch.Tensor:
        if stop <= len(self.mem):
            return self.mem[start:stop]
        lo = start - len(self.mem)
        self._file.seek(lo * self.n * self.itemsize)
        out = torch.empty((stop - start, self.n), dtype=self.dtype)
        self._file.readinto(out.numpy().data)  # straight into the tensor, no intermediate copy
        return out.to(self.device)

    def _blocks(self):
        for a in range(0, self.count, self.block):
            yield self._rows(a, min(a + self.block, self.count)).to(self._wdtype)

    def project_out(self, w: torch.Tensor) -> torch.Tensor:
        """w - Q'(Q w), in place: one classical Gram-Schmidt pass against every stored row."""
        self._wdtype = w.dtype
        coef = torch.cat([blk @ w for blk in self._blocks()])
        start = 0
        for blk in self._blocks():
            w.addmv_(blk.T, coef[start : start + len(blk)], alpha=-1.0)  # no N-vector temporaries
            start += len(blk)
        return w

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, steps: int,
            reorth: bool = True, basis_dtype: torch.dtype | None = None, budget_bytes: float | None = None,
            spill_dir: str | None = None, until: Callable[[list, list], bool] | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Tridiagonal coefficients (alpha (m,), beta (m-1,)) from start v0 (normalised inside).

    The three-term recurrence, then full reorthogonalisation (classical Gram-Schmidt, a second
    pass when the first removed more than 1 - 1/sqrt 2 of the norm) against all previous vectors, held
    by a `LanczosBasis` (in `basis_dtype`, default v0's; at most `budget_bytes` in RAM, the rest
    spilled to disk). Stops early on an invariant subspace, or once `until(alpha, beta)` (the
    coefficients so far) is true. Without `reorth` only the three-term recurrence runs and only
    two vectors are kept.
    """
    n = v0.numel()
    steps = min(steps, n)
    basis = LanczosBasis(n, steps if reorth else 0, basis_dtype or v0.dtype, v0.device, budget_bytes, spill_dir)
    q = v0 / v0.norm()
    q_prev = None
    alpha, beta = [], []
    try:
        for j in range(steps):
            if reorth:
                basis.append(q)
            w = matvec(q)
            a = torch.dot(q, w)
            alpha.append(float(a))
            if until is not None and until(alpha, beta):
                break
            w = w.clone() if w is q else w
            w.sub_(q, alpha=float(a))  # the three-term recurrence, in place
            if j > 0:
                w.sub_(q_prev, alpha=beta[-1])
            if reorth:  # then Gram-Schmidt against the whole basis, again only if it removed much
                norm = w.norm()  # (the DGKS criterion: a second pass when the norm fell below 1/sqrt 2)
                w = basis.project_out(w)
                if w.norm() < 0.7071 * norm:
                    w = basis.project_out(w)
            b = float(w.norm())
            if j == steps - 1 or b < 1e-12 * max(1.0, abs(alpha[0])):
                break
            beta.append(b)
            q_prev, q = q, w / b
    finally:
        basis.close()
    return np.array(alpha), np.array(beta)


def ritz(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values and quadrature weights (squared first eigenvector components)."""
    T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    theta, vec = np.linalg.eigh(T)
    return theta, vec[0] ** 2


def _extremes(alpha: list, beta: list) -> tuple[float, float]:
    theta = np.linalg.eigvalsh(np.diag(alpha) + np.diag(beta[: len(alpha) - 1], 1) + np.diag(beta[: len(alpha) - 1], -1))
    return float(theta[0]), float(theta[-1])


def extreme_eigenvalues(matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, tol: float = 1e-3,
                        max_steps: int = 100, **basis) -> tuple[float, float, int]:
    """(lambda_min, lambda_max, products used): Lanczos from v0 until both extreme Ritz values move
    by less than `tol` relative to the larger of |lambda_min|, |lambda_max| in one step.

    Power iteration (PyHessian's `eigenvalues`) finds only the eigenvalue of largest modulus and
    converges at the rate |lambda_2 / lambda_1|, which is slow for a Hessian whose spectrum is
    nearly symmetric about 0 (tr H = 0 here); Lanczos converges on both ends at once."""
    seen = []

    def converged(alpha, beta):
        seen.append(_extremes(alpha, beta))
        if len(seen) < 2:
            return False
        return max(abs(x - y) for x, y in zip(seen[-1], seen[-2])) <= tol * max(map(abs, seen[-1]))

    alpha, _ = lanczos(matvec, v0, max_steps, until=converged, **basis)
    return seen[-1][0], seen[-1][1], len(alpha)


def hutchinson(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, samples: int, rng: np.random.Generator,
               dtype=torch.float64, device=None) -> tuple[float, float]:
    """Hutchinson's estimate of tr H from `samples` Rademacher vectors, and its standard error."""
    est = np.array([float(torch.dot(v, matvec(v))) for v in
                    (torch.as_tensor(rng.choice([-1.0, 1.0], size=n), dtype=dtype, device=device)
                     for _ in range(samples))])
    return float(est.mean()), float(est.std(ddof=1) / np.sqrt(samples)) if samples > 1 else float("nan")


@dataclass
class SLQResult:
    nodes: np.ndarray  # (starts, m) Ritz values, padded with 0 where a start stopped early
    weights: np.ndarray  # (starts, m) quadrature weights (rows sum to 1), 0 for padding
    vhv: np.ndarray  # (starts,) v'Hv for the normalised starts
    n: int  # dimension

    @property
    def trace(self) -> tuple[float, float]:
        """Hutchinson estimate of tr H and its standard error (Rademacher starts: v'v = n)."""
        est = self.n * self.vhv
        return float(est.mean()), float(est.std(ddof=1) / np.sqrt(len(est))) if len(est) > 1 else float("nan")

    @property
    def extremes(self) -> tuple[float, float]:
        live = self.weights > 0
        return float(self.nodes[live].min()), float(self.nodes[live].max())

    def moment(self, k: int) -> float:
        """Estimate of (1/n) tr H^k."""
        return float((self.weights * self.nodes**k).sum(axis=1).mean())

    def cdf(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return np.array([(self.weights * (self.nodes <= xi)).sum(axis=1).mean() for xi in x.ravel()]).reshape(x.shape)


def slq(matvec: Callable[[torch.Tensor], torch.Tensor], n: int, starts: int, steps: int,
        rng: np.random.Generator, dtype=torch.float64, device=None, progress: bool = False,
        **basis) -> SLQResult:
    """`starts` Lanczos runs of `steps` from Rademacher vectors; `basis`: `lanczos`'s basis_dtype,
    budget_bytes, spill_dir."""
    nodes = np.zeros((starts, steps))
    weights = np.zeros((starts, steps))
    vhv = np.zeros(starts)
    for s in tqdm(range(starts), desc="lanczos", disable=bar_off(progress), unit="start", leave=False):
        v = torch.as_tensor(rng.choice([-1.0, 1.0], size=n), dtype=dtype, device=device)
        a, b = lanczos(matvec, v, steps, **basis)
        th, w = ritz(a, b)
        nodes[s, : len(th)], weights[s, : len(th)] = th, w
        vhv[s] = a[0]
    return SLQResult(nodes, weights, vhv, n)


def smoothed_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray, sigma: float) -> np.ndarray:
    """Average over starts of sum_j w_j N(grid; theta_j, sigma^2)."""
    g = grid[:, None, None]
    k = np.exp(-0.5 * ((g - nodes[None]) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
    return (k * weights[None]).sum(axis=2).mean(axis=1)


def symlog(x, scale: float) -> np.ndarray:
    """sign(x) log10(1 + |x| / scale)."""
    return np.sign(x) * np.log10(1.0 + np.abs(x) / scale)


def symmetry_score(nodes: np.ndarray, weights: np.ndarray, sigma: float, points: int = 2001) -> float:
    """0.5 * integral |rho(l) - rho(-l)| dl of the smoothed density: 0 symmetric, 1 one-sided."""
    live = weights > 0
    edge = np.abs(nodes[live]).max() + 6 * sigma
    grid = np.linspace(-edge, edge, points)
    rho = smoothed_density(nodes, weights, grid, sigma)
    return float(0.5 * np.trapezoid(np.abs(rho - rho[::-1]), grid))


def default_sigma(nodes: np.ndarray, weights: np.ndarray, rel: float) -> float:
    live = weights > 0
    span = nodes[live].max() - nodes[live].min()
    return float(rel * span) if span > 0 else 1e-12


def measure_spectrum(op: CurvatureOperator, starts: int, steps: int, grid: int, sigma_rel: float, seed: int, epoch: int,
                     progress: bool = False, basis_dtype: str = "float32", basis_budget_mb: float | None = None,
                     spill_dir: str | None = None):
    """Observation 'spectrum' of the pool Hessian `op` (anything with .matvec and .n_params)."""

    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x51C]))
    w0 = op.weights[0]
    bdtype = torch.float32 if basis_dtype == "float32" else w0.dtype
    budget = None if basis_budget_mb is None else basis_budget_mb * 2**20
    res = slq(op.matvec, op.n_params, starts, steps, rng, dtype=w0.dtype, device=w0.device, progress=progress,
              basis_dtype=bdtype, budget_bytes=budget, spill_dir=spill_dir)
    obs = Observation("spectrum")
    obs.add("ritz_values", res.nodes, ["start", "ritz"])
    obs.add("ritz_weights", res.weights, ["start", "ritz"])
    lo, hi = res.extremes
    sigma = default_sigma(res.nodes, res.weights, sigma_rel)
    lin = np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid)
    obs.add("grid", lin, ["lam"])
    obs.add("density", smoothed_density(res.nodes, res.weights, lin, sigma), ["lam"])
    scale = max(abs(lo), abs(hi)) * 1e-3 or 1.0
    u_nodes = symlog(res.nodes, scale)
    u_sigma = default_sigma(u_nodes, res.weights, sigma_rel)
    edge = np.abs(u_nodes[res.weights > 0]).max() + 5 * u_sigma
    ugrid = np.linspace(-edge, edge, grid)
    obs.add("symlog_grid", ugrid, ["u"])
    obs.add("symlog_density", smoothed_density(u_nodes, res.weights, ugrid, u_sigma), ["u"])
    tr, tr_se = res.trace
    obs.scalars.update(lambda_min=lo, lambda_max=hi, sigma=sigma, symlog_scale=scale,
                       symmetry_score=symmetry_score(res.nodes, res.weights, sigma),
                       trace_estimate=tr, trace_stderr=tr_se, moment1=res.moment(1), moment2=res.moment(2),
                       hvps=int((res.weights > 0).sum()))
    return obs


def measure(ctx):
    """The registry's entry point (`adaptsym.observables.registry`): `measure_spectrum` with the config's settings."""
    sp = ctx.cfg.measure.spectrum
    return measure_spectrum(ctx.op, sp.starts, sp.steps, sp.grid, sp.sigma_rel, ctx.cfg.seed, ctx.epoch, ctx.progress,
                            sp.basis_dtype, sp.basis_budget_mb, sp.spill_dir)


# ------------------------------------------------------------------ report figures


def fig8a(r: Reader, fig):
    eps, nodes = r.series("spectrum", "ritz_values")
    _, wts = r.series("spectrum", "ritz_weights")
    live = [(e, n, w) for e, n, w in zip(eps, nodes, wts) if np.abs(n[w > 0]).max() > 0]
    if not live:
        raise MissingData("spectrum/ritz_values with a non-zero eigenvalue (H = 0 at every checkpoint)")
    scale = 1e-3 * max(np.abs(n[w > 0]).max() for _, n, w in live)  # one scale for all epochs
    edge = max(np.abs(symlog(n[w > 0], scale)).max() for _, n, w in live) * 1.05
    u = np.linspace(-edge, edge, 600)
    ax = fig.subplots()
    floor = 1e-6  # of each curve's peak: below it the smoothed density is not drawn (the line breaks)
    for (e, n, w), col in zip(live, colors(len(live))):
        d = smoothed_density(symlog(n, scale), w, u, 0.01 * 2 * edge)
        ax.semilogy(u, np.where(d > floor * d.max(), d, np.nan), color=col, label=f"epoch {e}")
    dead = sorted(set(eps) - {e for e, _, _ in live})
    ax.set_xlabel(rf"sign($\lambda$) log$_{{10}}$(1 + |$\lambda$| / {scale:.2g}),  $\lambda$: Hessian eigenvalue")
    ax.set_ylabel(f"density (not drawn below {floor:g} of its peak)")
    ax.legend(fontsize=6, title=f"H = 0 at epochs {dead}" if dead else None, title_fontsize=6, loc="best")
    fig.suptitle("Fig 8a: Hessian eigenvalue density (stochastic Lanczos quadrature)")


# The registration (`adaptsym.registry`): name, measure function, settings section, report figures.
OBSERVABLE = Observable("spectrum", measure, settings=SpectrumSpec, figures=(Figure("fig8a_spectrum", fig8a, (8, 4.5)),),
                        default=True, order=40)
