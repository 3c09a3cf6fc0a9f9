"""`adaptsym plan`: its prediction against a measured small run, and its refusals."""

import time

import pytest
import torch

from adaptsym.config import load_config
from adaptsym.planning.cost import PlanError, Throughput, check_fits, parse_devices, predict
from jobs.plan_sampler import measure_throughput


def small_demo():
    cfg = load_config("configs/demo.yaml")
    cfg.models = {"cnn": cfg.models["cnn"]}
    cfg.train = cfg.train.model_copy(update={"epochs": 2, "checkpoints": [0, 2]})
    cfg.measure = cfg.measure.model_copy(update={
        "pool_size": 256,
        "hessian_entries": cfg.measure.hessian_entries.model_copy(update={
            "replicates": 300, "design": cfg.measure.hessian_entries.design.model_copy(update={"rows": 48, "cols": 16})}),
        "spectrum": cfg.measure.spectrum.model_copy(update={"starts": 2, "steps": 30})})
    return cfg


def test_plan_predicts_a_small_demo_run_within_half(tmp_path):
    """Train + measure (in process) of a cut-down demo config takes what the plan said, +-50%."""
    from adaptsym.measure import measure_run
    from adaptsym.train import train

    cfg = small_demo()
    tp = measure_throughput(cfg, "cnn", torch.device("cpu"), threads=torch.get_num_threads())
    plan = predict(cfg, tp, "cpu", torch.get_num_threads(), None)
    t0 = time.perf_counter()
    res = train(cfg, "cnn", tmp_path, progress=False)
    measure_run(res.run_dir, cfg=cfg, progress=False, log=lambda *_: None)
    took = time.perf_counter() - t0
    predicted = plan.total_seconds - plan.seconds["startup"] + tp.data_s  # this process has imported already
    assert 0.5 * took <= predicted <= 1.5 * took, (predicted, took, plan.seconds)
    assert plan.peak_rss_mb["driver"] > tp.base_rss_mb and "actor" not in plan.peak_rss_mb


def test_plan_scales_with_the_work():
    """Doubling the pool doubles the per-example phases; actors divide them; a budget too small
    for the graphs switches the spectrum to forward-over-reverse products."""
    cfg = small_demo()
    tp = Throughput("cpu", 1, 10_000, 8, 1.0, 1e-4, 3e-5, 1e-4, 1e-4, 1e5, 2e-4, 4e-4, 1e6, 3e-4, 0.01, 5.0, 0.1, 0.2, 0.3, 1e-5,
                    1.0, 5.0, 1000, 200, 300.0, 400.0)
    one = predict(cfg, tp, "cpu", 1, None)
    big = predict(cfg.model_copy(update={"measure": cfg.measure.model_copy(update={"pool_size": 512})}), tp, "cpu", 1, None)
    ent = lambda p: p.seconds["measure.hessian_entries"] - 2 * tp.statistics_s
    assert ent(big) == pytest.approx(2 * ent(one))
    two = predict(cfg, tp, "cpu", 2, 2)
    assert ent(two) == pytest.approx(ent(one) / 2) and "actor" in two.peak_rss_mb
    tight = cfg.model_copy(update={"measure": cfg.measure.model_copy(update={"hvp_graph_budget_mb": 1})})
    slow = predict(tight, tp, "cpu", 1, None)
    assert slow.seconds["measure.spectrum"] > 1.9 * one.seconds["measure.spectrum"]


def test_plan_refuses_what_does_not_fit_and_absent_devices(monkeypatch):
    cfg = small_demo()
    tp = Throughput("cpu", 1, 10_000_000, 8, 1.0, 1e-4, 3e-5, 1e-4, 1e-4, 1e5, 2e-4, 4e-4, 1e6, 3e-4, 0.01, 5.0, 0.1, 0.2, 0.3, 1e-5,
                    1.0, 5.0, 1000, 200, 300.0, 400.0)
    plan = predict(cfg, tp, "cpu", 2, 2)
    monkeypatch.setattr("adaptsym.planning.cost.available_memory_mb", lambda: 100.0)
    with pytest.raises(PlanError, match="available"):
        check_fits(plan, 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PlanError, match="no CUDA device"):
        parse_devices("cuda:8")
    with pytest.raises(PlanError, match="cpu:2 or cuda:8"):
        parse_devices("tpu:1")
    assert parse_devices("cpu:2") == ("cpu", 2)


def test_plan_survives_an_injected_slow_sample(monkeypatch):
    """Every third timed call is made 10x slower (another job grabbing the cores for a moment):
    the prediction stays within 2x of the undisturbed one, and the plan warns, naming kernels."""
    import jobs.plan_sampler as ps
    from adaptsym.planning.cost import format_plan, sampling_warnings

    cfg = small_demo()
    cpu = torch.device("cpu")
    threads = torch.get_num_threads()
    quiet = measure_throughput(cfg, "cnn", cpu, threads)
    real, calls = ps._elapsed, [0]

    def sometimes_slow(fn):
        calls[0] += 1
        return real(fn) * (10.0 if calls[0] % 3 == 0 else 1.0)

    monkeypatch.setattr(ps, "_elapsed", sometimes_slow)
    noisy = measure_throughput(cfg, "cnn", cpu, threads)
    assert calls[0] > 20 and noisy.repeats == 3
    a, b = (predict(cfg, t, "cpu", threads, None).total_seconds for t in (quiet, noisy))
    assert 0.5 <= b / a <= 2.0, (a, b)
    assert max(noisy.spread.values()) > 5  # the injected samples are seen in the spread
    warnings = sampling_warnings(noisy)
    assert warnings and "disagree" in warnings[0] and "busy" in warnings[0]
    text = format_plan(predict(cfg, noisy, "cpu", threads, None), noisy)
    assert "  warning: the samples of" in text and "samples: 3 per kernel, the fastest used" in text
    # the null: on an idle machine a 1-ms kernel's samples alone differ by 1.6x (measured): no warning;
    # the same spread on a 50-ms kernel is load
    from dataclasses import replace

    idle = replace(quiet, spread={"vector pass": 1.64, "h tile": 1.3}, fastest_s={"vector pass": 0.001, "h tile": 0.05},
                   load=0.0)
    assert sampling_warnings(idle) == []
    busy = replace(idle, spread={"vector pass": 1.0, "h tile": 1.64})
    assert len(sampling_warnings(busy)) == 1 and "h tile 1.6x" in sampling_warnings(busy)[0]
