"""Is a figure fit to publish? Checks on matplotlib's own renderer, after the layout engine ran.

`layout_problems(fig)` returns one line per fault:
- text (titles, labels, tick labels, legends, annotations) that extends past the canvas;
- a legend that overlaps a title, or data points or lines of any axes;
- an axes without an x or a y label (colour bars included: their label says what the colour is);
- an epoch axis with ticks between integers;
- a log axis spanning more than `MAX_DECADES` decades (a zero or a floor dragging it down).
Axes that are switched off (`axis("off")`) and text that is not visible are skipped.
"""

from __future__ import annotations

import numpy as np

MAX_DECADES = 12.0
TOL_PX = 1.0


def _tick_labels(fig) -> tuple[set, set]:
    """(every tick label Text, those drawn: ticks inside the view interval)."""
    every, drawn = set(), set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                every |= {tick.label1, tick.label2}
            for tick in axis._update_ticks():  # what Axis.draw draws
                drawn |= {tick.label1, tick.label2}
    return every, drawn


def _visible_texts(fig):
    from matplotlib.text import Text

    every, drawn = _tick_labels(fig)
    for t in fig.findobj(Text):
        if t in every and t not in drawn:
            continue
        if t.get_visible() and t.get_text().strip() and t.get_figure() is fig:
            ax = t.axes
            if ax is not None and not ax.axison and t not in (ax.title, ax._left_title, ax._right_title):
                continue
            yield t


def _tick_labels_shown(axis) -> bool:
    return any(t.get_visible() and t.get_text() for t in axis.get_ticklabels())


def _along(xy: np.ndarray, steps: int = 9) -> np.ndarray:
    """Points along each segment of a polyline (display coordinates), its vertices included."""
    if len(xy) < 2:
        return xy
    return np.concatenate([xy[:-1] + (xy[1:] - xy[:-1]) * f for f in np.linspace(0, 1, steps)])


def _data_points(ax) -> np.ndarray:
    """Display coordinates of the data drawn in `ax`: lines (along their segments), markers,
    histogram outlines and filled bands (along their edges), bar tops, images."""
    from matplotlib.collections import Collection
    from matplotlib.image import AxesImage
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    pts = []
    for art in ax.get_children():
        if not art.get_visible() or art is ax.patch:
            continue
        if isinstance(art, Line2D) and len(art.get_xydata()):
            xy = art.get_transform().transform(art.get_xydata())
            pts.append(_along(xy) if art.get_linestyle() not in ("None", "", " ") else xy)
        elif isinstance(art, Collection):
            offsets = art.get_offsets()
            if len(offsets) and art.get_offset_transform() is not None:
                pts.append(art.get_offset_transform().transform(offsets))
            tr = art.get_transform()
            for path in art.get_paths():
                if len(path.vertices) > 2:  # a band or polygon, not a marker shape
                    pts.append(_along(tr.transform(path.vertices)))
        elif isinstance(art, Patch) and art.axes is ax:
            path = art.get_path().transformed(art.get_patch_transform()) if hasattr(art, "get_patch_transform") \
                else art.get_path()
            pts.append(_along(art.get_data_transform().transform(path.vertices)))
        elif isinstance(art, AxesImage):
            b = art.get_window_extent()
            pts.append(np.array([[x, y] for x in np.linspace(b.x0, b.x1, 8) for y in np.linspace(b.y0, b.y1, 8)]))
    if not pts:
        return np.zeros((0, 2))
    xy = np.concatenate(pts)
    xy = xy[np.isfinite(xy).all(axis=1)]
    clip = ax.get_window_extent()  # what the axes clips away is not drawn
    inside = (xy[:, 0] >= clip.x0) & (xy[:, 0] <= clip.x1) & (xy[:, 1] >= clip.y0) & (xy[:, 1] <= clip.y1)
    return xy[inside]


def _name(ax) -> str:
    title = ax.get_title() or ax.get_ylabel() or ax.get_xlabel() or "untitled"
    return f"axes '{title[:40]}'"


def layout_problems(fig) -> list[str]:
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    W, H = fig.bbox.width, fig.bbox.height
    out = []
    for t in _visible_texts(fig):
        b = t.get_window_extent(r)
        if b.x0 < -TOL_PX or b.y0 < -TOL_PX or b.x1 > W + TOL_PX or b.y1 > H + TOL_PX:
            out.append(f"text {t.get_text()[:50]!r} extends past the canvas "
                       f"({b.x0:.0f}..{b.x1:.0f} x {b.y0:.0f}..{b.y1:.0f} of {W:.0f} x {H:.0f} px)")
    titles = [t for t in _visible_texts(fig)
              if t is fig._suptitle or any(t in (ax.title, ax._left_title, ax._right_title) for ax in fig.axes)]
    legends = [lg for lg in [*(ax.get_legend() for ax in fig.axes), *fig.legends] if lg is not None and lg.get_visible()]
    for lg in legends:
        lb = lg.get_window_extent(r)
        for t in titles:
            if lb.overlaps(t.get_window_extent(r)):
                out.append(f"a legend overlaps the title {t.get_text()[:50]!r}")
        for ax in fig.axes:
            if not ax.axison:
                continue
            xy = _data_points(ax)
            hit = (xy[:, 0] > lb.x0) & (xy[:, 0] < lb.x1) & (xy[:, 1] > lb.y0) & (xy[:, 1] < lb.y1)
            if hit.any():
                out.append(f"a legend ({', '.join(t.get_text() for t in lg.get_texts())[:40]}) covers "
                           f"{int(hit.sum())} data point(s) of {_name(ax)}")
    for ax in fig.axes:
        if not ax.axison:
            continue
        cbar = hasattr(ax, "_colorbar") or ax.get_label() == "<colorbar>"
        if cbar:
            if not (ax.get_ylabel() or ax.get_xlabel()):
                out.append(f"a colour bar without a label (beside {_name(ax)})")
            continue
        twins = [o for o in ax.get_shared_x_axes().get_siblings(ax) if o is not ax and o.get_xlabel()]
        if _tick_labels_shown(ax.xaxis) and not ax.get_xlabel() and not twins:
            out.append(f"{_name(ax)}: no x label")
        if (_tick_labels_shown(ax.yaxis) or ax.get_yticks().size == 0) and not ax.get_ylabel():
            out.append(f"{_name(ax)}: no y label")
        for axis, label in ((ax.xaxis, ax.get_xlabel()), (ax.yaxis, ax.get_ylabel())):
            if "epoch" in label.lower() and axis.get_scale() == "linear":
                lo, hi = sorted(axis.get_view_interval())
                ticks = [v for v in axis.get_ticklocs() if lo - 1e-9 <= v <= hi + 1e-9]
                if any(abs(v - round(v)) > 1e-9 for v in ticks):
                    out.append(f"{_name(ax)}: epoch ticks between integers ({', '.join(f'{v:g}' for v in ticks)})")
            if axis.get_scale() == "log":
                lo, hi = sorted(axis.get_view_interval())
                if lo > 0 and np.log10(hi / lo) > MAX_DECADES:
                    out.append(f"{_name(ax)}: a log axis spans {np.log10(hi / lo):.0f} decades "
                               f"({lo:.1e} to {hi:.1e}): a zero or a floor drags it")
    return out
