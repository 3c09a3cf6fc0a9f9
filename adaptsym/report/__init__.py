"""What a user reads: the figures and the HTML report of a run (`render`), and the verdict on the
paper's headline numbers (`verdict`)."""

from .render import FIGURES, MissingData, Report, render_report

__all__ = ["FIGURES", "MissingData", "Report", "render_report"]
