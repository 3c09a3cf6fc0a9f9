"""Statistics of per-example Hessian entries, in numpy: bootstrap replicates and intervals,
per-entry moments and the sparsity bound (`entry_stats`), the two readings and the non-zero tests
(`nonzero`, `correlation`, `comoments`, `fdr`), coupling sizes, Mardia, power-law fits, and the
synthetic nulls the tests are calibrated on (`nulls`). Nothing here knows about networks."""
