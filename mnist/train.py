"""Train an MNIST classifier (softmax regression, MLP or CNN) with the repository's training contract.

    python mnist/train.py --config mnist/configs/baseline.yaml                  # softmax, 1 epoch, CPU
    python mnist/train.py --config mnist/configs/cnn.yaml --train.epochs=1      # the CNN
    torchrun --standalone --nproc_per_node=2 mnist/train.py --config mnist/configs/ddp.yaml
    python mnist/train.py --config mnist/configs/cnn.yaml --run.resume=results/cnn_20260101-120000
    python mnist/train.py --help                                                # every key

Each run writes results/<name>_<YYYYmmdd-HHMMSS>/ with config.yaml, metrics.csv, summary.json,
train.log, checkpoints/{last,best}.pt and plots/. `train.batch_size` is the global batch: the
samples in one optimizer step summed over ranks and accumulation micro-steps, so a config means
the same optimisation whatever the world size. The validation split picks the best checkpoint;
the test set is evaluated once, at the end, with that checkpoint.
"""

import time
from dataclasses import dataclass, field

import torch

from common.config import RunConfig, SystemConfig, parse_config
from common.dist import DistInfo, setup_distributed, teardown_distributed
from common.errors import UserError, run_cli
from common.seed import seed_everything
from common.trainer import TrainConfig, check_system, fit, validate_common
from mnist.data import DEFAULT_URL, load_mnist
from mnist.model import build_model


@dataclass
class ModelConfig:
    name: str = field(default="softmax", metadata={"help": "architecture", "choices": ("softmax", "mlp", "cnn")})
    width: int = field(default=16, metadata={"help": "CNN channels in the first conv (the second has twice as many)"})
    hidden: int = field(default=128, metadata={"help": "hidden units of the MLP layers and the CNN head"})
    dropout: float = field(default=0.1, metadata={"help": "dropout probability in the MLP and the CNN head"})


@dataclass
class DataConfig:
    dir: str = field(default="data/mnist", metadata={"help": "folder with the four MNIST IDX files (gzip or raw)"})
    val_size: int = field(default=5000, metadata={"help": "training images held out for validation"})
    split_seed: int = field(default=0, metadata={"help": "seed of the train/val split, fixed across run seeds"})
    train_size: int = field(default=0, metadata={"help": "use only the first N training images after the split (0 = all)"})
    download: bool = field(default=False, metadata={"help": "fetch missing official files into data.dir and verify their MD5"})
    url: str = field(default=DEFAULT_URL, metadata={"help": "base URL of the MNIST mirror used by data.download"})


@dataclass
class Config:
    run: RunConfig = field(default_factory=lambda: RunConfig(name="mnist"))
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    system: SystemConfig = field(default_factory=SystemConfig)

    def validate(self) -> None:
        validate_common(self)
        for key, value in {"model.width": self.model.width, "model.hidden": self.model.hidden,
                           "data.val_size": self.data.val_size}.items():
            if value <= 0:
                raise UserError(f"config key {key} is {value}, must be positive")
        if self.data.train_size < 0:
            raise UserError(f"config key data.train_size is {self.data.train_size}, must be zero or positive")
        if not 0 <= self.model.dropout < 1:
            raise UserError(f"config key model.dropout is {self.model.dropout}, must be in [0, 1)")


def main(argv) -> dict:
    cfg = parse_config(Config, argv, prog="mnist/train.py", description=__doc__.split("\n\n")[0])
    info = setup_distributed(cfg.system.device, cfg.system.dist_timeout_s)
    try:
        return train(cfg, info)
    finally:
        teardown_distributed()


def train(cfg: Config, info: DistInfo) -> dict:
    script_start = time.perf_counter()
    check_system(cfg, info)
    if cfg.system.threads > 0:
        torch.set_num_threads(cfg.system.threads)

    # Data: everything that can fail on user input happens before a run directory exists.
    data = load_mnist(cfg.data.dir, cfg.data.val_size, cfg.data.split_seed, cfg.data.train_size,
                      cfg.data.download, cfg.data.url, log=print if info.is_main else (lambda _: None))

    # Model: initialised from run.seed alone, so every rank (and a 1-process run) starts from the same weights.
    seed_everything(cfg.run.seed)
    model = build_model(cfg.model.name, cfg.model.width, cfg.model.hidden, cfg.model.dropout).to(info.device)

    return fit(cfg, info, data, model, script_start=script_start)


if __name__ == "__main__":
    run_cli(main)
