"""What a user reads: the figures and the HTML report of a run (`render`), and the verdict on the
paper's headline numbers (`verdict`)."""

from .render import MissingData, Report, figures, render_report

__all__ = ["MissingData", "Report", "figures", "render_report"]


def __getattr__(name):
    if name == "FIGURES":  # (name, function, size) of the default figures, as before the registry
        from . import render

        return render.FIGURES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
