"""lm/train.py on packed BPE shards: windows stay inside a file, it learns, DDP runs, the time limit stops it."""

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from common.checkpoint import load_checkpoint, load_model_state
from lm.bpe import BPETokenizer
from lm.model import GPT, GPTConfig
from lm.prepare import prepare
from lm.train import get_batch
from tests.conftest import REPO, only_run_dir, run_script, run_torchrun

VOCAB = 320


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """The first 200 kB of tiny Shakespeare in a 320-token BPE, speeches as documents, 20k-token shards."""
    root = tmp_path_factory.mktemp("bpe")
    text = (REPO / "data" / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:200_000]
    (root / "input.txt").write_text(text)
    BPETokenizer.train(text, VOCAB).save(root / "bpe.json")
    meta = prepare([str(root / "input.txt")], str(root / "bpe.json"), str(root / "data"), shard_tokens=20_000,
                   text_docs="paragraph", val_split="last", log=lambda line: None)
    assert len(meta["splits"]["train"]["files"]) > 2
    return root / "data"


TINY = ["lm/train.py", "--model.n_layer=2", "--model.n_embd=32", "--model.n_head=2", "--model.block_size=32",
        "--train.batch_size=8", "--train.eval_iters=4", "--train.log_interval=10", "--train.warmup_iters=10",
        "--model.attention=sdpa", "--system.device=cpu"]


def test_get_batch_windows_within_files():
    files = [np.arange(0, 10, dtype="<u2"), np.arange(100, 105, dtype="<u2")]
    generator = torch.Generator().manual_seed(0)
    x, y = get_batch(files, 9000, 2, generator, torch.device("cpu"))
    assert torch.equal(y[:, 0], x[:, 1])
    counts = Counter(x[:, 0].tolist())
    # Starts 0..7 of the first file and 100..102 of the second; a window crossing files would start at 8, 9 or 103.
    assert set(counts) == set(range(8)) | {100, 101, 102}
    assert all(700 < c < 1300 for c in counts.values())  # uniform over the 11 windows: about 818 each


def test_learns_on_bpe_shards_and_samples(tmp_path, shards):
    run_script([*TINY, f"--data.dir={shards}", "--train.max_iters=200", "--train.lr_decay_iters=200",
                "--train.eval_interval=100", f"--run.results_dir={tmp_path}"])
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_val_loss"] < math.log(VOCAB) - 1.0  # uniform over 320 tokens is 5.77 nats
    sample = run_script(["charlm/sample.py", "--run", str(run_dir), "--prompt", "KING", "--num-samples", "1",
                         "--max-new-tokens", "20"]).stdout
    assert sample.startswith("KING")
    assert len(sample) > len("KING") + 20
    scored = run_script(["lm/eval.py", "--run", str(run_dir), "--max-tokens", "1000"]).stdout
    assert "val: 999 tokens scored" in scored


def test_time_limit_stops_early(tmp_path, shards):
    run_script([*TINY, f"--data.dir={shards}", "--train.max_iters=100000", "--train.time_limit_s=2",
                "--train.eval_interval=100000", f"--run.results_dir={tmp_path}"])
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["stopped_by_time_limit"] is True
    assert 0 < summary["steps"] < 100000
    assert 2 <= summary["step_time_s"] < 10


def test_missing_data_is_one_clear_error(tmp_path):
    proc = run_script([*TINY, f"--data.dir={tmp_path / 'nothing'}", f"--run.results_dir={tmp_path}"], check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: data.dir")
    assert "lm/prepare.py" in proc.stderr


@pytest.mark.multiprocess
def test_two_ranks_with_accumulation(tmp_path, shards):
    run_torchrun(2, [*TINY, f"--data.dir={shards}", "--train.max_iters=30", "--train.lr_decay_iters=30",
                     "--train.grad_accum_steps=2", "--train.eval_interval=15", f"--run.results_dir={tmp_path}"])
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["steps"] == 30
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert len(ckpt["rng_states"]) == 2
    assert ckpt["step"] == 30
    # Saved from the DDP-wrapped model: clean keys that load strictly into a plain GPT.
    assert not any(key.startswith("module.") for key in ckpt["model"])
    plain = GPT(GPTConfig(**ckpt["model_config"]))
    load_model_state(plain, ckpt["model"], "last.pt")
    assert plain.lm_head.weight.data_ptr() == plain.wte.weight.data_ptr()
