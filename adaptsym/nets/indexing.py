"""The map between a global parameter index and (layer, index inside that layer's tensor).

Global indices enumerate the weight tensors in layer order, each flattened in row-major
(C) order, exactly as `torch.cat([w.flatten() for w in weights])` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ParamIndex:
    shapes: tuple[tuple[int, ...], ...]

    @classmethod
    def from_weights(cls, weights) -> "ParamIndex":
        return cls(tuple(tuple(w.shape) for w in weights))

    @property
    def sizes(self) -> np.ndarray:
        return np.array([int(np.prod(s)) for s in self.shapes], dtype=np.int64)

    @property
    def offsets(self) -> np.ndarray:
        """Start of each layer in the global vector, plus the total at the end."""
        return np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)

    @property
    def n_params(self) -> int:
        return int(self.sizes.sum())

    @property
    def n_layers(self) -> int:
        return len(self.shapes)

    def _check(self, g: np.ndarray) -> None:
        if g.size and (g.min() < 0 or g.max() >= self.n_params):
            raise IndexError(f"global parameter index out of range [0, {self.n_params})")

    def layer_of(self, g) -> np.ndarray:
        """Layer of each global index (vectorised)."""
        g = np.asarray(g, dtype=np.int64)
        self._check(g)
        return np.searchsorted(self.offsets, g, side="right") - 1

    def to_local(self, g) -> tuple[np.ndarray, np.ndarray]:
        """(layer, flat index inside the layer) for each global index."""
        g = np.asarray(g, dtype=np.int64)
        layer = self.layer_of(g)
        return layer, g - self.offsets[layer]

    def to_tensor_index(self, g: int) -> tuple[int, tuple[int, ...]]:
        """(layer, multi-index into that layer's weight tensor) for one global index."""
        layer, flat = self.to_local(np.array([g]))
        li = int(layer[0])
        return li, tuple(int(i) for i in np.unravel_index(int(flat[0]), self.shapes[li]))

    def to_global(self, layer, flat) -> np.ndarray:
        """Global index from (layer, flat index inside the layer) (vectorised)."""
        layer = np.asarray(layer, dtype=np.int64)
        flat = np.asarray(flat, dtype=np.int64)
        if np.any(flat < 0) or np.any(flat >= self.sizes[layer]):
            raise IndexError("flat index outside its layer")
        return self.offsets[layer] + flat

    def from_tensor_index(self, layer: int, index: tuple[int, ...]) -> int:
        return int(self.offsets[layer] + np.ravel_multi_index(index, self.shapes[layer]))

    def unravel(self, layer: int, flat) -> tuple[np.ndarray, ...]:
        """Multi-index arrays (one per tensor dimension) for flat indices inside `layer`."""
        return np.unravel_index(np.asarray(flat, dtype=np.int64), self.shapes[layer])
