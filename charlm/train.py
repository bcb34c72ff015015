"""Train a character-level GPT on tiny Shakespeare: lm/train.py with character data as the defaults.

    python charlm/train.py --config charlm/configs/cpu.yaml                   # 2,000 iterations on a CPU
    python charlm/train.py --config charlm/configs/cpu.yaml --train.max_iters=50
    torchrun --standalone --nproc_per_node=2 charlm/train.py --config charlm/configs/cpu.yaml
    python charlm/train.py --config charlm/configs/gpu.yaml --system.dtype=bfloat16
    python charlm/train.py --run.resume=results/charlm_cpu_20260101-120000
    python charlm/train.py --help

The loop, the config keys and the run directory are those of lm/train.py (read its docstring).
The one difference: when data.dir has no prepared characters, rank 0 first makes them from
data.input with charlm/prepare.py (a 90%/10% split by position, as nanoGPT does).
"""

from dataclasses import dataclass, field
from pathlib import Path

from charlm.prepare import prepare
from common.config import RunConfig
from common.errors import UserError, run_cli
from lm import train as lm_train


@dataclass
class CharDataConfig:
    dir: str = field(default="data/tinyshakespeare/char", metadata={"help": "folder with train.bin, val.bin, meta.json (made from data.input when missing)"})
    input: str = field(default="data/tinyshakespeare/input.txt", metadata={"help": "text file to prepare when data.dir has no token files"})


@dataclass
class Config(lm_train.Config):
    run: RunConfig = field(default_factory=lambda: RunConfig(name="charlm"))
    data: CharDataConfig = field(default_factory=CharDataConfig)


def prepare_if_missing(cfg: Config, log) -> None:
    """Make the character files when data.dir has none, or has them in the headerless format of older versions."""
    meta = Path(cfg.data.dir) / "meta.json"
    if meta.is_file() and '"format"' in meta.read_text():
        return
    if not Path(cfg.data.input).is_file():
        raise UserError(f"data.dir {cfg.data.dir} has no prepared characters and data.input {cfg.data.input} is not a "
                        f"file; run charlm/prepare.py or pass --data.input=<text file>")
    info = prepare(cfg.data.input, cfg.data.dir)
    log(f"prepared {cfg.data.dir} from {cfg.data.input}: {info['vocab_size']} characters")


def main(argv) -> dict:
    return lm_train.main(argv, Config, prog="charlm/train.py", doc=__doc__, prepare_data=prepare_if_missing)


if __name__ == "__main__":
    run_cli(main)
