"""The observables of one checkpoint, one module each (weights, gradients, circuits, spectrum,
block_spectra, hessian_entries), their registry (`registry.REGISTRY`) and context
(`observation`), and the block work of the Hessian-entry measurement (`entry_blocks`) with the
executor that runs it in this process (`executor`; `services.executor` runs it on Ray)."""
