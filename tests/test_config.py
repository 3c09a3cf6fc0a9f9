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
