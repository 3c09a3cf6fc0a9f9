"""The observables, by name: each is one module with a `measure(context) -> Observation` entry
point (`observation.Context` holds the checkpoint, pool, config, store, executor and pool
Hessian), registered here with the report figures drawn from it. `measure.measure_checkpoint`
runs the configured names in this order; the names are those of `config.OBSERVABLES`.

Adding an observable (docs/observables.md, "Adding an observable"): write the module with its
`measure(ctx)` (and a `figure(reader, fig)` for the report), add its name to
`config.OBSERVABLES` and its settings to `MeasureSpec`, and one line below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import block_spectra, circuits, gradients, hessian_entries, spectrum, weights
from .observation import Context, Observation


@dataclass(frozen=True)
class Observable:
    name: str
    measure: Callable[[Context], Observation]
    figures: tuple[str, ...]  # report figures (adaptsym.report.render) drawn from this observable's arrays


REGISTRY: dict[str, Observable] = {o.name: o for o in (
    Observable("weights", weights.measure, ("fig3a_weights",)),
    Observable("gradients", gradients.measure, ("fig4a_gradients", "fig4b_plasticity")),
    Observable("hessian_entries", hessian_entries.measure,
               ("fig6a_entries", "fig6bc_correlations", "fig7ab_normalised_means", "fig7c_coupling")),
    Observable("spectrum", spectrum.measure, ("fig8a_spectrum",)),
    Observable("circuits", circuits.measure, ("fig3b_circuits",)),
    Observable("block_spectra", block_spectra.measure, ("block_spectra",)),
)}
