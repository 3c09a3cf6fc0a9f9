"""The observables, by name: one registration each carries everything the service needs.

An `Observable` holds its name, its `measure(context) -> Observation` function, the settings
section it reads under `measure:` in a config (a pydantic model, or None), the report figures
drawn from its arrays, whether a config measures it by default, and its place in the order of
measurement. Each module of `adaptsym.observables` ends with its one registration,
`OBSERVABLE = Observable(...)`; the package registers every one it holds when first imported
(`observables()` imports it: the built-in observables are found like plugins, so this module and
`config` never import them by name). `register` adds another, e.g. a user's or a test's.

Everything else derives from the registry: `config` validates each registered section and the
names in `measure.observables` (default: the observables with `default=True`), `measure` runs
them in order, and `report` draws their figures.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # type names only: the context and the observation live with the observables
    from .observables.observation import Context, Observation

PACKAGE = "adaptsym.observables"  # where the built-in observables are found


@dataclass(frozen=True)
class Figure:
    """One report figure: its file name (e.g. 'fig3a_weights'), its size in inches, and the function
    that draws it from a run's store, `draw(reader, fig)` (`observables.plotting.Reader`; raise
    `MissingData` when the arrays it needs are not there)."""

    name: str
    draw: Callable[[Any, Any], None]
    size: tuple[float, float] = (8.0, 4.5)


@dataclass(frozen=True)
class Observable:
    name: str  # its zarr subgroup, its MLflow prefix and its name in `measure.observables`
    measure: Callable[["Context"], "Observation"]
    settings: type | None = None  # the pydantic model of its `measure.<name>` section
    figures: tuple[Figure, ...] = ()
    default: bool = True  # measured when a config does not list `measure.observables`
    order: int = 100  # measured in increasing order (then by name)


REGISTRY: dict[str, Observable] = {}


def register(observable: Observable) -> Observable:
    """Add (or replace) an observable; returns it."""
    REGISTRY[observable.name] = observable
    ordered = sorted(REGISTRY.values(), key=lambda o: (o.order, o.name))
    REGISTRY.clear()
    REGISTRY.update((o.name, o) for o in ordered)
    return observable


def unregister(name: str) -> None:
    REGISTRY.pop(name, None)


def observables() -> dict[str, Observable]:
    """Every registered observable, in the order of measurement, the built-in ones included."""
    importlib.import_module(PACKAGE)
    return REGISTRY


def default_names() -> list[str]:
    return [name for name, o in observables().items() if o.default]
