"""adaptsym: measure Li's adaptive-symmetry observables on real bias-free ReLU networks.

Single-process science, one subpackage per system (the README's layout section): `nets` (models,
data, losses, checkpoints), `stats`, `curvature` (Hessian operators and sampled entries),
`observables` (one module per observable and their registry), `storage` (zarr, MLflow),
`report`, `planning` and the effective model (`effective`). `services/` distributes it over Ray.

Modules that lay flat in this package before 2026-11-30 still import under their old names
(`adaptsym.hvp` is `adaptsym.curvature.hvp`), with a DeprecationWarning.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

__version__ = "0.1.0"

# old flat module name -> its place since the subpackages (2026-11-30); `adaptsym.report` is now the
# package, which re-exports the old module's public names (render_report, FIGURES, Report, MissingData)
MOVED = {
    "store": "storage.store",
    "verify": "storage.verify",
    "runlock": "storage.runlock",
    "tracking": "storage.tracking",
    "provenance": "storage.provenance",
    "models": "nets.models",
    "indexing": "nets.indexing",
    "losses": "nets.losses",
    "data": "nets.data",
    "checkpoint": "nets.checkpoint",
    "signal_propagation": "nets.signal_propagation",
    "bootstrap": "stats.bootstrap",
    "entry_stats": "stats.entry_stats",
    "nonzero": "stats.nonzero",
    "correlation": "stats.correlation",
    "comoments": "stats.comoments",
    "fdr": "stats.fdr",
    "coupling": "stats.coupling",
    "mardia": "stats.mardia",
    "scaling": "stats.scaling",
    "nulls": "stats.nulls",
    "histograms": "stats.histograms",
    "hvp": "curvature.hvp",
    "per_example": "curvature.per_example",
    "entries": "curvature.entries",
    "identities": "curvature.identities",
    "observation": "observables.observation",
    "weights": "observables.weights",
    "gradients": "observables.gradients",
    "circuits": "observables.circuits",
    "spectrum": "observables.spectrum",
    "block_spectra": "observables.block_spectra",
    "hessian_entries": "observables.hessian_entries",
    "entry_blocks": "observables.entry_blocks",
    "executor": "observables.executor",
    "verdict": "report.verdict",
    "binary_net": "effective.binary_net",
    # the old module held config, data and the store: its names now live in three modules
    "ensemble": ("effective.config", "effective.data", "effective.collection"),
    "gibbs": "effective.gibbs",
    "effective_model": "effective.model",
    "effective_analysis": "effective.analysis",
    "effective_report": "effective.report",
    "plan": "planning.cost",  # the cost model; its throughput sampler is jobs.plan_sampler
}


def _where(old: str) -> str:
    new = MOVED[old]
    return " and ".join(f"adaptsym.{n}" for n in ((new,) if isinstance(new, str) else new))


def _load(old: str) -> types.ModuleType:
    """The module `old` became; for a module split in several, one module holding all their names."""
    new = MOVED[old]
    if isinstance(new, str):
        return importlib.import_module(f"adaptsym.{new}")
    merged = types.ModuleType(f"adaptsym.{old}", f"Old path of {_where(old)}.")
    for part in new:
        mod = importlib.import_module(f"adaptsym.{part}")
        merged.__dict__.update({k: v for k, v in vars(mod).items() if not k.startswith("__")})
    return merged


_OWN_SPECS: dict = {}  # old name -> the spec of the module it became, while importlib loads it


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `adaptsym.<old>` as the module it became, lazily, warning once per name."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.partition("adaptsym.")[2] if fullname.startswith("adaptsym.") else None
        return importlib.util.spec_from_loader(fullname, self) if old in MOVED else None

    def create_module(self, spec):
        old = spec.name.partition("adaptsym.")[2]
        warnings.warn(f"adaptsym.{old} moved to {_where(old)}; import it from there",
                      DeprecationWarning, stacklevel=3)
        module = _load(old)
        if isinstance(MOVED[old], str):
            _OWN_SPECS[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # the module it became is already executed; importlib has just set its __spec__ to the old
        # name's: give it back its own
        own = _OWN_SPECS.pop(module.__spec__.name, None)
        if own is not None:
            module.__spec__ = own


if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
    sys.meta_path.append(_OldPaths())


def __getattr__(name):
    if name in MOVED:  # `from adaptsym import hvp`
        return importlib.import_module(f"adaptsym.{name}")
    raise AttributeError(f"module 'adaptsym' has no attribute {name!r}")
