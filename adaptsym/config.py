"""Run configuration: YAML files validated by pydantic models.

Every section forbids unknown keys; `load_config` turns pydantic's errors into one message per
problem that names the offending key and the keys or values that are allowed.
"""

from __future__ import annotations

import types
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import UserFacingError
from .registry import observables


class ConfigError(UserFacingError, ValueError):
    """A configuration file that cannot be used; the message says what to change."""


class StrictModel(BaseModel):
    """Unknown keys are an error, and so is assigning a value that does not validate."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


PoolOrWidth = Union[Annotated[int, Field(gt=0)], Literal["M"]]

# The paper's network (SPEC section 1): 10 convs + 2 linear = 12 weight layers.
VGG12_CONV: list = [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
VGG12_HIDDEN: list = [512]


class ModelSpec(StrictModel):
    """A bias-free ReLU network. `mlp`: hidden widths; `cnn`: 3x3 convs ('M' = 2x2 max-pool)
    then hidden linear widths; `vgg12`: the paper's VGG (conv/hidden are fixed)."""

    kind: Literal["mlp", "cnn", "vgg12"]
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default_factory=list)
    conv: list[PoolOrWidth] = Field(default_factory=list)
    width_multiplier: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _check_kind(self) -> "ModelSpec":
        if self.kind == "mlp" and self.conv:
            raise ValueError("an mlp has no 'conv' layers; use kind: cnn for convolutions")
        if self.kind == "cnn" and not self.conv:
            raise ValueError("a cnn needs a non-empty 'conv' list (widths and 'M' for max-pool)")
        if self.kind == "vgg12" and (self.conv or self.hidden):
            raise ValueError("vgg12 fixes its layers; set only 'width_multiplier'")
        return self

    def conv_widths(self) -> list:
        conv = VGG12_CONV if self.kind == "vgg12" else self.conv
        return [c if c == "M" else max(1, round(c * self.width_multiplier)) for c in conv]

    def hidden_widths(self) -> list[int]:
        hidden = VGG12_HIDDEN if self.kind == "vgg12" else self.hidden
        return [max(1, round(h * self.width_multiplier)) for h in hidden]


class TeacherSpec(StrictModel):
    """Synthetic data: Gaussian inputs labelled by a random bias-free teacher MLP (thresholded at its median)."""

    n_samples: int = Field(default=2048, gt=1)
    input_dim: int = Field(default=32, gt=0)
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [32])
    seed: int = 1234


class PatchSpec(StrictModel):
    """`photo-patches`: square crops of scikit-learn's two sample photographs, resized to 32x32."""

    n_samples: int = Field(default=4096, gt=1)  # patches in all (half from each photograph)
    min_side: int = Field(default=32, ge=8)  # crop side in pixels, drawn uniformly in [min_side, max_side]
    max_side: int = Field(default=128, ge=8)
    seed: int = 1234

    @model_validator(mode="after")
    def _sides(self) -> "PatchSpec":
        if self.min_side > self.max_side or self.max_side > 400:
            raise ValueError(f"need min_side <= max_side <= 400 (the photographs are 427 x 640), "
                             f"got {self.min_side} and {self.max_side}")
        return self


class TextureSpec(StrictModel):
    """`textures`: Gaussian colour textures with a natural-image spectrum, labelled by a weak dominant
    orientation (`adaptsym.nets.textures`; its Bayes error is exact)."""

    n_samples: int = Field(default=25_000, gt=1)  # images in all (training + test), half of each class
    # luminance power x (1 +- anisotropy cos 2 theta) in the band; the defaults' Bayes error is 0.093
    anisotropy: float = Field(default=0.4, gt=0, lt=1)
    band: tuple[float, float] = (2.0, 4.0)  # cycles per image: where the classes differ
    slope: float = Field(default=2.0, ge=0)  # power ~ 1 / (|k|^2 + k0^2)^(slope / 2)
    k0: float = Field(default=1.0, gt=0)
    chroma: tuple[float, float] = (0.3, 0.1)  # power of the red-green and blue-yellow channels (luminance 1)
    seed: int = 1234

    @model_validator(mode="after")
    def _band(self) -> "TextureSpec":
        if not 0 < self.band[0] <= self.band[1]:
            raise ValueError(f"band must be 0 < low <= high (cycles per image), got {list(self.band)}")
        if min(self.chroma) <= 0:
            raise ValueError(f"chroma powers must be > 0, got {list(self.chroma)}")
        return self


class DataSpec(StrictModel):
    name: Literal["digits-binary", "cifar10-binary", "teacher", "photo-patches", "textures"] = "digits-binary"
    # cifar10-binary: directory that holds `cifar-10-batches-py/` (or that folder itself).
    root: str | None = None
    # Classes labelled +1 (the rest -1). digits: >=5; CIFAR-10: 5-9 (SPEC section 1).
    # photo-patches ignores it: flower = +1, china = -1.
    positive_classes: list[int] = Field(default_factory=lambda: [5, 6, 7, 8, 9])
    # Held-out fraction for data sets without an official split (digits, teacher).
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    # Optional subsets (first n after the seeded shuffle); null = all.
    n_train: int | None = Field(default=None, gt=0)
    n_test: int | None = Field(default=None, gt=0)
    teacher: TeacherSpec = Field(default_factory=TeacherSpec)
    patches: PatchSpec = Field(default_factory=PatchSpec)
    textures: TextureSpec = Field(default_factory=TextureSpec)


class TrainSpec(StrictModel):
    epochs: int = Field(default=10, ge=0)
    batch_size: int = Field(default=64, gt=0)
    lr: float = Field(default=0.01, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    # Epochs at which a checkpoint is kept (0 = at initialisation).
    checkpoints: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [0])

    @model_validator(mode="after")
    def _check_schedule(self) -> "TrainSpec":
        bad = [e for e in self.checkpoints if e > self.epochs]
        if bad:
            raise ValueError(f"checkpoint epochs {bad} exceed epochs={self.epochs}")
        self.__dict__["checkpoints"] = sorted(set(self.checkpoints))
        return self


class DesignSpec(StrictModel):
    """Which Hessian entries to sample (SPEC section 4)."""

    kind: Literal["block", "pairs"] = "block"
    rows: int = Field(default=64, gt=0)  # |I| for block
    cols: int = Field(default=32, gt=0)  # |J| for block
    n_pairs: int = Field(default=1024, gt=0)  # K for pairs
    # Stratify by layer: rows and columns are spread evenly over the weight layers.
    stratify: bool = True


class SpectrumSpec(StrictModel):
    """Stochastic Lanczos quadrature of the pool Hessian (Fig 8a)."""

    starts: int = Field(default=4, gt=0)  # Rademacher start vectors
    steps: int = Field(default=64, gt=1)  # Lanczos steps per start
    grid: int = Field(default=401, gt=10)  # points of the smoothed density
    sigma_rel: float = Field(default=0.01, gt=0)  # Gaussian width / spectral range
    # The Lanczos basis (steps x N): held in float32 ("operator": the operator's dtype), at most
    # basis_budget_mb of it in RAM per process, the rest spilled to a temporary file in spill_dir.
    basis_dtype: Literal["float32", "operator"] = "float32"
    basis_budget_mb: float = Field(default=1024, ge=0)
    spill_dir: str | None = None


class CircuitSpec(StrictModel):
    """Basis-circuit samples (Fig 3b)."""

    examples: int = Field(default=16, gt=0)  # pool examples to sample paths on
    paths: int = Field(default=256, gt=0)  # paths per example and mode


class BlockSpectraSpec(StrictModel):
    """Spectra and traces of diagonal blocks of the pool Hessian (`block_spectra`, opt-in)."""

    starts: int = Field(default=2, gt=0)  # Rademacher starts per block
    steps: int = Field(default=32, gt=1)  # Lanczos steps per start (capped at the block size)
    samples: int = Field(default=8, gt=1)  # Hutchinson samples per block for its trace
    grid: int = Field(default=201, gt=10)  # points of each smoothed density
    sigma_rel: float = Field(default=0.01, gt=0)
    # Layer pairs [l, m] whose joint diagonal block [[H_ll, H_lm], [H_ml, H_mm]] is also measured.
    pairs: list[tuple[int, int]] = Field(default_factory=list)


class HessianEntriesSpec(StrictModel):
    """Sampled Hessian entries and their bootstrap statistics (SPEC section 4; `hessian_entries`)."""

    minibatch: int | None = Field(default=None, gt=0)  # s; null = training batch size
    design: DesignSpec = Field(default_factory=DesignSpec)
    replicates: int = Field(default=1000, gt=1)  # B bootstrap replicates
    fdr_q: float = Field(default=0.05, gt=0, lt=1)
    # Non-zero test: 'fdr' (studentised product sums over the pool, false discovery rate control) or
    # 'threshold' (|value| >= threshold).
    nonzero: Literal["fdr", "threshold"] = "fdr"
    # p-value of the studentised sum: 'normal' tail, or 'bound' (3.18 x normal: exact for symmetric products).
    pvalue: Literal["normal", "bound"] = "normal"
    # 'bh' Benjamini-Hochberg, or 'by' Benjamini-Yekutieli (any dependence; much less power).
    fdr: Literal["bh", "by"] = "bh"
    threshold: float = Field(default=0.1, gt=0)  # |value| threshold when nonzero=threshold
    # The active reading's correlation test: 'pairs' (products of differences of seeded pairs of
    # active examples: sign-symmetric under independence, whatever the law of the values) or
    # 'studentised' (products of entries standardised over the active examples: needs about half the
    # active examples, valid only for nearly symmetric values; docs/statistics.md).
    active_test: Literal["pairs", "studentised"] = "pairs"
    # The marginal reading counts a coupling that only the activity mask carries (non-zero means over the
    # active examples) among entries whose values over the active examples have |skewness| <= mild_skew.
    mild_skew: float = Field(default=0.5, ge=0)
    z_cut: float = Field(default=0.15, gt=0)  # Fig 7b: fraction of |mean/std| below this
    tuples_per_entry: int = Field(default=64, gt=0)  # sampled triples/quadruples per entry
    corr_block: int = Field(default=1024, gt=0)  # block edge of the streaming K x K work
    submatrix: int = Field(default=100, gt=1)  # stored random correlation submatrix edge
    mardia_sets: int = Field(default=8, ge=0)
    mardia_dim: int = Field(default=8, gt=1)
    uncertainty_resamples: int = Field(default=200, gt=1)  # pool resamples of the interval statistics
    column_chunk: int = Field(default=8, gt=0)  # columns per per-example HVP chunk


# Keys that sat directly under `measure:` before each observable had its own section; a config
# that still uses them loads (`load_config` warns with the new place).
LEGACY_ENTRY_KEYS = tuple(HessianEntriesSpec.model_fields)


def nest_legacy_keys(measure: Any) -> tuple[Any, list[str]]:
    """A `measure` mapping with the keys of the old flat layout moved under `hessian_entries`, and
    the keys moved. Raises ValueError for a key given in both places."""
    if not isinstance(measure, dict):
        return measure, []
    moved = [k for k in LEGACY_ENTRY_KEYS if k in measure]
    if not moved:
        return measure, []
    out = dict(measure)
    section = dict(out.get("hessian_entries") or {})
    clash = [k for k in moved if k in section]
    if clash:
        raise ValueError(f"{clash} given both under measure and under measure.hessian_entries; "
                         f"keep them only under measure.hessian_entries")
    section.update({k: out.pop(k) for k in moved})
    out["hessian_entries"] = section
    return out, moved


def merge_sections(base: dict, update: dict) -> dict:
    """`base` with `update` laid over it, section by section (nested mappings merge, values replace)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge_sections(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class MeasureSpec(StrictModel):
    """Measurement of the observables at each checkpoint (SPEC sections 3 and 4): the settings shared
    by the observables, then one section per registered observable that has settings
    (`adaptsym.registry`: `hessian_entries`, `spectrum`, `circuits`, `block_spectra`, and any other
    registered). Each section is validated by its observable's settings model; `observables` lists
    the registered names to measure (default: those registered with default=True)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    observables: list[str] | None = None
    pool_size: int = Field(default=512, gt=1)  # n pool examples from the training set
    # 'all': the first pool_size of a seeded permutation of the training set, the same at every
    # checkpoint; 'active': the first pool_size of those with margin < 1 at each checkpoint (the
    # examples that carry the Hessian), so the pool changes with the checkpoint; 'fixed-active':
    # exactly pool_active of those and pool_size - pool_active with margin >= 1, so that every model
    # is measured with the same A and n, the same power (the scale sweep)
    pool: Literal["all", "active", "fixed-active"] = "all"
    pool_active: int | None = Field(default=None, gt=1)  # A, for pool: fixed-active
    example_chunk: int = Field(default=256, gt=0)  # examples per per-example HVP chunk
    # Pool HVPs (spectrum) reuse each chunk's first-order graph while all of them fit this many MB
    # per process; above it they recompute it (forward-over-reverse), holding no graph.
    hvp_graph_budget_mb: float = Field(default=1024, ge=0)
    dtype: Literal["float32", "float64"] = "float64"
    checkpoints: list[int] | None = None  # null = every checkpoint of the run
    histogram_bins: int = Field(default=128, gt=1)  # weights and gradients (fixed per-layer bins)

    @model_validator(mode="before")
    @classmethod
    def _legacy_layout(cls, data: Any) -> Any:
        return nest_legacy_keys(data)[0]  # `load_config` tells the author of a YAML file

    @model_validator(mode="after")
    def _sections(self) -> "MeasureSpec":
        """Each registered observable's section through its settings model; the observable names."""
        registered = observables()
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        sections = {name: o.settings for name, o in registered.items() if o.settings is not None}
        unknown = [k for k in extra if k not in sections]
        if unknown:
            allowed = ", ".join(list(type(self).model_fields) + list(sections))
            raise ValueError(f"measure: unknown key {unknown[0]!r}; allowed keys here: {allowed}")
        problems = []
        for name, settings in sections.items():
            value = extra.get(name, {})
            if isinstance(value, settings):
                continue
            if not isinstance(value, dict):
                problems.append(f"measure.{name}: expected a mapping of {name} settings (got {value!r})")
                continue
            try:
                extra[name] = settings.model_validate(value)
            except ValidationError as exc:
                problems += [_format_error(e, settings, f"measure.{name}") for e in exc.errors()]
        if problems:
            raise ValueError("\n  - ".join(problems))
        if self.observables is None:
            self.__dict__["observables"] = [name for name, o in registered.items() if o.default]
        missing = [n for n in self.observables if n not in registered]
        if missing:
            raise ValueError(f"measure.observables: unknown observable {missing[0]!r}; registered: "
                             f"{', '.join(registered)}")
        # the registry's order, the order they are measured in: a stored list compares equal whatever its order
        self.__dict__["observables"] = [n for n in registered if n in self.observables]
        if self.pool == "fixed-active" and self.pool_active is None:
            raise ValueError("measure.pool: fixed-active needs measure.pool_active (A, the number of pool examples "
                             "with margin < 1)")
        if self.pool != "fixed-active" and self.pool_active is not None:
            raise ValueError(f"measure.pool_active is only read with measure.pool: fixed-active (pool is {self.pool!r})")
        if self.pool_active is not None and self.pool_active > self.pool_size:
            raise ValueError(f"measure.pool_active={self.pool_active} exceeds measure.pool_size={self.pool_size}")
        return self


def current_layout(measure: Any) -> Any:
    """A stored `measure` section (a run's zarr attrs) in today's layout, so that a measurement
    written before the per-observable sections compares equal to the same settings now; anything
    that does not validate is returned unchanged (and so compares unequal)."""
    if not isinstance(measure, dict):
        return measure
    try:
        return MeasureSpec.model_validate(measure).model_dump(mode="json")
    except ValidationError:
        return measure


class RunConfig(StrictModel):
    name: str = Field(default="run", pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: DataSpec = Field(default_factory=DataSpec)
    models: dict[str, ModelSpec]
    train: TrainSpec = Field(default_factory=TrainSpec)
    measure: MeasureSpec = Field(default_factory=MeasureSpec)
    # Where result stores go. None: `<run dir>/results.zarr`. An s3:// URL (a bucket every Ray node
    # can write, credentials and endpoint from AWS_* variables): `<url>/<name>-<model>/results.zarr`,
    # checkpoints staying in the run directory (docs/distributed.md).
    results_url: str | None = None

    @field_validator("results_url")
    @classmethod
    def _results_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("s3://"):
            raise ValueError("give an s3://bucket/prefix URL, or leave results_url out to keep results in the "
                             "run directory (other object stores have no safe run lock here)")
        return v.rstrip("/") if v else v

    @field_validator("models")
    @classmethod
    def _names(cls, v: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
        if not v:
            raise ValueError("list at least one model under 'models'")
        for name in v:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"model name {name!r}: use letters, digits, '-' and '_'")
        return v

    def model_names(self) -> list[str]:
        return list(self.models)


# --------------------------------------------------------------------------- errors


def _model_class(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _descend(annotation: Any, key: Any) -> Any:
    """The annotation reached from `annotation` by one step `key` of an error location."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _descend(typing.get_args(annotation)[0], key)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is type(None):
                continue
            found = _descend(arg, key)
            if found is not None:
                return found
        return None
    if origin in (list, tuple) and isinstance(key, int):
        return typing.get_args(annotation)[0]
    if origin is dict:
        return typing.get_args(annotation)[1]
    cls = _model_class(annotation)
    if cls is not None and isinstance(key, str) and key in cls.model_fields:
        return cls.model_fields[key].annotation
    return None


def _format_error(err: dict, root: type[BaseModel] | None = None, prefix: str = "") -> str:
    loc = err["loc"]
    where = ".".join([prefix] * bool(prefix) + [str(p) for p in loc]) or "(top level)"
    if err["type"] == "extra_forbidden":
        ann: Any = root or RunConfig
        for key in loc[:-1]:
            ann = _descend(ann, key)
        cls = _model_class(ann)
        allowed = ", ".join(cls.model_fields) if cls else "?"
        parent = ".".join([prefix] * bool(prefix) + [str(p) for p in loc[:-1]]) or "(top level)"
        return f"{parent}: unknown key {loc[-1]!r}; allowed keys here: {allowed}"
    if err["type"] == "missing":
        return f"{where}: required key is missing"
    msg = err["msg"]
    if err["type"] == "value_error" and msg.startswith("Value error, measure"):
        return msg[len("Value error, "):]  # a section's own errors, already located
    if "input" in err and err["type"] not in ("value_error", "assertion_error"):
        msg += f" (got {err['input']!r})"
    return f"{where}: {msg}"


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    lines = [f"invalid {source}:"] + ["  - " + _format_error(e) for e in exc.errors()]
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config") -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found; see configs/ for examples")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("measure"), dict):
        moved = [k for k in LEGACY_ENTRY_KEYS if k in data["measure"]]
        if moved:
            warnings.warn(f"{path}: measure.{moved[0]} (and {len(moved) - 1} more) moved to measure.hessian_entries; "
                          f"the file loads as it is, but write\nmeasure:\n  hessian_entries:\n"
                          + "".join(f"    {k}: ...\n" for k in moved), FutureWarning, stacklevel=2)
    return parse_config(data, source=str(path))


def config_to_dict(cfg: RunConfig) -> dict:
    return cfg.model_dump(mode="json")
