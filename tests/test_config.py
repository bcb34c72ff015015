"""Config parsing: defaults < YAML < overrides, and one clear error for every bad key or value."""

import pytest

from common.config import format_help, parse_config
from common.errors import UserError
from mnist.train import Config
from tests.conftest import run_script


def write_yaml(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_without_file():
    cfg = parse_config(Config, [], prog="t")
    assert cfg.train.lr == 1e-3
    assert cfg.data.dir == "data/mnist"
    assert cfg.system.device == "auto"


def test_override_precedence(tmp_path):
    path = write_yaml(tmp_path, "train:\n  lr: 0.01\n  epochs: 3\nrun:\n  seed: 7\n")
    cfg = parse_config(Config, ["--config", path, "--train.lr=0.5", "--run.seed", "9"], prog="t")
    assert cfg.train.lr == 0.5  # override beats YAML
    assert cfg.run.seed == 9  # space-separated form works
    assert cfg.train.epochs == 3  # YAML beats default
    assert cfg.train.batch_size == 64  # untouched default


def test_override_before_config_still_wins(tmp_path):
    path = write_yaml(tmp_path, "train:\n  lr: 0.01\n")
    cfg = parse_config(Config, ["--train.lr=0.2", "--config", path], prog="t")
    assert cfg.train.lr == 0.2


def test_last_override_wins():
    cfg = parse_config(Config, ["--train.lr=0.1", "--train.lr=0.3"], prog="t")
    assert cfg.train.lr == 0.3


def test_unknown_key_names_valid_keys():
    with pytest.raises(UserError) as exc:
        parse_config(Config, ["--train.lrr=0.1"], prog="t")
    message = str(exc.value)
    assert "train.lrr is unknown" in message
    assert "lr" in message.split("valid keys")[1]


def test_unknown_key_in_yaml(tmp_path):
    path = write_yaml(tmp_path, "model:\n  depth: 3\n")
    with pytest.raises(UserError, match="model.depth is unknown"):
        parse_config(Config, ["--config", path], prog="t")


def test_unknown_section(tmp_path):
    path = write_yaml(tmp_path, "optim:\n  lr: 3\n")
    with pytest.raises(UserError, match="section 'optim' is unknown; valid sections: run, train"):
        parse_config(Config, ["--config", path], prog="t")


def test_wrong_type_cli():
    with pytest.raises(UserError, match=r"train.lr expects float, got 'fast'"):
        parse_config(Config, ["--train.lr=fast"], prog="t")


def test_wrong_type_yaml(tmp_path):
    path = write_yaml(tmp_path, "train:\n  batch_size: 12.5\n")
    with pytest.raises(UserError, match=r"train.batch_size expects int, got 12.5"):
        parse_config(Config, ["--config", path], prog="t")


def test_bool_in_yaml_must_be_bool(tmp_path):
    path = write_yaml(tmp_path, "system:\n  compile: 3\n")
    with pytest.raises(UserError, match="system.compile expects bool"):
        parse_config(Config, ["--config", path], prog="t")


def test_scientific_float_from_yaml(tmp_path):
    # PyYAML reads 1e-3 as a string; the config still takes it as a float.
    path = write_yaml(tmp_path, "train:\n  lr: 1e-3\n")
    assert parse_config(Config, ["--config", path], prog="t").train.lr == 0.001


def test_choices_rejected():
    with pytest.raises(UserError, match="system.device must be one of auto, cpu, cuda, mps, got 'gpu'"):
        parse_config(Config, ["--system.device=gpu"], prog="t")


def test_validation_rejects_zero_batch():
    with pytest.raises(UserError, match="train.batch_size is 0, must be positive"):
        parse_config(Config, ["--train.batch_size=0"], prog="t")


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        parse_config(Config, ["--config", str(tmp_path / "nope.yaml")], prog="t")


def test_help_lists_every_key_with_default():
    text = format_help(Config, "mnist/train.py", "desc")
    cfg = Config()
    for section in ("run", "train", "model", "data", "system"):
        for key, value in vars(getattr(cfg, section)).items():
            assert f"--{section}.{key} " in text
            assert f"default {value!r}" in text


def test_cli_help_exits_zero():
    proc = run_script(["mnist/train.py", "--help"])
    assert "--train.max_steps" in proc.stdout
    assert "--data.download" in proc.stdout


def test_cli_bad_key_one_line_exit_2():
    proc = run_script(["mnist/train.py", "--train.lrr=0.1"], check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: config key train.lrr is unknown")
