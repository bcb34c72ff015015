"""End-to-end behaviour of mnist/train.py: determinism, bitwise resume, checkpoints, accumulation, AMP."""

import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from common import checkpoint
from common.checkpoint import load_checkpoint, save_checkpoint
from mnist.data import load_mnist
from mnist.model import build_model
from common.trainer import TIMING_COLUMNS, train_step
from tests.conftest import REPO, only_run_dir, read_csv, run_script, script_env

SMALL_MLP = [
    "mnist/train.py", "--config", "mnist/configs/mlp.yaml", "--data.train_size=4000", "--train.epochs=2",
    "--train.batch_size=64", "--train.log_every=10", "--train.eval_every=25", "--train.warmup_steps=10",
]


def comparable_rows(metrics_csv):
    """metrics.csv rows without the columns that measure time and memory."""
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_csv(metrics_csv)]


def test_same_seed_gives_identical_metrics(tmp_path):
    for name in ("a", "b"):
        run_script([*SMALL_MLP, f"--run.results_dir={tmp_path / name}"])
    rows_a = comparable_rows(only_run_dir(tmp_path / "a") / "metrics.csv")
    rows_b = comparable_rows(only_run_dir(tmp_path / "b") / "metrics.csv")
    assert len(rows_a) > 10
    assert rows_a == rows_b


def test_other_seed_gives_other_metrics(tmp_path):
    run_script([*SMALL_MLP, f"--run.results_dir={tmp_path / 'a'}", "--run.seed=1"])
    run_script([*SMALL_MLP, f"--run.results_dir={tmp_path / 'b'}", "--run.seed=2"])
    rows_a = comparable_rows(only_run_dir(tmp_path / "a") / "metrics.csv")
    rows_b = comparable_rows(only_run_dir(tmp_path / "b") / "metrics.csv")
    assert rows_a[0]["loss"] != rows_b[0]["loss"]


def test_run_directory_contents(tmp_path):
    run_script([*SMALL_MLP, f"--run.results_dir={tmp_path}", "--train.max_steps=30"])
    run_dir = only_run_dir(tmp_path)
    for name in ("config.yaml", "metrics.csv", "summary.json", "train.log", "checkpoints/last.pt",
                 "checkpoints/best.pt", "plots/loss.png", "plots/acc.png", "plots/lr.png"):
        assert (run_dir / name).is_file(), name
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("test_acc", "test_loss", "params", "train_time_s", "samples_per_s", "device",
                "world_size", "torch_version", "git_commit"):
        assert key in summary, key
    assert summary["steps"] == 30
    assert summary["test_examples"] == 10000
    rows = read_csv(run_dir / "metrics.csv")
    assert [r["split"] for r in rows][-1] == "test"


def test_max_steps_keeps_full_schedule(tmp_path):
    # Cosine over 2 epochs of 62 steps: stopping at 30 must show the LR of step 30 of that schedule.
    run_script([*SMALL_MLP, f"--run.results_dir={tmp_path / 'cut'}", "--train.max_steps=30"])
    run_script([*SMALL_MLP, f"--run.results_dir={tmp_path / 'full'}"])
    cut = [r["lr"] for r in read_csv(only_run_dir(tmp_path / "cut") / "metrics.csv") if r["split"] == "train"]
    full = [r["lr"] for r in read_csv(only_run_dir(tmp_path / "full") / "metrics.csv") if r["split"] == "train"]
    assert cut == full[: len(cut)]


def test_new_run_never_overwrites(tmp_path):
    args = [*SMALL_MLP, f"--run.results_dir={tmp_path}", "--train.max_steps=5", "--run.name=same"]
    run_script(args)
    run_script(args)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def kill_after_first_checkpoint(args: list[str], marker: str = "checkpoint saved at step") -> None:
    """Start a run, SIGKILL it as soon as a line starts with marker (by default its first checkpoint)."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=script_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            if line.startswith(marker):
                proc.kill()
                break
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -9, "the run ended before it could be killed"


def test_resume_after_kill_is_bitwise_identical(tmp_path):
    args = [
        "mnist/train.py", "--config", "mnist/configs/cnn.yaml", "--data.train_size=8000", "--train.epochs=2",
        "--train.batch_size=32", "--train.log_every=10", "--train.ckpt_every=40", "--train.eval_every=60",
        "--system.num_workers=2", "--model.width=8",
    ]
    run_script([*args, f"--run.results_dir={tmp_path / 'whole'}"])
    kill_after_first_checkpoint([*args, f"--run.results_dir={tmp_path / 'killed'}"])
    killed_dir = only_run_dir(tmp_path / "killed")
    assert not (killed_dir / "summary.json").exists()
    killed_step = load_checkpoint(killed_dir / "checkpoints" / "last.pt")["step"]
    assert 0 < killed_step < 500
    run_script([*args, f"--run.resume={killed_dir}"])

    whole_dir = only_run_dir(tmp_path / "whole")
    whole_rows = comparable_rows(whole_dir / "metrics.csv")
    resumed_rows = comparable_rows(killed_dir / "metrics.csv")
    assert [r["loss"] for r in resumed_rows] == [r["loss"] for r in whole_rows]
    assert [r["lr"] for r in resumed_rows] == [r["lr"] for r in whole_rows]
    assert resumed_rows == whole_rows
    whole = load_checkpoint(whole_dir / "checkpoints" / "last.pt")
    resumed = load_checkpoint(killed_dir / "checkpoints" / "last.pt")
    assert whole["step"] == resumed["step"] == 500
    for key, tensor in whole["model"].items():
        assert torch.equal(tensor, resumed["model"][key]), key
    assert "resumed from step" in (killed_dir / "train.log").read_text()


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "step": 1})

    def crashing_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"model": {"w": torch.zeros(3)}, "step": 2})
    monkeypatch.undo()
    state = load_checkpoint(path)
    assert state["step"] == 1
    assert torch.equal(state["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_process_killed_during_save_keeps_previous_checkpoint(tmp_path):
    # The child dies with os._exit in the middle of writing, as a power cut or SIGKILL would.
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(3)}, "step": 1})
    code = (
        "import os, torch\n"
        "from common import checkpoint\n"
        "def dying_save(obj, f):\n"
        "    f.write(b'partial'); f.flush(); os._exit(9)\n"
        "torch.save = dying_save\n"
        f"checkpoint.save_checkpoint({str(path)!r}, {{'step': 2}})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=script_env())
    assert proc.returncode == 9
    assert load_checkpoint(path)["step"] == 1


def test_checkpoint_rejects_non_tensor_pickles(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "payload": object()}, path)
    with pytest.raises(Exception, match="cannot be read"):
        load_checkpoint(path)


@pytest.fixture(scope="module")
def real_batch():
    data = load_mnist(str(REPO / "data" / "mnist"), 5000, 0, train_size=64)
    return data["train"].batch(list(range(64)))


@pytest.mark.parametrize("name", ["softmax", "mlp"])
def test_grad_accumulation_matches_large_batch(real_batch, name):
    # BatchNorm makes micro-batches differ from one batch by design, so the CNN is not in this test.
    x, y = real_batch
    torch.manual_seed(0)
    model = build_model(name, width=8, hidden=64, dropout=0.0)
    reference = copy.deepcopy(model)
    F.cross_entropy(reference(x), y).backward()
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for n_micro in (1, 4):
        accumulated = copy.deepcopy(model)
        micro = list(zip(x.split(64 // n_micro), y.split(64 // n_micro)))
        totals = train_step(accumulated, micro, global_count=64, world_size=1, amp_dtype="float32", scaler=scaler)
        assert totals[2].item() == 64
        for (pname, p_ref), p_acc in zip(reference.named_parameters(), accumulated.parameters()):
            torch.testing.assert_close(p_acc.grad, p_ref.grad, rtol=1e-5, atol=1e-6, msg=pname)


def test_bfloat16_autocast_trains(tmp_path):
    run_script([*SMALL_MLP, f"--run.results_dir={tmp_path}", "--system.dtype=bfloat16"])
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["dtype"] == "bfloat16"
    train_losses = [float(r["loss"]) for r in read_csv(run_dir / "metrics.csv") if r["split"] == "train"]
    assert train_losses[-1] < 0.5 * train_losses[0]
    assert summary["test_acc"] > 0.85


@pytest.mark.slow
def test_cnn_reaches_98_percent(tmp_path):
    run_script(["mnist/train.py", "--config", "mnist/configs/cnn.yaml", "--train.epochs=1",
                f"--run.results_dir={tmp_path}"])
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["test_acc"] >= 0.98
    assert summary["test_examples"] == 10000


def test_unwrap_compiled_model_gives_clean_keys():
    model = build_model("mlp", width=8, hidden=16, dropout=0.0)
    compiled = torch.compile(model)  # wrapping is lazy: nothing compiles until the first forward
    assert all(key.startswith("_orig_mod.") for key in compiled.state_dict())
    assert list(checkpoint.unwrap_model(compiled).state_dict()) == list(model.state_dict())


def test_schedule_steps_spans_epochs(tmp_path):
    # 4000 images / 64 = 62 steps per epoch; a 100-step schedule crosses into the second epoch.
    run_script([*SMALL_MLP, f"--run.results_dir={tmp_path}", "--train.schedule_steps=100", "--train.epochs=1"])
    run_dir = only_run_dir(tmp_path)
    rows = read_csv(run_dir / "metrics.csv")
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows[-1]["step"] == "100"
    assert train_rows[-1]["epoch"] == "1"
    assert float(train_rows[-1]["lr"]) < 1e-5  # cosine has decayed to about zero at the last step
    assert [r["step"] for r in rows if r["split"] == "val"] == ["25", "50", "62", "75", "100"]
