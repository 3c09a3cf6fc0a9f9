"""The observables of one checkpoint, one module each (weights, gradients, circuits, spectrum,
block_spectra, hessian_entries), each ending with its registration (`OBSERVABLE`,
`adaptsym.registry`); the context they are measured in (`observation`); their figures' shared
helpers (`plotting`); and the block work of the Hessian-entry measurement (`entry_blocks`) with
the executor that runs it in this process (`executor`; `services.executor` runs it on Ray).

Importing the package registers every module's `OBSERVABLE`: a new observable is one module here
with its registration line (docs/observables.md)."""

import importlib
import pkgutil

from ..registry import register

for _info in pkgutil.iter_modules(__path__):
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    if hasattr(_module, "OBSERVABLE"):
        register(_module.OBSERVABLE)
