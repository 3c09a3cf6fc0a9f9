"""adaptsym: measure Li's adaptive-symmetry observables on real bias-free ReLU networks.

Single-process science: models, data, losses, training, Hessian-vector products, entry
sampling, bootstrap statistics, storage and tracking. `services/` distributes it over Ray.
"""

__version__ = "0.1.0"
