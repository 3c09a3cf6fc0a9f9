"""Small helpers used across the package, each defined once."""

from __future__ import annotations

import torch

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def ceil_div(a: int, b: int) -> int:
    """The number of chunks of size b that cover a items."""
    return -(-a // b)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a config's `dtype` ("float64" or "float32")."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r}: use one of {', '.join(DTYPES)}") from None


def save_figure(fig, path, title: str | None = None, dpi: int = 110):
    """Title a matplotlib figure (optional), write it to `path`, close it; returns `path`."""
    import matplotlib.pyplot as plt

    if title is not None:
        fig.suptitle(title)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
