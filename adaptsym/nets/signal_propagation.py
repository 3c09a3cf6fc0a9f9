"""Signal propagation at initialisation (the mean-field theory of deep networks, Bahri et al.'s
review, sec. 3): the length map and chi_1 of the bias-free ReLU networks, measured and predicted.

Weights are drawn W ~ N(0, sigma_w^2 / fan_in) (He initialisation is sigma_w^2 = 2). For weight
layer l with pre-activations z^l:
  q^l   = mean of (z^l)^2 over examples, units and pixels (the length of the signal);
  chi_1 = E ||J v||^2 / n_l, J = d z^l / d z^(l-1), v ~ N(0, I) (n_l outputs per example),
          the mean squared singular value of the layer-to-layer Jacobian.
Closed forms for ReLU (q^(l-1) the previous layer's measured length):
  after a ReLU: q^l = (sigma_w^2 / 2) q^(l-1) * pad,   chi_1 = (sigma_w^2 / 2) * pad;
  on the input: q^1 = sigma_w^2 * mean(x^2) * pad;
where pad = 1 for linear layers and, for a 3x3 convolution with zero padding on an H x W map,
pad = (3H - 2)(3W - 2) / (9 H W), the mean fraction of kernel taps that fall inside the map.
After a max-pool no closed form is given (the maximum of correlated neighbours): NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.func import jvp

from .models import forward


@dataclass
class LayerSignal:
    layer: int  # weight layer index
    kind: str  # "linear" or "conv"
    after: str  # "input", "relu" or "pool": what feeds the layer
    q: float
    q_theory: float
    chi1: float  # NaN for the first layer (no previous pre-activation)
    chi1_theory: float


def init_weights(shapes, sigma_w: float, generator: torch.Generator, dtype=torch.float64) -> list[torch.Tensor]:
    return [torch.randn(s, generator=generator, dtype=dtype) * sigma_w / float(np.sqrt(np.prod(s[1:])))
            for s in shapes]


def _pad_factor(kind: str, a: torch.Tensor) -> float:
    if kind != "conv":
        return 1.0
    h, w = a.shape[-2:]
    return (3 * h - 2) * (3 * w - 2) / (9 * h * w)


def _segments(plan):
    """For each weight op: (index in plan, what feeds it, index of the previous weight op or None)."""
    out, prev, last_weight = [], "input", None
    for i, op in enumerate(plan):
        if op[0] in ("conv", "linear"):
            out.append((i, prev, last_weight))
            last_weight = i
            prev = "none"
        elif op[0] == "relu":
            prev = "relu"
        elif op[0] == "pool":
            prev = "pool"
    return out


def _apply(ops, weights, a):
    """The ops of a plan applied to `a` (the same operations as `models.forward`)."""
    for op in ops:
        kind = op[0]
        if kind == "conv":
            a = torch.nn.functional.conv2d(a, weights[op[1]], padding=1)
        elif kind == "linear":
            a = a @ weights[op[1]].T
        elif kind == "relu":
            a = torch.relu(a)
        elif kind == "pool":
            a = torch.nn.functional.max_pool2d(a, 2)
        elif kind == "flatten":
            a = a.reshape(a.shape[0], -1)
    return a


def measure(plan, weights, x: torch.Tensor, sigma_w: float, probes: int = 4,
            generator: torch.Generator | None = None) -> list[LayerSignal]:
    """q^l and chi_1 of every weight layer on inputs `x`, with the closed forms beside them."""
    trace: list = []
    with torch.no_grad():
        forward(plan, weights, x, trace=trace)
    inputs = [a for _, a in trace]  # inputs[i]: the input of plan op i; inputs[len(plan)]: the output
    out = []
    q_prev = None
    for i, after, prev_i in _segments(plan):
        kind = plan[i][0]
        z = inputs[i + 1]  # the layer's pre-activation
        pad = _pad_factor(kind, inputs[i])
        q = float((z ** 2).mean())
        s2 = sigma_w ** 2
        if after == "input":
            q_th = s2 * float((inputs[i] ** 2).mean()) * pad
        elif after == "relu":
            q_th = s2 / 2 * q_prev * pad
        else:
            q_th = float("nan")
        chi, chi_th = float("nan"), float("nan")
        if prev_i is not None:
            z_prev = inputs[prev_i + 1]
            fn = lambda t: _apply(plan[prev_i + 1:i + 1], weights, t)  # noqa: E731
            acc = 0.0
            for _ in range(probes):
                v = torch.randn(z_prev.shape, generator=generator, dtype=z_prev.dtype)
                _, jv = jvp(fn, (z_prev,), (v,))
                acc += float((jv ** 2).sum()) / jv[0].numel() / jv.shape[0]
            chi = acc / probes
            chi_th = s2 / 2 * pad if after == "relu" else float("nan")
        out.append(LayerSignal(plan[i][1], kind, after, q, q_th, chi, chi_th))
        q_prev = q
    return out


FIELDS = ("q", "q_theory", "chi1", "chi1_theory")


def q_map(plan, shapes, input_shape, sigmas, draws: int = 8, n_examples: int = 32, probes: int = 2,
          seed: int = 0) -> dict:
    """Each field of `LayerSignal`, averaged over `draws` weight draws (the theory is an average
    over weights), as arrays (sigma, layer); plus the standard error of q / q_theory and of
    chi_1 / chi_1_theory over the draws, the layer kinds and what feeds each layer."""
    g = torch.Generator().manual_seed(seed)
    vals = {k: np.zeros((len(sigmas), draws, len(shapes))) for k in FIELDS}
    kinds = after = None
    for si, sw in enumerate(sigmas):
        for d in range(draws):
            w = init_weights(shapes, sw, g)
            x = torch.randn(n_examples, *input_shape, generator=g, dtype=torch.float64)
            res = measure(plan, w, x, sw, probes=probes, generator=g)
            kinds, after = [r.kind for r in res], [r.after for r in res]
            for k in FIELDS:
                vals[k][si, d] = [getattr(r, k) for r in res]
    with np.errstate(invalid="ignore"):
        rq = vals["q"] / vals["q_theory"]
        rc = vals["chi1"] / vals["chi1_theory"]
    out = {k: v.mean(1) for k, v in vals.items()}
    out.update({"q_ratio": rq.mean(1), "q_ratio_se": rq.std(1, ddof=1) / np.sqrt(draws),
                "chi1_ratio": rc.mean(1), "chi1_ratio_se": rc.std(1, ddof=1) / np.sqrt(draws),
                "kinds": kinds, "after": after, "sigmas": np.asarray(sigmas, dtype=float)})
    return out
