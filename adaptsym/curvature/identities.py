"""Exact identities checked on a real checkpoint and its stored measurement (SPEC section 2 and 4).

Each check returns a `Check`: a quantity, the value an identity demands, the value found, and a
tolerance that comes from float precision or from a Monte Carlo error, never a guess.

- `hessian_structure`: same-layer blocks of H are exactly 0 and tr H = 0 (T is linear in each
  layer's weights). Dense H for N <= `max_dense`, else a random set of columns.
- `homogeneity`: H theta = (L - 1) grad R (T is homogeneous of degree L in theta); a wrong factor
  in the HVP breaks it by that factor.
- `entries_vs_autograd`: stored per-example entries h[k, a] against the per-example Hessian of
  `max(0, 1 - y T(x))` by `torch.autograd.functional.hessian` on the flat parameter vector in
  torch's own order: catches a wrong index map, a wrong loss, a wrong per-example path.
- `bootstrap_scaling`: the replicates X = C h / s of the service's own count matrix: the weights of
  every replicate sum to exactly 1 (a constant entry is reproduced to float precision), and the
  first three cumulants over S are the pool's: mean, variance / s, third cumulant / s^2, pooled
  over entries, within 5 Monte Carlo standard errors (batch means over 20 groups of replicates).
- `decisions_recomputed`: the stored correlation coupling counts against a pair-by-pair
  studentised product sum, scipy's normal tail and `scipy.stats.false_discovery_control` at the
  configured q.
- `design_coverage`: a stratified design has entries in every layer pair.

Tolerances in float precision use eps of the dtype times sqrt(number of accumulated products) times
10: a product of n examples' N-term sums carries relative rounding of order sqrt(n N) eps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from ..stats.bootstrap import multinomial_counts, replicates
from ..stats.fdr import BD_CONSTANT
from .hvp import PoolHessian
from ..nets.models import flatten_params, forward, unflatten_params

SIGMAS = 5.0  # Monte Carlo checks: |deviation| <= 5 standard errors


@dataclass(frozen=True)
class Check:
    name: str
    expected: float
    got: float
    tolerance: float
    basis: str  # where the tolerance comes from

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.got) and abs(self.got - self.expected) <= self.tolerance)


def float_tol(dtype: torch.dtype, terms: float) -> float:
    return float(10.0 * np.sqrt(max(terms, 1.0)) * torch.finfo(dtype).eps)


def hessian_structure(op: PoolHessian, rng: np.random.Generator, max_dense: int = 4000,
                      n_cols: int = 64) -> list[Check]:
    index = op.index
    N = index.n_params
    cols = np.arange(N) if N <= max_dense else np.sort(rng.choice(N, size=n_cols, replace=False))
    Hc = op.columns(cols).detach().cpu().double().numpy()  # (N, len(cols))
    layer_col = index.layer_of(cols)
    layer_row = index.layer_of(np.arange(N))
    same = layer_row[:, None] == layer_col[None, :]
    scale = float(np.abs(Hc).max()) or 1.0
    tol = float_tol(op.weights[0].dtype, op.n * N) * scale
    diag = Hc[cols, np.arange(len(cols))]
    what = "dense H" if len(cols) == N else f"{len(cols)} random columns of H"
    return [
        Check("identity.same_layer_max_abs", 0.0, float(np.abs(Hc[same]).max()), tol,
              f"exact 0; float precision x max|H| ({what})"),
        Check("identity.trace_H" if len(cols) == N else "identity.diagonal_sum", 0.0, float(diag.sum()),
              tol * np.sqrt(len(cols)), f"exact 0; float precision x max|H| ({what})"),
    ]


def homogeneity(op: PoolHessian) -> Check:
    L = op.index.n_layers
    theta = flatten_params(op.weights)
    g = flatten_params(op.gradient())
    ref = (L - 1) * g
    err = float((op.matvec(theta) - ref).norm() / ref.norm()) if ref.norm() > 0 else float("nan")
    return Check("identity.H_theta_rel_error", 0.0, err, float_tol(theta.dtype, op.n * op.n_params),
                 f"H theta = (L-1) grad R with L = {L}; float precision")


def _literal_hinge_hessian(model, x1: torch.Tensor, y1: torch.Tensor) -> np.ndarray:
    """Per-example Hessian of max(0, 1 - y T(x)) in the flat parameter vector (torch's order)."""
    shapes = [tuple(w.shape) for w in model.params()]
    theta = flatten_params(model.params()).detach()

    def loss(v):
        out = forward(model.plan, unflatten_params(v, shapes), x1)
        return torch.clamp(1.0 - y1 * out, min=0.0).sum()

    return torch.autograd.functional.hessian(loss, theta).detach().cpu().double().numpy()


def entries_vs_autograd(model, x: torch.Tensor, y: torch.Tensor, h: np.ndarray, p: np.ndarray, q: np.ndarray,
                        rng: np.random.Generator, n_examples: int = 8) -> Check:
    """Stored h on a few pool examples (half at random, half with the margins nearest 1) vs autograd."""
    with torch.no_grad():
        margin = (y * forward(model.plan, model.params(), x)).detach().cpu().numpy()
    near = np.argsort(np.abs(margin - 1.0))[: n_examples // 2]
    rest = np.setdiff1d(np.arange(len(x)), near)
    ks = np.concatenate([near, rng.choice(rest, size=min(n_examples - len(near), rest.size), replace=False)])
    worst, scale = 0.0, 0.0
    for k in ks:
        Hk = _literal_hinge_hessian(model, x[k : k + 1], y[k : k + 1])
        worst = max(worst, float(np.abs(h[k] - Hk[p, q]).max()))
        scale = max(scale, float(np.abs(Hk).max()))
    N = len(flatten_params(model.params()))
    return Check("identity.entries_vs_autograd_max_abs", 0.0, worst, float_tol(model.params()[0].dtype, N) *
                 max(scale, 1e-300), f"{len(ks)} examples (margins nearest 1 and random); float precision")


def _cumulants(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    m = X.mean(axis=0)
    d = X - m
    return m, (d * d).sum(axis=0) / (len(X) - 1), (d**3).mean(axis=0)


def bootstrap_scaling(h: np.ndarray, s: int, rng: np.random.Generator, replicates_n: int = 20000,
                      batches: int = 20) -> list[Check]:
    """Cumulants of X = C h / s over the service's count matrix C against the exact scaling."""
    n = h.shape[0]
    C = multinomial_counts(n, s, replicates_n, rng)
    ones = replicates(np.ones((n, 1)), C, s)
    checks = [Check("identity.bootstrap_weight_max_dev", 0.0, float(np.abs(ones - 1.0).max()),
                    float(s * np.finfo(np.float64).eps), "each replicate's weights sum to exactly 1")]
    X = replicates(h, C, s)
    mh, vh, k3h = _cumulants(h)
    vh = vh * (n - 1) / n  # the pool's own (population) moments are the exact law of one draw
    sd_mean = np.sqrt(vh / s)
    sign3 = np.sign(k3h)

    def stats_of(Xb):
        m, v, k3 = _cumulants(Xb)
        return np.array([np.mean((m - mh) / sd_mean), v.sum() / (vh.sum() / s),
                         (sign3 * k3).sum() / (np.abs(k3h).sum() / s**2)])

    full = stats_of(X)
    per = np.array([stats_of(Xb) for Xb in np.array_split(X, batches)])
    se = per.std(axis=0, ddof=1) / np.sqrt(batches)
    names = ("identity.bootstrap_mean_dev", "identity.bootstrap_var_ratio", "identity.bootstrap_k3_ratio")
    for name, want, got, e in zip(names, (0.0, 1.0, 1.0), full, se):
        checks.append(Check(name, want, float(got), float(SIGMAS * e),
                            f"{SIGMAS:g} Monte Carlo s.e. ({replicates_n} replicates, {batches} batch means)"))
    return checks


def _brute_force_bh(cols: np.ndarray, pairs_ab: tuple[np.ndarray, np.ndarray], q: float, pvalue: str,
                    fdr: str) -> np.ndarray:
    """Studentised product sums of the column pairs (a, b), tested with scipy's BH/BY: rejected or not."""
    a, b = pairs_ab
    if a.size == 0:
        return np.zeros(0, dtype=bool)
    prod = cols[:, a] * cols[:, b]
    with np.errstate(divide="ignore", invalid="ignore"):
        T = np.where((prod**2).sum(0) > 0, prod.sum(0) / np.sqrt((prod**2).sum(0)), 0.0)
    p = 2 * stats.norm.sf(np.abs(T))
    if pvalue == "bound":
        p = np.minimum(1.0, BD_CONSTANT * p)
    return stats.false_discovery_control(p, method=fdr) <= q  # 'by' divides q by sum 1/i, as fdr.effective_q


def decisions_recomputed(h: np.ndarray, stored: dict, active: np.ndarray, pairs: tuple[np.ndarray, np.ndarray],
                         q: float, pvalue: str = "normal", fdr: str = "bh", active_test: str = "pairs",
                         mild_skew: float = 0.5) -> list[Check]:
    """Stored per-entry correlation counts of both readings ({reading: counts}) against a brute-force
    recomputation with scipy (`docs/statistics.md`): given activity, the test over the active
    examples (differences of the stored pairing, or standardised entries) at q; marginal, that test
    at q / 2 or the pool test at q / 2 among the entries whose values over the active examples have
    |skewness| <= mild_skew (scipy's skew), the pool part dropped below its strict power limit
    (A < 3 t^2). Below its own power limit the active test finds nothing here, so no rule is needed."""
    K = h.shape[1]
    a, b = np.triu_indices(K, 1)
    g = h[active]
    sd = g.std(axis=0)
    za = np.where(sd > 0, (g - g.mean(axis=0)) / np.where(sd > 0, sd, 1.0), 0.0)
    cols = za[pairs[0]] - za[pairs[1]] if active_test == "pairs" else za
    act = _brute_force_bh(cols, (a, b), q, pvalue, fdr)
    act_half = _brute_force_bh(cols, (a, b), q / 2, pvalue, fdr)  # the marginal union: two halves at q / 2
    calm = np.abs(np.nan_to_num(stats.skew(g, axis=0, bias=True))) <= mild_skew
    tested = calm[a] & calm[b]
    pool = np.zeros(a.size, dtype=bool)
    pool[tested] = _brute_force_bh(h - h.mean(axis=0), (a[tested], b[tested]), q / 2, pvalue, fdr)
    m = int(tested.sum())
    q_eff = q / 2 / (np.sum(1.0 / np.arange(1, m + 1)) if fdr == "by" else 1.0)
    t_one = stats.norm.isf(q_eff / max(m, 1) / 2 / (BD_CONSTANT if pvalue == "bound" else 1.0))
    if active.sum() < 3 * t_one**2:
        pool[:] = False
    out = []
    for reading, rej in (("active", act), ("marginal", act_half | pool)):
        counts = np.bincount(a[rej], minlength=K) + np.bincount(b[rej], minlength=K)
        out.append(Check(f"identity.{reading}_corr_counts_mismatch", 0.0, float(np.sum(counts != stored[reading])), 0.0,
                         f"entries whose stored {reading} count differs from scipy's {fdr.upper()} at q = {q} (exact)"))
    return out


def documented_bounds(store, group: str, s: int, cut: float) -> list[Check]:
    """The bounds `docs/statistics.md` states, on one stored measurement (`<group>/hessian_entries`):
    |mean / sd| <= sqrt(p / (1 - p)) per entry over the pool and over the active examples, the
    forced share recounted, |T| <= sqrt(A) for every stored co-moment statistic of the active reading
    and <= sqrt(n) for the marginal one. Each check's value is the number of violations (exact: 0)."""
    from ..stats.entry_stats import sparsity_bound

    g = f"{group}/hessian_entries"
    h, valid, active = store.read(g, "h"), store.read(g, "valid"), store.read(g, "active_example")
    n, A = h.shape[0], int(active.sum())
    sd = h.std(axis=0)
    z_pe = np.where(sd > 0, h.mean(axis=0) / np.where(sd > 0, sd, 1.0), 0.0)
    bound = sparsity_bound(store.read(g, "p_nonzero")) * (1 + 1e-9) + 1e-12
    act_valid = store.read(g, "active_valid")
    act_z = store.read(g, "active_z") / np.sqrt(s)
    act_bound = sparsity_bound(store.read(g, "p_nonzero_active")) * (1 + 1e-9) + 1e-12
    forced = (np.sqrt(s) * sparsity_bound(store.read(g, "p_nonzero")) < cut) & valid
    stored = store.attrs(group)["scalars"].get("hessian_entries.marginal.z_forced_fraction", np.nan)
    out = [Check("identity.marginal_sparsity_bound_violations", 0.0, float(np.sum(np.abs(z_pe[valid]) > bound[valid])),
                 0.0, "|mean / sd| <= sqrt(p / (1 - p)) over the pool (exact)"),
           Check("identity.active_sparsity_bound_violations", 0.0,
                 float(np.sum(np.abs(act_z[act_valid]) > act_bound[act_valid])), 0.0,
                 "|mean / sd| <= sqrt(p / (1 - p)) over the active examples (exact)"),
           Check("identity.forced_fraction_dev", 0.0, abs(float(forced.sum() / max(valid.sum(), 1)) - stored), 1e-12,
                 "the stored forced share recounted from p (exact)")]
    for name in ("coskew", "cokurt"):
        if store.has(g, f"{name}_tstat"):
            bad = np.sum(np.abs(store.read(g, f"active_{name}_tstat")) > np.sqrt(A) + 1e-9) + np.sum(
                np.abs(store.read(g, f"{name}_tstat")) > np.sqrt(n) + 1e-9)
            out.append(Check(f"identity.{name}_tstat_bound_violations", 0.0, float(bad), 0.0,
                             "|T| <= sqrt(A) given activity, <= sqrt(n) over the pool (exact)"))
    return out


def design_coverage(layer_p: np.ndarray, layer_q: np.ndarray, n_layers: int) -> Check:
    seen = {(int(a), int(b)) for a, b in zip(layer_p, layer_q)}
    missing = sum((a, b) not in seen for a in range(n_layers) for b in range(n_layers))
    return Check("identity.design_missing_layer_pairs", 0.0, float(missing), 0.0,
                 "a stratified block design covers every layer pair (exact)")


def per_layer_pair(h: np.ndarray, layer_p: np.ndarray, layer_q: np.ndarray, n_layers: int) -> dict:
    """Scale-sensitive summaries of the stored h: entries and mean |h| per (row layer, column layer)."""
    out = {}
    for a in range(n_layers):
        for b in range(n_layers):
            sel = (layer_p == a) & (layer_q == b)
            out[f"entries.L{a}-L{b}"] = float(sel.sum())
            out[f"h_mean_abs.L{a}-L{b}"] = float(np.abs(h[:, sel]).mean()) if sel.any() else float("nan")
    return out


def replicates_direct(plan, weights, x, y, rows, cols, row_pos, col_pos, counts: np.ndarray) -> np.ndarray:
    """Each replicate recomputed: the minibatch Hessian on S (duplicates kept), entries read out."""
    out = np.empty((len(counts), len(row_pos)))
    rows_t = torch.as_tensor(np.asarray(rows), device=x.device)
    for b, c in enumerate(counts):
        idx = torch.as_tensor(np.repeat(np.arange(len(c)), c.astype(np.int64)), device=x.device)
        cols_h = PoolHessian(plan, weights, x[idx], y[idx]).columns(cols)  # (N, |J|)
        block = cols_h[rows_t].detach().cpu().double().numpy()
        out[b] = block[row_pos, col_pos]
    return out
