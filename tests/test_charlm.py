"""charlm: data preparation, the learning-rate shape, accumulation over token counts, bitwise resume."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charlm.prepare import prepare
from lm.train import TIMING_COLUMNS, TrainConfig, learning_rate
from common.checkpoint import load_checkpoint
from lm.model import GPT, GPTConfig
from lm.tokens import read_token_file
from tests.conftest import only_run_dir, read_csv, run_script
from tests.test_mnist_train import kill_after_first_checkpoint

TINY = ["charlm/train.py", "--config", "charlm/configs/cpu.yaml", "--model.n_layer=2", "--model.n_embd=32",
        "--model.n_head=2", "--model.block_size=32", "--train.eval_iters=2", "--train.log_interval=10"]


def test_prepare_round_trip(tmp_path):
    text = "hello world\nto be or not to be\n" * 20
    (tmp_path / "in.txt").write_text(text)
    meta = prepare(str(tmp_path / "in.txt"), str(tmp_path / "out"), val_fraction=0.25)
    train = read_token_file(tmp_path / "out" / "train.bin")
    val = read_token_file(tmp_path / "out" / "val.bin")
    chars = json.loads((tmp_path / "out" / "meta.json").read_text())["tokenizer"]["chars"]
    assert meta["vocab_size"] == len(set(text))
    assert "".join(chars[i] for i in np.concatenate([train, val])) == text
    assert len(val) == len(text) - int(len(text) * 0.75)


def test_learning_rate_shape():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_iters=100, lr_decay_iters=2000)
    assert learning_rate(0, cfg) == pytest.approx(1e-5)
    assert learning_rate(99, cfg) == pytest.approx(1e-3)
    assert learning_rate(1050, cfg) == pytest.approx(5.5e-4)
    assert learning_rate(2000, cfg) == pytest.approx(1e-4)
    assert learning_rate(5000, cfg) == pytest.approx(1e-4)


def test_accumulation_normalises_by_tokens():
    # Two sequences with 11 and 101 supervised tokens (the rest masked with -100): the gradient of
    # the token-mean loss is the same as one batch of 2, or as 2 micro-steps of 1 normalised by the
    # tokens of the whole step.
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=128, n_layer=2, n_head=2, n_embd=32))
    idx = torch.randint(0, 50, (2, 128))
    targets = idx.roll(-1, dims=1)
    targets[0, 11:] = -100
    targets[1, 101:] = -100
    supervised = int((targets != -100).sum())
    assert supervised == 112

    batched = copy.deepcopy(model)
    batched(idx, targets)[1].backward()

    accumulated = copy.deepcopy(model)
    for row in range(2):
        logits, _ = accumulated(idx[row : row + 1])
        loss_sum = F.cross_entropy(logits.view(-1, 50), targets[row].view(-1), ignore_index=-100, reduction="sum")
        (loss_sum / supervised).backward()

    naive = copy.deepcopy(model)  # mean per micro-batch, then mean of means: weights the short row up
    for row in range(2):
        (naive(idx[row : row + 1], targets[row : row + 1])[1] / 2).backward()

    for p_batched, p_acc, p_naive in zip(batched.parameters(), accumulated.parameters(), naive.parameters()):
        torch.testing.assert_close(p_acc.grad, p_batched.grad, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(next(naive.parameters()).grad, next(batched.parameters()).grad, atol=1e-6)


def comparable(metrics_csv):
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_csv(metrics_csv)]


def test_resume_is_bitwise(tmp_path):
    args = [*TINY, "--train.max_iters=300", "--train.eval_interval=40", "--model.dropout=0.1",
            f"--data.dir={tmp_path / 'char'}"]
    run_script([*args, f"--run.results_dir={tmp_path / 'whole'}"])
    kill_after_first_checkpoint([*args, f"--run.results_dir={tmp_path / 'killed'}"])
    killed = only_run_dir(tmp_path / "killed")
    assert not (killed / "summary.json").exists()
    run_script(["charlm/train.py", f"--run.resume={killed}"])
    whole = only_run_dir(tmp_path / "whole")
    assert comparable(killed / "metrics.csv") == comparable(whole / "metrics.csv")
    a = load_checkpoint(whole / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(killed / "checkpoints" / "last.pt")["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_short_run_learns(tmp_path):
    run_script([*TINY, "--train.max_iters=300", "--train.lr_decay_iters=300", "--train.eval_interval=300",
                f"--data.dir={tmp_path / 'char'}",
                f"--run.results_dir={tmp_path / 'results'}"])
    summary = json.loads((only_run_dir(tmp_path / "results") / "summary.json").read_text())
    # Uniform over 65 characters is ln 65 = 4.17; unigram character frequencies give 3.35 on val.
    assert summary["best_val_loss"] < 3.0
    assert summary["steps"] == 300

    run_dir = only_run_dir(tmp_path / "results")
    greedy = ["charlm/sample.py", "--run", str(run_dir), "--prompt", "ROMEO:", "--temperature", "0",
              "--num-samples", "2", "--max-new-tokens", "40"]
    first, second = run_script(greedy).stdout.split("-" * 40 + "\n")[:2]
    assert first.startswith("ROMEO:")
    assert len(first.rstrip("\n")) == len("ROMEO:") + 40
    assert first == second  # greedy decoding does not depend on the sampling seed
    scored = run_script(["lm/eval.py", "--run", str(run_dir), "--max-tokens", "2001", "--window", "32", "--stride", "16"])
    assert "val: 2,000 tokens scored with window 32, stride 16" in scored.stdout
    loss = float(scored.stdout.split("| loss ")[1].split()[0])
    assert loss < 3.0
    proc = run_script(["charlm/sample.py", "--run", str(run_dir), "--prompt", "ROMEO ©"], check=False)
    assert proc.returncode == 2
    assert "outside the vocabulary" in proc.stderr
