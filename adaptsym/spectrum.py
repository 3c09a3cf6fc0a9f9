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

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm


def lanczos(matvec: Callable[[torch.Tensor], torch.Tensor], v0: torch.Tensor, steps: int,
            reorth: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Tridiagonal coefficients (alpha (m,), beta (m-1,)) from start v0 (normalised inside).

    Full reorthogonalisation (twice, classical Gram-Schmidt) against all previous vectors,
    which are kept in a (steps, N) tensor. Stops early on an invariant subspace.
    """
    n = v0.numel()
    steps = min(steps, n)
    Q = torch.zeros((steps, n), dtype=v0.dtype, device=v0.device)
    q = v0 / v0.norm()
    alpha, beta = [], []
    for j in range(steps):
        Q[j] = q
        w = matvec(q)
        a = torch.dot(q, w)
        alpha.append(float(a))
        if reorth:
            for _ in range(2):
                w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        else:
            w = w - a * q - (beta[-1] * Q[j - 1] if j > 0 else 0)
        b = float(w.norm())
        if j == steps - 1 or b < 1e-12 * max(1.0, abs(alpha[0])):
            break
        beta.append(b)
        q = w / b
    return np.array(alpha), np.array(beta)


def ritz(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ritz values and quadrature weights (squared first eigenvector components)."""
    T = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
    theta, vec = np.linalg.eigh(T)
    return theta, vec[0] ** 2


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
        rng: np.random.Generator, dtype=torch.float64, device=None, progress: bool = False) -> SLQResult:
    nodes = np.zeros((starts, steps))
    weights = np.zeros((starts, steps))
    vhv = np.zeros(starts)
    for s in tqdm(range(starts), desc="lanczos", disable=not progress, unit="start", leave=False):
        v = torch.as_tensor(rng.choice([-1.0, 1.0], size=n), dtype=dtype, device=device)
        a, b = lanczos(matvec, v, steps)
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


def measure_spectrum(op, starts: int, steps: int, grid: int, sigma_rel: float, seed: int, epoch: int,
                     progress: bool = False):
    """Observation 'spectrum' of the pool Hessian `op` (anything with .matvec and .n_params)."""
    from .observation import Observation

    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x51C]))
    w0 = op.weights[0]
    res = slq(op.matvec, op.n_params, starts, steps, rng, dtype=w0.dtype, device=w0.device, progress=progress)
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
