"""A toy observable for tests/test_registry.py: one module (settings, measure, figure), registered
by one line in the test: the per-layer weight norms of the checkpoint, times a configured scale."""

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from adaptsym.observables.observation import Context, Observation


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = Field(default=1.0, gt=0)  # multiplies every norm


def measure(ctx: Context) -> Observation:
    scale = ctx.cfg.measure.toy.scale
    norms = np.array([float(w.detach().double().norm()) for w in ctx.model.params()])
    obs = Observation("toy")
    obs.add("scaled_norms", scale * norms, ["layer"])
    obs.scalars["total"] = float(scale * np.sqrt(np.sum(norms**2)))
    return obs


def figure(reader, fig):
    epochs, norms = reader.series("toy", "scaled_norms")
    ax = fig.subplots()
    for layer in range(len(norms[0])):
        ax.plot(epochs, [n[layer] for n in norms], "o-", label=f"layer {layer}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("scaled weight norm")
    ax.legend(fontsize=7)
    ax.set_title("toy: per-layer weight norms")
