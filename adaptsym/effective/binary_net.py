"""Binary-weight networks trained by the mean-field method of Zou & Huang (their App. A, after
Shayer et al.), many at once: the ensemble that the effective model (`adaptsym.effective.model`)
is fitted to.

Each weight w in {-1, +1} has P(w = +1) = sigmoid(theta). Its mean is mu = tanh(theta / 2) and
its variance 1 - mu^2. A layer's pre-activation z_j = sum_i w_ij a_i is replaced by its Gaussian
approximation (local reparametrisation) z_j = m_j + v_j eps_j with m_j = sum_i mu_ij a_i,
v_j^2 = sum_i (1 - mu_ij^2) a_i^2 and eps_j ~ N(0, 1) drawn afresh for every minibatch. Hidden
activations are a = L-ReLU(z) / sqrt(N_{l-1}) with L-ReLU(z) = max(z, 0) + 0.1 min(z, 0); the
last layer's z goes through softmax into the cross-entropy. No biases. The fields theta are
trained by Adam on the cross-entropy plus `l2` * sum theta^2; autograd gives the gradient of
eqs. A3-A5 (eps is fixed within a minibatch).

After training, `samples` binary networks are drawn from each network's fields; the one with
the best test accuracy is kept if that accuracy reaches the threshold. A *task* trains
`batch` networks side by side (batched matrix products, each network with its own
initialisation, minibatch order and noise); everything in it is a function of (seed, task
index) alone, so a task gives the same bits on any worker (one thread; see `train_task`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

LEAK = 0.1
DTYPE = torch.float32


@dataclass(frozen=True)
class BinaryNetSpec:
    """Architecture and training of one binary network (the defaults are the paper's App. C,
    except `epochs` and `batch_size`, which suit the 1,437 training digits)."""

    widths: tuple[int, ...] = (20, 15, 15, 10)
    epochs: int = 20
    batch_size: int = 100
    lr: float = 0.3
    l2: float = 1e-5
    init_std: float = 1.0
    samples: int = 10

    @property
    def n_weights(self) -> int:
        return sum(a * b for a, b in zip(self.widths[:-1], self.widths[1:]))

    def layer_slices(self) -> list[slice]:
        """Positions of each layer's weights in the flat configuration (layer by layer, each
        layer's (fan_in, fan_out) matrix in C order)."""
        out, start = [], 0
        for a, b in zip(self.widths[:-1], self.widths[1:]):
            out.append(slice(start, start + a * b))
            start += a * b
        return out


def lrelu(z: torch.Tensor) -> torch.Tensor:
    return torch.where(z > 0, z, LEAK * z)


def mean_field_logits(thetas: list[torch.Tensor], x: torch.Tensor, eps: list[torch.Tensor]) -> torch.Tensor:
    """Logits of K mean-field networks. thetas[l]: (K, n_in, n_out); x: (K, B, n_0); eps[l]: (K, B, n_out)."""
    a = x
    for l, (theta, e) in enumerate(zip(thetas, eps)):
        mu = torch.tanh(theta / 2)
        m = torch.bmm(a, mu)
        v = torch.sqrt(torch.bmm(a * a, 1 - mu * mu) + 1e-12)
        z = m + v * e
        if l == len(thetas) - 1:
            return z
        a = lrelu(z) / np.sqrt(theta.shape[1])
    raise ValueError("no layers")


def binary_logits(weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits of K binary networks: weights[l] (K, n_in, n_out) in {-1, +1}; x (K, B, n_0) or (B, n_0)."""
    a = x if x.dim() == 3 else x.expand(weights[0].shape[0], *x.shape)
    for l, w in enumerate(weights):
        z = torch.bmm(a, w)
        if l == len(weights) - 1:
            return z
        a = lrelu(z) / np.sqrt(w.shape[1])
    raise ValueError("no layers")


def accuracy(weights: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(K,) test accuracy of K binary networks."""
    return (binary_logits(weights, x).argmax(-1) == y).double().mean(-1)


def flatten(weights: list[torch.Tensor]) -> torch.Tensor:
    """(K, N) flat configurations in `BinaryNetSpec.layer_slices` order."""
    return torch.cat([w.reshape(w.shape[0], -1) for w in weights], dim=1)


def unflatten(config: torch.Tensor, spec: BinaryNetSpec) -> list[torch.Tensor]:
    k = config.shape[0]
    return [config[:, s].reshape(k, a, b) for s, a, b in
            zip(spec.layer_slices(), spec.widths[:-1], spec.widths[1:])]


@dataclass
class TaskResult:
    """One task's networks: the kept configuration of every network (int8, K x N), its test
    accuracy, its seed (task seed, index in the task), and whether it passed the threshold."""

    task: int
    configs: np.ndarray
    accuracy: np.ndarray
    network_seed: np.ndarray
    passed: np.ndarray
    final_loss: float


def task_seed(seed: int, task: int) -> int:
    """The seed of task `task` of a collection with seed `seed` (independent streams per task)."""
    return int(np.random.SeedSequence([seed, task]).generate_state(1, dtype=np.uint64)[0] >> 1)


def train_task(spec: BinaryNetSpec, data: tuple, seed: int, task: int, batch: int, threshold: float) -> TaskResult:
    """Train `batch` networks of task `task` and keep one sampled binary configuration of each.

    `data` is (x_train, y_train, x_test, y_test) as float64/int64 tensors. Uses a private torch
    generator; the caller fixes torch's thread count (1 on workers) for bitwise-equal results.
    """
    xtr, ytr, xte, yte = data
    g = torch.Generator().manual_seed(task_seed(seed, task))
    dims = list(zip(spec.widths[:-1], spec.widths[1:]))
    thetas = [(spec.init_std * torch.randn(batch, a, b, generator=g, dtype=DTYPE)).requires_grad_()
              for a, b in dims]
    opt = torch.optim.Adam(thetas, lr=spec.lr)
    n = xtr.shape[0]
    steps_per_epoch = max(1, n // spec.batch_size)
    loss = torch.zeros(())
    for _ in range(spec.epochs):
        order = torch.argsort(torch.rand(batch, n, generator=g), dim=1)
        for s in range(steps_per_epoch):
            idx = order[:, s * spec.batch_size:(s + 1) * spec.batch_size]
            xb, yb = xtr[idx], ytr[idx]
            eps = [torch.randn(batch, idx.shape[1], b, generator=g, dtype=DTYPE) for _, b in dims]
            logits = mean_field_logits(thetas, xb, eps)
            ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1),
                                                   reduction="none").reshape(batch, -1).mean(1)
            loss = ce.sum() + spec.l2 * sum((t * t).sum() for t in thetas)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        best_acc = torch.full((batch,), -1.0, dtype=DTYPE)
        best = None
        for _ in range(spec.samples):
            ws = [torch.where(torch.rand(t.shape, generator=g, dtype=DTYPE) < torch.sigmoid(t), 1.0, -1.0)
                  .to(DTYPE) for t in thetas]
            acc = accuracy(ws, xte, yte)
            flat = flatten(ws)
            better = acc > best_acc
            best = flat if best is None else torch.where(better[:, None], flat, best)
            best_acc = torch.where(better, acc, best_acc)
    return TaskResult(task=task, configs=best.numpy().astype(np.int8), accuracy=best_acc.numpy(),
                      network_seed=np.array([task * batch + k for k in range(batch)], dtype=np.int64),
                      passed=(best_acc >= threshold).numpy(), final_loss=float(loss.detach()) / batch)
