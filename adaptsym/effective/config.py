"""The effective-model study's configuration (`configs/effective-model-demo.yaml`).

Shared `data`, `network`, `collect`, `fit` and `landscape` sections, and `scenarios`, each of which
may override `network` fields, the training-set size and the accuracy threshold (the paper's
under-parametrised, over-parametrised and shallow cases). Every section is a
`adaptsym.config.StrictModel`, like the measurement config: unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from ..config import ConfigError, StrictModel, format_validation_error
from .binary_net import BinaryNetSpec


class PCADataSpec(StrictModel):
    name: Literal["digits-pca", "mnist-pca"] = "digits-pca"
    root: str | None = None  # mnist-pca: folder with the four MNIST IDX files (.gz or not)
    components: int = Field(default=20, gt=0)
    test_fraction: float = Field(default=0.2, gt=0, lt=1)  # digits only (MNIST has its own split)


class NetworkSpec(StrictModel):
    widths: list[int] = Field(default_factory=lambda: [20, 15, 15, 10])
    epochs: int = Field(default=20, gt=0)
    batch_size: int = Field(default=100, gt=0)  # minibatch of training images
    lr: float = Field(default=0.3, gt=0)  # Adam
    l2: float = Field(default=1e-5, ge=0)  # on the fields theta
    init_std: float = Field(default=1.0, gt=0)  # Gaussian initial fields
    samples: int = Field(default=10, gt=0)  # binary networks drawn per trained network; best kept

    def spec(self) -> BinaryNetSpec:
        return BinaryNetSpec(widths=tuple(self.widths), epochs=self.epochs, batch_size=self.batch_size,
                             lr=self.lr, l2=self.l2, init_std=self.init_std, samples=self.samples)


class ScenarioSpec(StrictModel):
    configurations: int = Field(gt=0)  # accepted configurations to collect
    threshold: float = Field(default=0.8, ge=0, le=1)  # test accuracy to accept a configuration
    train_examples: int | None = Field(default=None, gt=0)  # first n training images; null = all
    network: dict[str, Any] = Field(default_factory=dict)  # overrides of the shared network section


class CollectSpec(StrictModel):
    batch: int = Field(default=128, gt=0)  # networks trained side by side in one task
    actors: int = Field(default=2, gt=0)
    in_flight: int = Field(default=2, gt=0)  # tasks queued per actor
    # Stop with an error after this many tasks in a row in which no network passed.
    max_failed_tasks: int = Field(default=10, gt=0)


class GibbsSpec(StrictModel):
    """Boltzmann learning on Gibbs-sampled moments (`adaptsym.effective.gibbs`), after the BP fit."""

    chains: int = Field(default=4000, gt=1)  # persistent chains, started from ensemble configurations
    steps: int = Field(default=400, gt=0)  # learning steps, one sweep each
    eta: float = Field(default=0.05, gt=0)  # rate eta / (1 + step / decay)
    decay: float = Field(default=100.0, gt=0)
    average: float = Field(default=0.5, ge=0, lt=1)  # the model: mean parameters over this last fraction of steps
    eval_sweeps: int = Field(default=40, gt=1)  # sweeps averaged for the reported Delta


class FitSpec(StrictModel):
    # Model moments: 'bp' (belief propagation: fast, biased on dense loopy models, so the fit can stall
    # above the target) or 'gibbs' (the BP fit, then Boltzmann learning on Gibbs-sampled moments)
    moments: Literal["bp", "gibbs"] = "bp"
    gibbs: GibbsSpec = Field(default_factory=GibbsSpec)
    eta: float = Field(default=0.5, gt=0)  # Boltzmann learning rate
    target: float = Field(default=0.01, gt=0)  # stop at Delta < target (eq. 6)
    max_steps: int = Field(default=300, gt=0)
    damping: float = Field(default=0.5, ge=0, lt=1)  # of belief propagation
    bp_tol: float = Field(default=1e-8, gt=0)
    bp_max_iter: int = Field(default=2000, gt=0)


class SamplingSpec(StrictModel):
    """The landscape by parallel tempering (`adaptsym.effective.tempering`), beside BP's."""

    chains: int = Field(default=8, ge=2)  # independent copies of the ladder: the error bars
    sweeps: int = Field(default=1000, gt=1)
    burn: int = Field(default=100, ge=0)
    lambda_steps: int = Field(default=16, gt=0)  # coupling rungs from the independent model (ln Z)


class LandscapeSpec(StrictModel):
    x_max: float = Field(default=3.0, gt=0)  # sweeps run x_max -> -x_max and back
    x_steps: int = Field(default=61, gt=2)
    references: int = Field(default=2, gt=0)  # per energy class (low, medium, high)
    parts: bool = True  # also the left boundary, interior and right boundary
    sampled: SamplingSpec | None = None  # also sample every landscape (None: BP only)


class EffectiveConfig(StrictModel):
    name: str = Field(default="effective-model", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    data: PCADataSpec = Field(default_factory=PCADataSpec)
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    collect: CollectSpec = Field(default_factory=CollectSpec)
    fit: FitSpec = Field(default_factory=FitSpec)
    landscape: LandscapeSpec = Field(default_factory=LandscapeSpec)
    scenarios: dict[str, ScenarioSpec]

    @model_validator(mode="after")
    def _check(self) -> "EffectiveConfig":
        if not self.scenarios:
            raise ValueError("list at least one scenario under 'scenarios'")
        for name in self.scenarios:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"scenario name {name!r}: use letters, digits, '-' and '_'")
            net = self.network_of(name)
            if net.widths[0] != self.data.components:
                raise ValueError(f"scenario {name}: the first width {net.widths[0]} must equal "
                                 f"data.components = {self.data.components}")
        return self

    def network_of(self, scenario: str) -> NetworkSpec:
        return NetworkSpec.model_validate({**self.network.model_dump(), **self.scenarios[scenario].network})


def load_effective_config(path: str | Path) -> EffectiveConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; see configs/effective-model-demo.yaml")
    try:
        return EffectiveConfig.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from None


def load_with_scenarios(path: str | Path, wanted: list[str] | None) -> tuple[EffectiveConfig, list[str]]:
    """The config and the scenarios to run (`wanted`, or all of them); unknown names are an error."""
    cfg = load_effective_config(path)
    scenarios = wanted or list(cfg.scenarios)
    unknown = [s for s in scenarios if s not in cfg.scenarios]
    if unknown:
        raise ConfigError(f"unknown scenario(s) {unknown}; the config has {list(cfg.scenarios)}")
    return cfg, scenarios
