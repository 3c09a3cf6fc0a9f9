"""The report renders headless from a run's zarr store alone; missing arrays skip one figure."""

import shutil

import pytest
from PIL import Image

from jobs.cli import main
from adaptsym.measure import measure_run
from adaptsym.report.render import figures, render_report
from adaptsym.train import train

from .test_train_checkpoint import tiny_config


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    cfg = tiny_config(epochs=3, checkpoints=(0, 1, 3), name="rep")
    res = train(cfg, "mlp", root, progress=False)
    measure_run(res.run_dir, cfg=cfg, progress=False)
    # only the zarr store travels: the figures must come from it alone
    only_store = root / "copy" / res.run_dir.name
    only_store.mkdir(parents=True)
    shutil.copytree(res.run_dir / "results.zarr", only_store / "results.zarr")
    return only_store


def test_every_figure_renders_from_the_store(measured, tmp_path):
    rep = render_report(measured, out_dir=tmp_path / "r")
    assert rep.skipped == {}
    drawn = figures()
    assert set(rep.figures) == {f.name for f, _ in drawn} and len(drawn) == 10
    for path in rep.figures.values():
        with Image.open(path) as im:
            im.verify()
            assert im.format == "PNG"
    text = rep.html.read_text()
    assert text.startswith("<!doctype html>") and text.count("data:image/png;base64,") == len(drawn)
    for f, where in drawn:  # each figure names the function that draws it, in the observable it belongs to
        assert f"drawn by <code>{where}</code>" in text and where.startswith("adaptsym.")
    assert "hessian_entries.marginal.z_fraction" in text and "hessian_entries.active.z_forced_fraction" in text
    assert "given activity" in text and "forced by sparsity" in text
    last = max(rep.verdicts)
    assert f"Regime of the last checkpoint: {rep.verdicts[last][0].regime}" in text and \
        f"epoch {last}," in rep.verdicts[last][0].regime


def test_missing_arrays_skip_only_their_figure(measured, tmp_path):
    import zarr

    broken = tmp_path / measured.name
    shutil.copytree(measured, broken)
    root = zarr.open_group(str(broken / "results.zarr"), mode="a")
    for g in [k for k, _ in root.groups() if k.startswith("epoch_")]:
        del root[f"{g}/spectrum"]
    messages = []
    rep = render_report(broken, log=messages.append)
    assert set(rep.skipped) == {"fig8a_spectrum"}
    assert "spectrum/ritz_values" in rep.skipped["fig8a_spectrum"]
    assert any("fig8a_spectrum" in m and "spectrum/ritz_values" in m for m in messages)
    assert len(rep.figures) == len(figures()) - 1
    assert "skipped: missing spectrum/ritz_values" in rep.html.read_text()


def test_report_cli(measured, capsys):
    assert main(["report", str(measured), "--no-mlflow"]) == 0
    assert "report.html" in capsys.readouterr().out


def test_skip_reasons_and_glossary_in_the_report(measured, tmp_path):
    """A statistic a checkpoint skipped shows as 'skipped' with its reason, in the table and in a
    list (here a skip reason is written into a copy of the store, as `measure` writes one when
    every pool example has margin >= 1); every scalar row has a glossary entry."""
    import re

    from adaptsym.report.render import GLOSSARY, skipped_statistics
    from adaptsym.storage.store import RunStore

    run = tmp_path / measured.name
    shutil.copytree(measured, run)
    store = RunStore.for_run(run)
    assert skipped_statistics(store) == []
    g = store.checkpoint_groups()[-1]
    reason = "all 64 pool examples have margin >= 1: H = 0 exactly"
    attrs = store.attrs(f"{g}/hessian_entries")
    store.root[f"{g}/hessian_entries"].attrs.update({"skipped": reason, "scalars": {}})
    store.set_attrs({"scalars": {k: v for k, v in store.attrs(g)["scalars"].items()
                                 if not k.startswith("hessian_entries.")}}, group=g)
    assert attrs  # the group existed
    epoch = int(g.split("_")[1])
    assert skipped_statistics(store) == [(epoch, "hessian_entries", reason)]
    from html import escape

    html = render_report(run, out_dir=tmp_path / "r").html.read_text()
    assert f"epoch {epoch}, hessian_entries: {escape(reason)}" in html
    assert f"title='{escape(reason)}'>skipped</td>" in html
    shown = set(re.findall(r"<tr><td>([a-z_.]+)</td>", html))
    assert shown and all(k.split(".")[-1] in GLOSSARY for k in shown if "." in k)
    assert "3.39e-4" in html and "Glossary" in html


def test_report_of_an_unmeasured_run_says_to_measure_first(tmp_path, capsys):
    cfg = tiny_config(epochs=1, checkpoints=(1,), name="unmeasured")
    res = train(cfg, "mlp", tmp_path, progress=False)
    assert main(["report", str(res.run_dir), "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"run `adaptsym measure --run {res.run_dir}` first" in err[0] and "1 checkpoint" in err[0]
    assert not (res.run_dir / "report" / "report.html").exists()


def test_every_figure_is_fit_to_publish(measured):
    """matplotlib's renderer after layout: no text past the canvas, no legend on a title or on data,
    every axis and colour bar labelled, integer epoch ticks, no log axis dragged by a zero.
    Mutations: a long title, a legend over the data, a missing label, a zero on a log axis."""
    import matplotlib.pyplot as plt
    import numpy as np

    from adaptsym.observables.plotting import Reader
    from adaptsym.report.layout import layout_problems
    from adaptsym.report.render import draw
    from adaptsym.storage.store import RunStore

    store = RunStore.for_run(measured, mode="r")
    r = Reader(store)
    drawn = 0
    for spec, _ in figures(store):
        fig = draw(spec, r)
        assert layout_problems(fig) == [], spec.name
        plt.close(fig)
        drawn += 1
    assert drawn == 10
    spec = next(s for s, _ in figures(store) if s.name == "fig7c_coupling")
    fig = draw(spec, r)
    fig.suptitle("Fig 7c: " + "a title far too long for its canvas, " * 6)
    assert any("extends past the canvas" in p for p in layout_problems(fig))
    plt.close(fig)

    fig, ax = plt.subplots(constrained_layout=True)
    ax.plot(np.arange(10), np.ones(10), label="flat line through the middle")
    ax.set(xlabel="epoch", ylabel="y", ylim=(0, 2))
    assert layout_problems(fig) == []
    ax.legend(loc="center")
    assert any("covers" in p for p in layout_problems(fig))
    ax.get_legend().remove()
    ax.set_ylabel("")
    assert any("no y label" in p for p in layout_problems(fig))
    ax.set_ylabel("y")
    ax.set_xlim(0, 2.5)
    assert any("epoch ticks between integers" in p for p in layout_problems(fig))
    plt.close(fig)
    fig, ax = plt.subplots(constrained_layout=True)
    ax.semilogy(np.arange(3), [1e-3, 1.0, 2.0])
    ax.set(xlabel="x", ylabel="y")
    assert layout_problems(fig) == []
    ax.semilogy(np.arange(3), [1e-31, 1.0, 2.0])  # a zero floored at 1e-31 drags the axis
    assert any("log axis spans" in p for p in layout_problems(fig))
    plt.close(fig)


def test_fig4b_marks_an_exact_zero_apart_instead_of_dragging_its_log_axis():
    import matplotlib.pyplot as plt
    import numpy as np

    from adaptsym.observables.gradients import fig4b
    from adaptsym.report.layout import layout_problems

    class History:  # the two training series fig4b reads, one Omega exactly 0
        def training(self, name):
            ep = np.arange(6)
            return ep, (np.array([3.0, 0.1, 0.02, 0.0, 0.004, 0.001]) if name == "omega" else np.linspace(1, 0.1, 6))

    fig = plt.figure(figsize=(7, 4), constrained_layout=True)
    fig4b(History(), fig)
    assert layout_problems(fig) == []
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert np.log10(hi / lo) < 5  # the axis spans the data, not 1e-30
    marked = [ln for ln in ax.get_lines() if "exactly" in ln.get_label()]
    assert len(marked) == 1 and list(marked[0].get_xdata()) == [3]
    plt.close(fig)
