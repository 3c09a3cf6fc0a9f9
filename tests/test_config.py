from pathlib import Path

import pytest
import yaml

from adaptsym.config import ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_configs_load():
    demo = load_config(ROOT / "configs/demo.yaml")
    assert demo.data.name == "digits-binary" and set(demo.models) == {"mlp", "cnn"}
    paper = load_config(ROOT / "configs/paper-vgg12-cifar10.yaml")
    assert paper.models["vgg12"].kind == "vgg12"
    assert paper.train.epochs == 300
    assert paper.train.checkpoints == [0, 10, 20, 30, 40, 100, 160, 200, 260, 300]


def _base():
    return {"name": "x", "models": {"m": {"kind": "mlp", "hidden": [4]}}}


def test_unknown_key_names_key_and_allowed_keys():
    d = _base()
    d["train"] = {"epochs": 2, "learning_rate": 0.1}
    with pytest.raises(ConfigError) as e:
        parse_config(d)
    msg = str(e.value)
    assert "train" in msg and "'learning_rate'" in msg
    assert "lr" in msg and "momentum" in msg  # the allowed keys are listed


def test_unknown_key_inside_named_model():
    d = _base()
    d["models"]["m"]["hiden"] = [3]
    with pytest.raises(ConfigError) as e:
        parse_config(d)
    assert "models.m" in str(e.value) and "hidden" in str(e.value) and "width_multiplier" in str(e.value)


def test_bad_value_lists_allowed_values():
    d = _base()
    d["data"] = {"name": "mnist"}
    with pytest.raises(ConfigError) as e:
        parse_config(d)
    msg = str(e.value)
    assert "data.name" in msg and "digits-binary" in msg and "cifar10-binary" in msg and "'mnist'" in msg


def test_schedule_beyond_epochs_rejected():
    d = _base()
    d["train"] = {"epochs": 5, "checkpoints": [0, 10]}
    with pytest.raises(ConfigError, match="exceed epochs"):
        parse_config(d)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)


def test_cnn_without_conv_rejected(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"models": {"c": {"kind": "cnn", "hidden": [3]}}}))
    with pytest.raises(ConfigError, match="conv"):
        load_config(p)


LEGACY_MEASURE = {"pool_size": 64, "minibatch": 16, "fdr_q": 0.1, "replicates": 200,
                  "design": {"kind": "block", "rows": 12, "cols": 6}, "spectrum": {"steps": 8}}


def test_old_flat_measure_layout_loads_into_its_section_with_a_warning_that_shows_the_new_one(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({**_base(), "measure": LEGACY_MEASURE}))
    with pytest.warns(FutureWarning, match=r"(?s)old.yaml: measure.minibatch \(and 3 more\) moved to "
                                           r"measure.hessian_entries.*hessian_entries:\n    minibatch: \.\.\.\n"
                                           r"    design: \.\.\."):
        old = load_config(path)
    new = parse_config({**_base(), "measure": {"pool_size": 64, "spectrum": {"steps": 8},
                                    "hessian_entries": {"minibatch": 16, "fdr_q": 0.1, "replicates": 200,
                                                        "design": {"kind": "block", "rows": 12, "cols": 6}}}})
    assert old == new
    he = old.measure.hessian_entries
    assert (he.minibatch, he.fdr_q, he.replicates, he.design.rows) == (16, 0.1, 200, 12)
    assert old.measure.pool_size == 64 and old.measure.spectrum.steps == 8
    # every Hessian-entry setting lives in its section only
    assert not set(old.measure.model_dump()) & set(he.model_dump())


def test_a_setting_in_both_places_is_refused():
    with pytest.raises(ConfigError, match=r"\['fdr_q'\] given both under measure and under measure.hessian_entries"):
        parse_config({**_base(), "measure": {"fdr_q": 0.1, "hessian_entries": {"fdr_q": 0.2}}})


def test_a_measurement_stored_in_the_old_layout_compares_equal_to_the_same_settings_now():
    from adaptsym.config import current_layout

    now = parse_config({**_base(), "measure": LEGACY_MEASURE}).measure.model_dump(mode="json")
    stored = {k: v for k, v in now.items() if k != "hessian_entries"} | now["hessian_entries"]  # the old flat dump
    assert current_layout(stored) == now
    assert current_layout({**stored, "replicates": 300}) != now
    assert current_layout({"not a": "config"}) == {"not a": "config"}  # unchanged, so unequal


def test_sections_merge_key_by_key():
    from adaptsym.config import merge_sections

    base = {"pool_size": 512, "hessian_entries": {"fdr_q": 0.05, "replicates": 500}}
    assert merge_sections(base, {"hessian_entries": {"fdr_q": 0.01}, "pool": "active"}) == \
        {"pool_size": 512, "pool": "active", "hessian_entries": {"fdr_q": 0.01, "replicates": 500}}
    assert base["hessian_entries"]["fdr_q"] == 0.05  # not modified
