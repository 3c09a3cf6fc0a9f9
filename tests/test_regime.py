"""jobs.regime_study: a tiny study end to end, its refusals, and the pool composition variant."""

import json

import yaml

from jobs import regime_study


def tiny(tmp_path, **over):
    cfg = {
        "name": "tiny", "device": "cpu",
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.01, "checkpoints": [0, 2]},
        "measure": {"pool_size": 128, "minibatch": 16, "design": {"kind": "block", "rows": 12, "cols": 6},
                    "replicates": 100, "tuples_per_entry": 4, "mardia_sets": 0},
        "systems": {"mlp": {"data": {"name": "digits-binary"}, "model": {"kind": "mlp", "hidden": [16, 16]}}},
        "variants": {"default": {}, "active-pool": {"pool": "active"}, "rho": {"nonzero": "threshold",
                                                                             "threshold": 0.3}},
    }
    cfg.update(over)
    path = tmp_path / "regime.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_tiny_study_writes_the_table(tmp_path, capsys):
    path = tiny(tmp_path)
    assert regime_study.main(["--config", str(path), "--out", str(tmp_path / "out"), "--no-mlflow", "--quiet"]) == 0
    text = capsys.readouterr().out
    summary = json.loads(text[text.index("{"):])
    rows = summary["rows"]
    assert {(r["variant"], r["epoch"]) for r in rows} == {(v, e) for v in ("default", "active-pool", "rho")
                                                          for e in (0, 2)}
    from adaptsym.storage.store import RunStore

    store = RunStore(tmp_path / "out" / "tiny-regime" / "regime.zarr", mode="r")
    assert len(store.read("table", "marginal.z_fraction_exact")) == 6 and store.attrs("table")["missing_value"] == -1.0
    assert len(store.read("table", "active.corr.relative")) == 6
    default = {r["epoch"]: r for r in rows if r["variant"] == "default"}
    active = {r["epoch"]: r for r in rows if r["variant"] == "active-pool"}
    for e in (0, 2):
        d = default[e]
        for reading in ("marginal", "active"):  # both readings, each with its interval and verdicts
            key = f"{reading}.z_fraction_exact"
            assert d[f"{key}_ci_low"] <= d[f"{key}_ci_high"]
            assert d[f"{key}_ci_low"] - 0.1 <= d[key] <= d[f"{key}_ci_high"] + 0.1
            assert 0 <= d[f"{reading}.z_forced_fraction_per_example"] <= 1
        for name in ("verdict_z", "verdict_z_active", "verdict_z_per_example", "verdict_corr_active"):
            assert d[name] in ("reproduced", "not reproduced", "inconclusive", "untested", "forced by sparsity")
    # the active pool holds only examples with margin < 1: more of its examples carry non-zero
    # entries than in the seeded pool of all examples, once training has pushed margins past 1
    a, d = active[2], default[2]
    assert a["pool_size"] == 128 and a["n_active_examples"] > d["n_active_examples"]
    assert (tmp_path / "out" / "tiny-regime" / "regime_variants.png").stat().st_size > 0


def test_study_over_budget_is_refused_and_bad_variants_named(tmp_path, capsys):
    path = tiny(tmp_path)
    assert regime_study.main(["--config", str(path), "--out", str(tmp_path), "--budget-min", "0.001",
                              "--no-mlflow"]) == 2
    assert "exceeds --budget-min" in capsys.readouterr().err
    bad = tiny(tmp_path, variants={"default": {}, "oops": {"pool": "some"}})
    assert regime_study.main(["--config", str(bad), "--out", str(tmp_path), "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "oops" in err and "measure.pool" in err
    nodefault = tiny(tmp_path, variants={"x": {}})
    assert regime_study.main(["--config", str(nodefault), "--out", str(tmp_path), "--no-mlflow"]) == 2
    assert "default" in capsys.readouterr().err


def test_variants_merge_section_by_section_in_either_layout(tmp_path):
    """A nested variant changes only its keys of `hessian_entries`; a flat (old-layout) variant lands
    in the same place; one key in both layouts is a config error naming the variant."""
    import pytest

    from adaptsym.config import ConfigError

    cfg = regime_study.load(tiny(tmp_path, variants={"default": {}, "q": {"hessian_entries": {"fdr_q": 0.01}},
                                                      "flat": {"fdr_q": 0.01}}))
    base = cfg.run_config("mlp", "default").measure.hessian_entries
    for v in ("q", "flat"):
        he = cfg.run_config("mlp", v).measure.hessian_entries
        assert he.fdr_q == 0.01 and he.replicates == base.replicates == 100 and he.design.rows == 12
    both = {"default": {}, "both": {"fdr_q": 0.01, "hessian_entries": {"fdr_q": 0.02}}}
    with pytest.raises(ConfigError, match="variant both: .*given both"):  # refused when the study loads
        regime_study.load(tiny(tmp_path, variants=both))
