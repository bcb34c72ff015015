"""cifar/train.py end to end: learning on the real sample, bitwise resume with augmentation, DDP, errors."""

import json

import pytest
import torch

from common.checkpoint import load_checkpoint
from common.trainer import TIMING_COLUMNS
from tests.conftest import only_run_dir, read_csv, run_script, run_torchrun, tree_digest
from tests.test_mnist_train import kill_after_first_checkpoint

SMALL_CNN = ["cifar/train.py", "--config", "cifar/configs/cnn.yaml", "--data.train_size=1000", "--model.width=8",
             "--train.batch_size=32", "--train.epochs=4", "--train.log_every=10", "--train.eval_every=40"]


def comparable_rows(metrics_csv):
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_csv(metrics_csv)]


@pytest.mark.slow
def test_cnn_beats_35_percent(tmp_path):
    run_script(["cifar/train.py", "--config", "cifar/configs/cnn.yaml", "--train.epochs=5", f"--run.results_dir={tmp_path}"])
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["test_examples"] == 1000
    assert summary["test_acc"] > 0.35


def test_resume_with_augmentation_is_bitwise(tmp_path):
    args = [*SMALL_CNN, "--train.ckpt_every=20"]
    run_script([*args, f"--run.results_dir={tmp_path / 'whole'}"])
    kill_after_first_checkpoint([*args, f"--run.results_dir={tmp_path / 'killed'}"])
    killed_dir = only_run_dir(tmp_path / "killed")
    assert not (killed_dir / "summary.json").exists()
    run_script(["cifar/train.py", f"--run.resume={killed_dir}"])  # the run's own config.yaml is the default
    whole_dir = only_run_dir(tmp_path / "whole")
    assert comparable_rows(killed_dir / "metrics.csv") == comparable_rows(whole_dir / "metrics.csv")
    whole = load_checkpoint(whole_dir / "checkpoints" / "last.pt")["model"]
    resumed = load_checkpoint(killed_dir / "checkpoints" / "last.pt")["model"]
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key


def test_augmentation_changes_training(tmp_path):
    run_script([*SMALL_CNN, "--train.max_steps=10", f"--run.results_dir={tmp_path / 'on'}"])
    run_script([*SMALL_CNN, "--train.max_steps=10", "--data.augment=false", f"--run.results_dir={tmp_path / 'off'}"])
    on = read_csv(only_run_dir(tmp_path / "on") / "metrics.csv")[0]["loss"]
    off = read_csv(only_run_dir(tmp_path / "off") / "metrics.csv")[0]["loss"]
    assert on != off


@pytest.mark.multiprocess
def test_two_ranks_with_augmentation_stay_in_sync(tmp_path):
    run_torchrun(2, [*SMALL_CNN, "--train.max_steps=20", "--model.name=resnet", f"--run.results_dir={tmp_path}"])
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["ranks_in_sync"] is True
    assert summary["steps"] == 20


@pytest.mark.parametrize("override, expected", [
    ("--data.dir=/nonexistent/cifar", "not found"),
    ("--model.name=vit", "model.name must be one of mlp, cnn, resnet"),
    ("--train.label_smoothing=1.5", "train.label_smoothing is 1.5"),
    ("--system.dtype=float16", "float16 runs only on CUDA"),
])
def test_bad_input_exits_2(tmp_path, override, expected):
    (tmp_path / "keep.txt").write_text("existing result")
    before = tree_digest(tmp_path)
    proc = run_script([*SMALL_CNN, override, f"--run.results_dir={tmp_path}"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: ")
    assert expected in proc.stderr
    assert tree_digest(tmp_path) == before
