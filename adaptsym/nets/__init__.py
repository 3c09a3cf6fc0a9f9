"""The networks under measurement: bias-free ReLU models (`models`), the global parameter index
(`indexing`), losses, offline data sets, checkpoints, and signal propagation at initialisation."""
