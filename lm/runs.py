"""Open a run directory of lm/train.py or charlm/train.py: its model, data folder and tokenizer.

charlm/sample.py, lm/eval.py and infer/generate.py all start from a run directory, so they share
these checks and their error messages.
"""

from dataclasses import dataclass
from pathlib import Path

import yaml

from common.checkpoint import load_checkpoint, load_model_state
from common.errors import UserError
from lm.model import GPT, GPTConfig
from lm.tokens import load_tokenizer, read_meta


@dataclass
class Run:
    model: GPT
    data_dir: Path
    meta: dict  # the data folder's meta.json
    tokenizer: object  # see lm.tokens.load_tokenizer


def open_run(run, checkpoint: str = "best.pt", attention: str | None = None) -> Run:
    """Load a checkpoint of a run (in eval mode) with the tokenizer of the run's data folder."""
    run = Path(run)
    if not run.is_dir():
        raise UserError(f"run directory {run} not found; pass a folder that lm/train.py or charlm/train.py wrote, "
                        f"such as results/charlm_cpu_<stamp>")
    if not (run / "config.yaml").is_file():
        raise UserError(f"run directory {run} has no config.yaml; pass a folder written by lm/train.py or charlm/train.py")
    path = run / "checkpoints" / checkpoint
    if not path.is_file():
        present = sorted(p.name for p in (run / "checkpoints").glob("*.pt"))
        raise UserError(f"checkpoint {path} not found; the run has {present or 'no checkpoints'}")
    data_dir = Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["dir"])
    try:
        meta = read_meta(data_dir)
        tokenizer = load_tokenizer(data_dir)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the tokenizer of {data_dir}: {exc}; prepare the data with the run's settings") from None
    state = load_checkpoint(path)
    config = dict(state["model_config"])
    if attention:
        config["attention"] = attention
    model = GPT(GPTConfig(**config))
    load_model_state(model, state["model"], str(path))
    return Run(model.eval(), data_dir, meta, tokenizer)
