"""The loss's curvature: the pool Hessian as an operator (`hvp.PoolHessian`), per-example Hessian
entries (`per_example`) on a design of sampled entries (`entries`), and the exact identities a
bias-free ReLU network satisfies, checked on real checkpoints (`identities`)."""
