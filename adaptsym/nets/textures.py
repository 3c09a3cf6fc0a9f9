"""`textures`: a hard offline task at the paper's input shape (3x32x32, labels +-1), with an exact
Bayes error.

Each image is a stationary Gaussian colour texture with a natural-image power spectrum,
P(k) ~ 1 / (|k|^2 + k0^2)^(slope/2) (slope 2: the 1/f amplitude spectrum of natural images), in three
opponent channels (luminance, red-green, blue-yellow, with powers 1 and `chroma`) mixed into RGB
by an orthonormal matrix. The label is the texture's dominant orientation: in the band
`band[0] <= |k| <= band[1]` (cycles per image) class y has its luminance power multiplied by
1 + y * anisotropy * cos(2 theta_k), theta_k the angle of the frequency: class +1 has more energy
in horizontal frequencies (vertical structure), class -1 in vertical ones. The colour channels
carry no label, and nothing else tells the classes apart.

Why it stays hard: the two classes overlap (the Bayes error below is > 0), the cue is a weak
second-order one spread over a band of frequencies, and no two images share a pixel, so a network
can only fit its training set by memorising thousands of examples one by one.

Bayes error, exactly. The fields are periodic, so their covariance is diagonal in the 2-D DFT
basis: x'Sigma_y^-1 x = (1/M) sum_k |x_k|^2 / S_y(k) (M = 1024 pixels, numpy's unnormalised DFT).
The map (kx, ky) -> (ky, kx) exchanges S_+ and S_-, so both classes have the same determinant, and
the Bayes rule (equal priors) is the sign of
    Q(x) = sum_{c,k} |x_{c,k}|^2 (1/S_-(c,k) - 1/S_+(c,k)),
a homogeneous quadratic, which a bias-free ReLU network can approach. Under class y, Q is a
weighted sum of independent chi-square variables (one per conjugate pair of frequencies, chi^2_2,
and one per self-conjugate frequency, chi^2_1), so P(error) = P(Q < 0 | y = +1) (both classes by
the same symmetry) follows from Gil-Pelaez's inversion of its characteristic function
(`bayes_error`), checked against the Bayes rule applied to generated images (tests).

Images are generated in blocks of 1,000, each from its own seeded stream
(SeedSequence([seed, block])), so the first n images do not depend on how many are drawn.
Classes alternate, image i having y = +1 for even i; the loader shuffles them.
"""

from __future__ import annotations

import numpy as np
from scipy import integrate

SIDE = 32
BLOCK = 1000
# rows: the opponent directions (luminance, red-green, blue-yellow) in RGB, orthonormal
OPPONENT = np.array([[1, 1, 1] / np.sqrt(3), [1, -1, 0] / np.sqrt(2), [1, 1, -2] / np.sqrt(6)])


def frequencies() -> tuple[np.ndarray, np.ndarray]:
    """(radius, angle) of every DFT frequency of a 32x32 image, in cycles per image; rows ky, columns kx."""
    f = np.fft.fftfreq(SIDE, d=1.0 / SIDE)
    ky, kx = np.meshgrid(f, f, indexing="ij")
    return np.hypot(kx, ky), np.arctan2(ky, kx)


def spectra(spec) -> tuple[np.ndarray, np.ndarray]:
    """(S_+, S_-): the power of every opponent channel and frequency under each class, (3, 32, 32)."""
    r, theta = frequencies()
    base = (r**2 + spec.k0**2) ** (-spec.slope / 2)
    in_band = (r >= spec.band[0]) & (r <= spec.band[1])
    tilt = np.zeros((3, SIDE, SIDE))
    tilt[0] = spec.anisotropy * np.cos(2 * theta) * in_band  # luminance only: colour carries no label
    power = np.array([1.0, *spec.chroma])[:, None, None]
    return power * base * (1 + tilt), power * base * (1 - tilt)


def generate(spec, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n images (n, 3, 32, 32) float32 in RGB and their labels (+1 for even i, -1 for odd i)."""
    s_plus, s_minus = spectra(spec)
    amp = {1.0: np.sqrt(s_plus), -1.0: np.sqrt(s_minus)}
    y = np.where(np.arange(n) % 2 == 0, 1.0, -1.0).astype(np.float32)
    x = np.empty((n, 3, SIDE, SIDE), dtype=np.float32)
    for b in range(-(-n // BLOCK)):
        lo, hi = b * BLOCK, min(n, (b + 1) * BLOCK)
        rng = np.random.default_rng(np.random.SeedSequence([spec.seed, b]))
        white = rng.standard_normal((BLOCK, 3, SIDE, SIDE))[: hi - lo]
        a = np.where(y[lo:hi, None, None, None] > 0, amp[1.0], amp[-1.0])
        opp = np.fft.ifft2(a * np.fft.fft2(white)).real
        x[lo:hi] = np.einsum("oc,nohw->nchw", OPPONENT, opp)
    return x, y


def bayes_statistic(spec, x: np.ndarray) -> np.ndarray:
    """Q(x) for images in RGB (n, 3, 32, 32): the Bayes rule says +1 where Q > 0."""
    s_plus, s_minus = spectra(spec)
    opp = np.einsum("oc,nchw->nohw", OPPONENT, np.asarray(x, dtype=np.float64))
    return (np.abs(np.fft.fft2(opp)) ** 2 * (1 / s_minus - 1 / s_plus)).sum(axis=(1, 2, 3))


def _chi_square_terms(spec) -> tuple[np.ndarray, np.ndarray]:
    """Q under class +1 as sum_j lam_j chi^2_{nu_j}: (lam, nu) over the independent real modes."""
    s_plus, s_minus = spectra(spec)
    lam_full = s_plus * (1 / s_minus - 1 / s_plus)  # E|x_k|^2 = M S_+(k); the M drops out of the sign
    idx = np.arange(SIDE)
    self_conj = ((-idx) % SIDE == idx)
    sc = self_conj[:, None] & self_conj[None, :]  # (0,0), (0,16), (16,0), (16,16)
    lam, nu = [], []
    for c in range(3):
        # a conjugate pair k, -k: the two terms are equal, 2 |x_k|^2 = 2 S (chi^2_2 / 2) -> weight lam, 2 dof
        # (counting the pair once with weight 2 x lam / 2); a self-conjugate k: |x_k|^2 = S chi^2_1
        lam.append(lam_full[c][sc]), nu.append(np.ones(sc.sum()))
        seen = np.zeros((SIDE, SIDE), dtype=bool)
        for i in range(SIDE):
            for j in range(SIDE):
                if sc[i, j] or seen[i, j]:
                    continue
                seen[i, j] = seen[(-i) % SIDE, (-j) % SIDE] = True
                lam.append([lam_full[c, i, j]]), nu.append([2.0])
    return np.concatenate(lam), np.concatenate(nu)


def bayes_error(spec) -> float:
    """P(Q < 0 | y = +1) = the Bayes error (equal priors), by Gil-Pelaez inversion:
    P(Q < 0) = 1/2 - (1/pi) int_0^inf Im phi(t) / t dt, phi(t) = prod_j (1 - 2 i lam_j t)^(-nu_j / 2)."""
    lam, nu = _chi_square_terms(spec)
    keep = lam != 0  # frequencies outside the band carry no information
    lam, nu = lam[keep] / np.abs(lam).max(), nu[keep]  # the sign of Q does not depend on its scale
    if not len(lam):
        return 0.5

    def integrand(t: float) -> float:
        # log phi = -sum nu/2 log(1 - 2 i lam t): its argument and modulus
        z = 1 - 2j * lam * t
        arg = -(nu / 2 * np.angle(z)).sum()
        mod = np.exp(-(nu / 4 * np.log1p(4 * (lam * t) ** 2)).sum())
        return mod * np.sin(arg) / t

    val, _ = integrate.quad(integrand, 0, np.inf, limit=2000, epsabs=1e-12, epsrel=1e-10)
    return float(0.5 - val / np.pi)
