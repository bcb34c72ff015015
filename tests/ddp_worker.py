"""A torchrun entry point for the multi-process tests; each mode writes what the test compares.

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py train OUT [train.py args]
    ... tests/ddp_worker.py eval OUT VAL_SIZE
    ... tests/ddp_worker.py fail OUT
"""

import json
import sys
from pathlib import Path

import torch

from common.dist import all_reduce_sum, setup_distributed, teardown_distributed
from mnist.data import load_mnist
from mnist.model import build_model
from common.trainer import evaluate
from mnist.train import main


def train_mode(out: Path, args: list[str]) -> None:
    result = main(args)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else int(__import__("os").environ.get("RANK", 0))
    torch.save(result["model"].state_dict(), out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({"fingerprints": result["fingerprints"], "run_dir": str(result["run_dir"])}))


def eval_mode(out: Path, val_size: int) -> None:
    info = setup_distributed("cpu", timeout_s=60)
    try:
        data = load_mnist("data/mnist", val_size, split_seed=0, train_size=1000)
        torch.manual_seed(0)
        model = build_model("mlp", width=8, hidden=32, dropout=0.0)
        loss, acc, count = evaluate(model, data["val"], info, batch_size=256, amp_dtype="float32")
        (out / f"eval{info.rank}_of{info.world_size}.json").write_text(json.dumps({"loss": loss, "acc": acc, "count": count}))
    finally:
        teardown_distributed()


def fail_mode(out: Path) -> None:
    """Rank 1 dies right after joining; rank 0 then waits in an all-reduce that can never complete."""
    info = setup_distributed("cpu", timeout_s=20)
    if info.rank == 1:
        sys.exit(3)
    all_reduce_sum(torch.ones(1), info)
    (out / "rank0_finished").write_text("the collective returned without its peer")


if __name__ == "__main__":
    mode, out_dir = sys.argv[1], Path(sys.argv[2])
    if mode == "train":
        train_mode(out_dir, sys.argv[3:])
    elif mode == "eval":
        eval_mode(out_dir, int(sys.argv[3]))
    else:
        fail_mode(out_dir)
