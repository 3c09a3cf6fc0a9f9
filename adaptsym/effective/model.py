"""The data-driven effective model of a weight space (Zou & Huang, sec. III-IV, App. B): a
pairwise maximum-entropy (Ising) model of an ensemble of binary weight configurations, fitted
by Boltzmann learning with belief propagation, and its entropy landscape around references.

Model: P(s) = exp(-E(s)) / Z, E(s) = -sum_{i<j} J_ij s_i s_j - sum_i h_i s_i, s in {-1, +1}^N
(the inverse temperature is absorbed into J and h).

Belief propagation (the cavity method) on the fully connected model. M[i, j] is the cavity
magnetisation of i with the coupling (ij) removed; the coupling sends i the field
u[i, j] = atanh(tanh(J_ij) M[j, i]). With H_i = h_i + sum_j u[i, j] the fixed point solves
M[i, j] = tanh(H_i - u[i, j]) (eq. B2). From it (eqs. B1, B3):
  m_i = tanh(H_i),
  C_ij = (t_ij + M[i,j] M[j,i]) / (1 + t_ij M[i,j] M[j,i]),  t_ij = tanh(J_ij),
  -ln Z ~ F = sum_i dF_i - sum_{i<j} dF_ij,
    dF_i  = -sum_j ln cosh J_ij - ln sum_{x=+-1} exp(x h_i) prod_j (1 + x t_ij M[j, i]),
    dF_ij = -ln cosh J_ij - ln(1 + t_ij M[i,j] M[j,i]),
  E = -sum_{i<j} J_ij C_ij - sum_i h_i m_i  (the energy under the Bethe beliefs; at a fixed
      point it equals d(beta F)/d(beta), eq. B4, which a test checks by finite differences).
BP is exact on trees and close to exact for weak couplings; `exact_moments` enumerates all 2^N
states as the brute-force reference (N <= 20).

Boltzmann learning (eq. 5): J += eta (C_data - C_model), h += eta (m_data - m_model), model
moments from BP warm-started at the last fixed point (or exact), with a line search on the
negative log-likelihood (Newton's direction with exact moments), until the fit error Delta of
eq. 6 is below `target` or after `max_steps` steps.

Entropy landscape (eqs. 7-9, B6-B7): the field x sum_i s*_i s_i towards a reference s* is
added by h_i -> h_i + x s*_i. At each x of a sweep (warm-started from the previous x, so the
two sweep directions can disagree: hysteresis), q = sum_i m_i s*_i / N, d = (1 - q) / 2, the
free energy density f = F / N, the energy density e = E / N (of the model without x), and the
entropy density s = -f + e - x q. Bounded by s_ub(d) = -d ln d - (1 - d) ln(1 - d).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserFacingError


class NotConvergedError(UserFacingError, RuntimeError):
    """Belief propagation did not reach its tolerance; the message gives the last residual."""


@dataclass
class BPResult:
    """A belief-propagation fixed point (or the last iterate, when `converged` is False)."""

    messages: np.ndarray  # M[i, j]: cavity magnetisation of i without the coupling (ij)
    m: np.ndarray
    C: np.ndarray  # pair correlations <s_i s_j>, diagonal 1
    free_energy: float  # F ~ -ln Z
    energy: float  # <E> under the beliefs
    iterations: int
    residual: float
    converged: bool
    J: np.ndarray | None = None  # the model the fixed point belongs to (for its stability)
    damping: float = 0.5

    @property
    def jacobian_radius(self) -> float:
        """Spectral radius of the damped BP update's Jacobian at these messages,
        damping I + (1 - damping) dF/dM: below 1 the fixed point attracts the iteration, above 1
        it repels it (an unstable point the iteration reached only by symmetry, e.g. the
        paramagnet of an ordered ferromagnet). Power iteration on Jacobian-vector products."""
        if "_radius" not in self.__dict__:
            self.__dict__["_radius"] = bp_jacobian_radius(self.J, self.messages, self.damping)
        return self.__dict__["_radius"]

    @property
    def stable(self) -> bool:
        return self.jacobian_radius < 1.0 + 1e-6

    @property
    def entropy(self) -> float:
        return self.energy - self.free_energy


def check_model(J: np.ndarray, h: np.ndarray) -> None:
    J, h = np.asarray(J), np.asarray(h)
    n = h.shape[0]
    if J.shape != (n, n):
        raise ValueError(f"J has shape {J.shape}; it must be ({n}, {n}) for {n} fields h")
    if not np.allclose(J, J.T) or np.any(np.diag(J) != 0):
        raise ValueError("J must be symmetric with a zero diagonal")


class UnstableFixedPointWarning(UserWarning):
    """Belief propagation converged to a fixed point that repels the iteration."""


def bp_jacobian_radius(J: np.ndarray, M: np.ndarray, damping: float, iters: int = 1000, seed: int = 0,
                       dense_up_to: int = 40) -> float:
    """Spectral radius of damping I + (1 - damping) dF/dM at messages M. Up to `dense_up_to`
    spins: the eigenvalues of the Jacobian built column by column from Jacobian-vector products
    (exact). Above: power iteration, the growth rate of a random start over the last half of
    `iters` steps (approximate where the leading eigenvalues are close or complex)."""
    n = J.shape[0]
    if n < 2:
        return 0.0
    t = np.tanh(J)
    if n <= dense_up_to:
        off = ~np.eye(n, dtype=bool)
        cols = []
        for k in np.flatnonzero(off.ravel()):
            e = np.zeros(n * n)
            e[k] = 1.0
            e = e.reshape(n, n)
            cols.append((damping * e + (1 - damping) * _jvp_exact(t, M, e))[off])
        return float(np.abs(np.linalg.eigvals(np.array(cols).T)).max())
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, n))
    np.fill_diagonal(v, 0.0)
    v /= np.linalg.norm(v)
    logs = []
    for _ in range(iters):
        w = damping * v + (1 - damping) * _jvp_exact(t, M, v)
        norm = np.linalg.norm(w)
        if norm == 0:
            return 0.0
        logs.append(np.log(norm))
        v = w / norm
    return float(np.exp(np.mean(logs[len(logs) // 2:])))


def _jvp_exact(t, M, V):
    """dF/dM V with the messages' own fields: F(M)[i, j] = tanh(h_i + sum_{k != j} u_ik), so
    tanh' needs h; it is recovered from M itself at a fixed point (M = F(M))."""
    tm = t * M.T
    du = t * V.T / (1 - tm**2)
    out = (1 - M**2) * (du.sum(1)[:, None] - du)  # at a fixed point F(M) = M, so tanh'(.) = 1 - M^2
    np.fill_diagonal(out, 0.0)
    return out


def bp_attracts(J: np.ndarray, h: np.ndarray, M: np.ndarray, damping: float = 0.5, tol: float = 1e-9,
                eps: float = 1e-4, max_iter: int = 500, seed: int = 0) -> bool:
    """Does the damped iteration return to the fixed point M after a random kick of size `eps`?
    The operational meaning of stability, and 10-50 times cheaper than the spectral radius by
    power iteration on large models (a fixed point that attracts returns at the rate of its
    radius, in tens of iterations; one that repels runs away, to another fixed point or none).
    A marginal point that returns slower than `max_iter` counts as not attracting."""
    n = h.shape[0]
    if n < 2:
        return True
    kick = np.random.default_rng(seed).uniform(-eps, eps, M.shape)
    np.fill_diagonal(kick, 0.0)
    start = np.clip(M + kick, -1 + 1e-12, 1 - 1e-12)
    r = belief_propagation(J, h, start, damping=damping, tol=tol, max_iter=max_iter, strict=False,
                           check_stability=False)
    return bool(r.converged and np.abs(r.messages - M).max() < 10 * eps)


def belief_propagation(J: np.ndarray, h: np.ndarray, messages: np.ndarray | None = None, damping: float = 0.5,
                       tol: float = 1e-9, max_iter: int = 2000, strict: bool = True,
                       check_stability: bool = True) -> BPResult:
    """Iterate eq. B2 (damped: M <- damping M_old + (1 - damping) M_new) from `messages` (or from
    M[i, j] = tanh(h_i)) until max |M_new - M_old| < tol. A run that stops at `max_iter` raises
    NotConvergedError with its residual when `strict`, else returns `converged=False`. A converged
    point is checked for stability (`BPResult.jacobian_radius`) when `check_stability`, with an
    UnstableFixedPointWarning when it repels the iteration (`bp_attracts`: tens of iterations; the
    spectral radius, `BPResult.jacobian_radius`, costs a thousand Jacobian products)."""
    check_model(J, h)
    n = h.shape[0]
    t = np.tanh(J)
    M = np.repeat(np.tanh(h)[:, None], n, axis=1) if messages is None else messages.copy()
    residual, it = np.inf, 0
    for it in range(1, max_iter + 1):
        u = np.arctanh(t * M.T)
        H = h + u.sum(1)
        new = np.tanh(H[:, None] - u)
        np.fill_diagonal(new, 0.0)
        residual = float(np.abs(new - M).max()) if n > 1 else 0.0
        M = damping * M + (1 - damping) * new
        if residual < tol:
            break
    converged = residual < tol
    if strict and not converged:
        raise NotConvergedError(
            f"belief propagation did not converge in {max_iter} iterations (last residual {residual:.3g}, "
            f"tolerance {tol:g}); raise max_iter or the damping, or the couplings are too strong (glassy)")
    res = _observables(J, h, M, it, residual, converged, damping)
    if check_stability and converged and not bp_attracts(J, h, M, damping, tol):
        import warnings

        warnings.warn("belief propagation converged to an unstable fixed point (a kick of 1e-4 does not return; "
                      "`jacobian_radius` gives the rate): it was reached by symmetry, not as an attractor, and its "
                      "moments and free energy are not the model's; start from other messages (e.g. "
                      "m = +-1) and keep the lowest Bethe free energy", UnstableFixedPointWarning, stacklevel=2)
    return res


class UnstableFixedPointError(UserFacingError, RuntimeError):
    """Strict mode: belief propagation found no stable fixed point, or several."""


@dataclass
class MultiStartBP:
    """`bp_solve`'s answer: the chosen fixed point and what the other starts found."""

    best: BPResult  # the stable converged point of lowest Bethe free energy (else the lowest of all)
    free_energies: list[float]  # of every start (nan where it did not converge)
    stable: list[bool]  # of every start: converged to a point that attracts the iteration (`bp_attracts`)
    points: list = field(default_factory=list, repr=False)  # the distinct stable fixed points, lowest F first
    best_attracts: bool = False  # `best` is one of `points` (else no start reached a stable point)

    @property
    def n_stable_points(self) -> int:
        """Distinct stable fixed points (magnetisations differing by more than 1e-4)."""
        return len(self.points)

    @property
    def unique(self) -> bool:
        return self.n_stable_points == 1

    def mixture(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(m, C, ln Z) of the distinct stable points weighted by exp(-F): the Bethe approximation
        of a measure with several phases (each phase one Bethe state), e.g. m = 0 for the
        symmetric ferromagnet whose phases are +-m."""
        pts = self.points or [self.best]
        w = -np.array([p.free_energy for p in pts])
        lnZ = float(np.logaddexp.reduce(w))
        w = np.exp(w - lnZ)
        return sum(wi * p.m for wi, p in zip(w, pts)), sum(wi * p.C for wi, p in zip(w, pts)), lnZ

    @property
    def ok(self) -> bool:
        return self.unique and self.best_attracts


def bp_solve(J: np.ndarray, h: np.ndarray, starts: int = 4, seed: int = 0, strict: bool = False,
             damping: float = 0.5, tol: float = 1e-9, max_iter: int = 2000) -> MultiStartBP:
    """Belief propagation from several initial messages: M = tanh(h) (the default start), all
    +0.9, all -0.9, and `starts - 3` random ones. Keeps the converged, stable fixed point with the
    lowest Bethe free energy. Flags, warns, or with `strict` refuses (UnstableFixedPointError):
    no stable fixed point, or several distinct ones (a model with more than one phase, whose
    Gibbs measure a single Bethe state cannot represent: BP's moments are then those of one phase)."""
    import warnings

    check_model(J, h)
    n = h.shape[0]
    rng = np.random.default_rng(seed)
    inits = [None, np.full((n, n), 0.9), np.full((n, n), -0.9)]
    inits += [rng.uniform(-0.9, 0.9, (n, n)) for _ in range(max(0, starts - 3))]
    runs = []
    for M0 in inits[:max(starts, 1)]:
        if M0 is not None:
            np.fill_diagonal(M0, 0.0)
        r = belief_propagation(J, h, M0, damping=damping, tol=tol, max_iter=max_iter, strict=False,
                               check_stability=False)
        runs.append(r)
    attracting = [bool(r.converged and bp_attracts(J, h, r.messages, damping, tol, seed=seed)) for r in runs]
    good = [r for r, a in zip(runs, attracting) if a]
    distinct: list[BPResult] = []
    for r in sorted(good, key=lambda r: r.free_energy):
        if all(np.abs(r.m - d.m).max() > 1e-4 for d in distinct):
            distinct.append(r)
    pool = distinct or [r for r in runs if r.converged] or runs
    best = min(pool, key=lambda r: r.free_energy if np.isfinite(r.free_energy) else np.inf)
    out = MultiStartBP(best, [r.free_energy if r.converged else float("nan") for r in runs],
                       attracting, distinct, any(best is p for p in distinct))
    if not out.ok:
        why = ("no start reached a stable fixed point" if not distinct else
               f"{len(distinct)} distinct stable fixed points (Bethe free energies "
               + ", ".join(f"{r.free_energy:.4g}" for r in distinct) + "): the model has more than one phase and BP's "
               "moments are those of the lowest one only")
        if strict:
            raise UnstableFixedPointError(f"belief propagation: {why}; use exact or sampled moments (Gibbs with "
                                          "tempering) for this model")
        warnings.warn(f"belief propagation: {why}", UnstableFixedPointWarning, stacklevel=2)
    return out


def _observables(J, h, M, iterations, residual, converged, damping=0.5) -> BPResult:
    n = h.shape[0]
    t = np.tanh(J)
    u = np.arctanh(t * M.T)
    m = np.tanh(h + u.sum(1))
    MM = M * M.T
    C = (t + MM) / (1 + t * MM)
    np.fill_diagonal(C, 1.0)
    iu = np.triu_indices(n, 1)
    logcosh = np.log(np.cosh(J))
    # dF_i: log of sum_x exp(x h_i) prod_j (1 + x t_ij M[j, i]) (diagonal terms are 0: log 1)
    hat = t * M.T
    plus = h + np.log1p(hat).sum(1)
    minus = -h + np.log1p(-hat).sum(1)
    dF_i = -logcosh.sum(1) - np.logaddexp(plus, minus)
    dF_a = -logcosh[iu] - np.log1p(t[iu] * MM[iu])
    F = float(dF_i.sum() - dF_a.sum())
    E = float(-(J[iu] * C[iu]).sum() - h @ m)
    return BPResult(M, m, C, F, E, iterations, residual, converged, J, damping)


# ---------------------------------------------------------------- brute force (N <= 20)
def all_states(n: int) -> np.ndarray:
    """(2^n, n) every configuration in {-1, +1}^n."""
    if n > 20:
        raise ValueError(f"exact enumeration of 2^{n} states is too large (N <= 20)")
    bits = (np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1
    return (2 * bits - 1).astype(np.float64)


@dataclass
class ExactResult:
    m: np.ndarray
    C: np.ndarray
    free_energy: float  # -ln Z
    energy: float
    entropy: float


def energies(J: np.ndarray, h: np.ndarray, states: np.ndarray) -> np.ndarray:
    """E(s) of each row of `states`."""
    return -0.5 * np.einsum("ki,ij,kj->k", states, J, states) - states @ h


def exact_moments(J: np.ndarray, h: np.ndarray) -> ExactResult:
    """m, C, -ln Z, <E> and the entropy by summing over all 2^N states."""
    check_model(J, h)
    s = all_states(h.shape[0])
    e = energies(J, h, s)
    logw = -e
    lnZ = float(np.logaddexp.reduce(logw))
    p = np.exp(logw - lnZ)
    E = float(p @ e)
    return ExactResult(p @ s, (s * p[:, None]).T @ s, -lnZ, E, E + lnZ)


def exact_samples(J: np.ndarray, h: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n independent exact samples (int8) by enumerating all states."""
    s = all_states(h.shape[0])
    logw = -energies(J, h, s)
    p = np.exp(logw - logw.max())
    return s[rng.choice(len(s), size=n, p=p / p.sum())].astype(np.int8)


# ---------------------------------------------------------------- data and fitting
def data_moments(configs: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Magnetisations m_i = <s_i> and correlations C_ij = <s_i s_j> of configurations (K x N, +-1)."""
    k, n = configs.shape
    if k == 0:
        raise ValueError("no configurations to take moments of")
    m = np.zeros(n)
    C = np.zeros((n, n))
    for a in range(0, k, chunk):
        x = np.asarray(configs[a:a + chunk], dtype=np.float64)
        m += x.sum(0)
        C += x.T @ x
    return m / k, C / k


def fit_error(m_data, C_data, m_model, C_model) -> float:
    """Delta of eq. 6: the root mean square of the magnetisation and the pair-correlation errors."""
    n = m_data.shape[0]
    iu = np.triu_indices(n, 1)
    dm = np.mean((m_data - m_model) ** 2)
    dC = np.mean((C_data[iu] - C_model[iu]) ** 2) if n > 1 else 0.0
    return float(np.sqrt(dm + dC))


@dataclass
class FitResult:
    J: np.ndarray
    h: np.ndarray
    m_model: np.ndarray
    C_model: np.ndarray
    deltas: list[float]  # Delta of the start and after each accepted step
    bp_iterations: list[int]
    converged: bool  # Delta < target
    messages: np.ndarray | None = field(default=None, repr=False)
    noise: float | None = None  # sampled moments (`gibbs`): the sampling noise in the last Delta
    rhat: float | None = None  # sampled moments: the chains' largest R-hat in that estimate (> 1.1: not mixed)

    @property
    def steps(self) -> int:
        return len(self.deltas)


def _model_moments(J, h, moments, M, damping, bp_tol, bp_max_iter):
    """(m, C, ln Z, messages, BP iterations): exact by enumeration, or BP's (ln Z ~ -F_Bethe)."""
    if moments == "exact":
        ex = exact_moments(J, h)
        return ex.m, ex.C, -ex.free_energy, None, 0
    if moments == "bp":
        bp = belief_propagation(J, h, M, damping=damping, tol=bp_tol, max_iter=bp_max_iter, check_stability=False)
        return bp.m, bp.C, -bp.free_energy, bp.messages, bp.iterations
    raise ValueError(f"moments must be 'bp' or 'exact', not {moments!r}")


def exact_fisher(J: np.ndarray, h: np.ndarray, chunk: int = 1 << 15) -> np.ndarray:
    """The covariance of the sufficient statistics (s_i, then s_i s_j for i < j) under the model,
    by enumeration: the Hessian of ln Z in (h, J upper triangle), so Newton's step of Boltzmann
    learning with exact moments."""
    n = h.shape[0]
    iu = np.triu_indices(n, 1)
    s = all_states(n)
    logw = -energies(J, h, s)
    p = np.exp(logw - np.logaddexp.reduce(logw))
    k = n + len(iu[0])
    second, mean = np.zeros((k, k)), np.zeros(k)
    for a in range(0, len(s), chunk):
        x = s[a:a + chunk]
        phi = np.concatenate([x, x[:, iu[0]] * x[:, iu[1]]], axis=1)
        w = p[a:a + chunk]
        mean += w @ phi
        second += (phi * w[:, None]).T @ phi
    return second - np.outer(mean, mean)


def _objective(lnZ, J, h, m_data, C_data) -> float:
    """The negative mean log-likelihood of the data moments, ln Z - sum_{i<j} J_ij C_ij - h . m:
    convex in (J, h), its gradient the moment mismatch (model minus data)."""
    iu = np.triu_indices(h.shape[0], 1)
    return float(lnZ - J[iu] @ C_data[iu] - h @ m_data)


def boltzmann_learning(m_data: np.ndarray, C_data: np.ndarray, eta: float = 0.5, target: float = 0.01,
                       max_steps: int = 300, moments: str = "bp", damping: float = 0.5, bp_tol: float = 1e-8,
                       bp_max_iter: int = 2000, adapt: bool = True, on_step=None) -> FitResult:
    """Fit (J, h) to the data moments by eq. 5. `moments`: "bp" (belief propagation, warm-started)
    or "exact" (enumeration, N <= 20: the reference). Starts from the independent model
    (J = 0, h = atanh m_data).

    With exact moments the fit minimises the negative log-likelihood L = ln Z - J.C_data - h.m_data
    (convex, ln Z by enumeration): each step is Newton's (the exact Fisher matrix, `exact_fisher`)
    with a backtracking line search on L (Armijo, c = 1e-4, from a full step), so it converges
    quadratically. The moment-matching step descends L, not the fit error Delta: the earlier rule,
    which accepted only steps that lowered Delta, stalled there at Delta 0.04-0.06 on strong dense
    models. With BP moments there is no such objective to search on: -F_Bethe at the warm-started
    fixed point jumps where BP has several fixed points (the demo's models have two), and a line
    search on it stalled at Delta 0.38 after 4 steps on the 675-weight demo ensemble, where the
    Delta rule reaches 0.035. So with BP, under `adapt`, a step that raises Delta, or after which
    BP does not converge, is undone and retried at half the rate; an accepted step raises the rate
    by 10% (up to `eta`); the fit stops when the rate falls below 1e-4 eta (stalled). Without
    `adapt`: plain steps of `eta`. Stops when Delta < `target` or after `max_steps` attempted steps.
    `on_step(step, delta, rate)` is called after each accepted step; Delta is that of the
    returned model."""
    n = m_data.shape[0]
    iu = np.triu_indices(n, 1)
    m_clip = np.clip(m_data, -1 + 1e-6, 1 - 1e-6)
    J, h = np.zeros((n, n)), np.arctanh(m_clip)
    m_mod, C_mod, lnZ, M, it = _model_moments(J, h, moments, None, damping, bp_tol, bp_max_iter)
    delta = fit_error(m_data, C_data, m_mod, C_mod)
    loss = _objective(lnZ, J, h, m_data, C_data)
    deltas, iters, rate, tries = [delta], [it], eta, 0
    newton = moments == "exact" and adapt
    if on_step is not None:
        on_step(0, delta, rate)
    def attempt(step, r):
        """(J, h, m, C, messages, BP iterations, Delta, L) after a step of r; None if BP fails."""
        dJ = np.zeros((n, n))
        dJ[iu] = step[n:]
        J_new, h_new = J + r * (dJ + dJ.T), h + r * step[:n]
        try:
            m_new, C_new, lnZ_new, M_new, it_new = _model_moments(J_new, h_new, moments, M, damping, bp_tol,
                                                                  bp_max_iter)
        except NotConvergedError:
            if not adapt:
                raise
            return None
        return (J_new, h_new, m_new, C_new, M_new, it_new, fit_error(m_data, C_data, m_new, C_new),
                _objective(lnZ_new, J_new, h_new, m_data, C_data))

    while delta >= target and tries < max_steps:
        tries += 1
        g = np.concatenate([m_data - m_mod, (C_data - C_mod)[iu]])  # minus the gradient of L
        if newton:  # Armijo backtracking on L from a full Newton step
            step, r, new = np.linalg.lstsq(exact_fisher(J, h) + 1e-10 * np.eye(len(g)), g, rcond=None)[0], 1.0, None
            while r >= 1e-4:
                new = attempt(step, r)
                if new[7] <= loss - 1e-4 * r * float(g @ step):
                    break
                r /= 2
            else:
                break  # no Newton step lowers L: the optimum, to machine precision
        else:
            new = attempt(g, rate)
            if adapt and (new is None or not new[6] < delta):  # the Delta rule: undo, retry at half the rate
                rate /= 2
                if rate < eta * 1e-4:  # no step of any useful size lowers Delta: stalled
                    break
                continue
        J, h, m_mod, C_mod, M, it, delta, loss = new
        deltas.append(delta)
        iters.append(it)
        rate = min(eta, rate * 1.1) if adapt and not newton else rate
        if on_step is not None:
            on_step(len(deltas) - 1, delta, rate)
    return FitResult(J, h, m_mod, C_mod, deltas, iters, delta < target, M)


# ---------------------------------------------------------------- entropy landscape
def s_upper(d):
    """The entropy bound s_ub(d) = -d ln d - (1 - d) ln(1 - d) (0 at d = 0 and 1)."""
    d = np.clip(np.asarray(d, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = -np.where(d > 0, d * np.log(d), 0.0) - np.where(d < 1, (1 - d) * np.log1p(-d), 0.0)
    return out


@dataclass
class LandscapePoint:
    x: float
    q: float
    d: float
    free_energy: float  # f = F / N (with the x term)
    energy: float  # e = E / N (without it)
    entropy: float  # s = -f + e - x q
    converged: bool
    residual: float
    iterations: int
    stable: bool = True  # the fixed point attracts the iteration (`bp_attracts`; False if not converged)


def landscape_point(J, h, reference, x, messages=None, **bp) -> tuple[LandscapePoint, np.ndarray]:
    """The fixed point at coupling field x towards `reference` (+-1), and its messages. Its
    stability is recorded on the point (no warning per point: the landscape counts them)."""
    n = h.shape[0]
    ref = np.asarray(reference, dtype=np.float64)
    r = belief_propagation(J, h + x * ref, messages, strict=False, check_stability=False, **bp)
    q = float(r.m @ ref / n)
    energy = float(-(J[np.triu_indices(n, 1)] * r.C[np.triu_indices(n, 1)]).sum() - h @ r.m)
    f, e = r.free_energy / n, energy / n
    stable = r.converged and bp_attracts(J, h + x * ref, r.messages, bp.get("damping", 0.5), bp.get("tol", 1e-9))
    return LandscapePoint(x, q, (1 - q) / 2, f, e, -f + e - x * q, r.converged, r.residual, r.iterations,
                          bool(stable)), r.messages


def sweep(J, h, reference, xs, messages=None, **bp) -> tuple[list[LandscapePoint], np.ndarray]:
    """Landscape points along `xs` in the given order, each warm-started from the previous one,
    the first from `messages` (default: M[i, j] = tanh(h_i + x_0 s*_i)); and the last messages,
    from which a sweep back starts (that is how hysteresis shows)."""
    out, M = [], messages
    for x in xs:
        p, M = landscape_point(J, h, reference, float(x), M, **bp)
        out.append(p)
    return out, M


def exact_landscape_point(J, h, reference, x) -> LandscapePoint:
    """The same quantities by enumeration (N <= 20)."""
    n = h.shape[0]
    ref = np.asarray(reference, dtype=np.float64)
    ex = exact_moments(J, h + x * ref)
    q = float(ex.m @ ref / n)
    iu = np.triu_indices(n, 1)
    e = float(-(J[iu] * ex.C[iu]).sum() - h @ ex.m) / n
    f = ex.free_energy / n
    return LandscapePoint(x, q, (1 - q) / 2, f, e, -f + e - x * q, True, 0.0, 0)
