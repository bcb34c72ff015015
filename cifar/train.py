"""Train a CIFAR-10 classifier (MLP, plain CNN or small ResNet) with the repository's training contract.

    python cifar/train.py --config cifar/configs/resnet.yaml                  # the embedded sample, CPU
    python cifar/train.py --config cifar/configs/cnn.yaml --data.augment=false
    torchrun --standalone --nproc_per_node=2 cifar/train.py --config cifar/configs/resnet.yaml
    python cifar/train.py --config cifar/configs/speedrun.yaml --data.dir=data/cifar10-full --data.download=true
    python cifar/train.py --help                                              # every key

The run directory, metrics, checkpoints, resume, DDP and autocast behave as in mnist/train.py (both
use common.trainer). Augmentation (random crop with zero padding, horizontal flip) runs batched on
the training device. On CUDA, images and conv weights use channels_last memory order.
"""

import time
from dataclasses import dataclass, field

import torch

from cifar.data import OFFICIAL_URL, augment, load_cifar10
from cifar.model import build_model, forward_flops_per_image
from common.config import RunConfig, SystemConfig, parse_config
from common.dist import DistInfo, setup_distributed, teardown_distributed
from common.errors import UserError, run_cli
from common.seed import seed_everything
from common.trainer import TrainConfig, check_system, fit, validate_common


@dataclass
class ModelConfig:
    name: str = field(default="resnet", metadata={"help": "architecture", "choices": ("mlp", "cnn", "resnet")})
    width: int = field(default=16, metadata={"help": "channels of the first CNN or ResNet stage (later stages double it)"})
    hidden: int = field(default=512, metadata={"help": "MLP hidden units (the second layer has half)"})
    blocks: int = field(default=1, metadata={"help": "ResNet BasicBlocks per stage (3 gives ResNet-20)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout before the MLP and CNN output layers"})


@dataclass
class DataConfig:
    dir: str = field(default="data/cifar10", metadata={"help": "folder with data_batch_*.bin[.gz] and test_batch.bin[.gz]"})
    val_size: int = field(default=250, metadata={"help": "training images held out for validation (use 5000 for the full set)"})
    split_seed: int = field(default=0, metadata={"help": "seed of the train/val split, fixed across run seeds"})
    train_size: int = field(default=0, metadata={"help": "use only the first N training images after the split (0 = all)"})
    augment: bool = field(default=True, metadata={"help": "random crop with padding and horizontal flip on training batches"})
    crop_padding: int = field(default=4, metadata={"help": "zero padding in pixels for the random crop (0 = no crop)"})
    flip: bool = field(default=True, metadata={"help": "random horizontal flip"})
    download: bool = field(default=False, metadata={"help": "fetch the official binary archive into data.dir, verify size and MD5"})
    url: str = field(default=OFFICIAL_URL, metadata={"help": "URL of cifar-10-binary.tar.gz for data.download"})


def cifar_train_defaults() -> TrainConfig:
    return TrainConfig(epochs=10, batch_size=128, lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=5e-4,
                       schedule="onecycle", warmup_steps=50, label_smoothing=0.1, log_every=20)


@dataclass
class Config:
    run: RunConfig = field(default_factory=lambda: RunConfig(name="cifar"))
    train: TrainConfig = field(default_factory=cifar_train_defaults)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    system: SystemConfig = field(default_factory=SystemConfig)

    def validate(self) -> None:
        validate_common(self)
        for key, value in {"model.width": self.model.width, "model.hidden": self.model.hidden,
                           "model.blocks": self.model.blocks, "data.val_size": self.data.val_size}.items():
            if value <= 0:
                raise UserError(f"config key {key} is {value}, must be positive")
        for key, value in {"data.train_size": self.data.train_size, "data.crop_padding": self.data.crop_padding}.items():
            if value < 0:
                raise UserError(f"config key {key} is {value}, must be zero or positive")
        if not 0 <= self.model.dropout < 1:
            raise UserError(f"config key model.dropout is {self.model.dropout}, must be in [0, 1)")


def main(argv) -> dict:
    cfg = parse_config(Config, argv, prog="cifar/train.py", description=__doc__.split("\n\n")[0])
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
    data = load_cifar10(cfg.data.dir, cfg.data.val_size, cfg.data.split_seed, cfg.data.train_size,
                        cfg.data.download, cfg.data.url, log=print if info.is_main else (lambda _: None))

    # Model: initialised from run.seed alone, so every rank starts from the same weights.
    seed_everything(cfg.run.seed)
    model = build_model(cfg.model.name, cfg.model.width, cfg.model.hidden, cfg.model.blocks, cfg.model.dropout)
    model = model.to(info.device)
    if info.is_main:
        params = sum(p.numel() for p in model.parameters())
        print(f"{cfg.model.name}: {params:,} parameters, {forward_flops_per_image(model) / 1e6:.1f} MFLOP "
              f"per image forward (about 3x that per trained image)")

    def augment_batch(x: torch.Tensor) -> torch.Tensor:
        return augment(x, padding=cfg.data.crop_padding, flip=cfg.data.flip)

    return fit(cfg, info, data, model, script_start=script_start,
               augment=augment_batch if cfg.data.augment else None,
               channels_last=info.device.type == "cuda" and cfg.model.name != "mlp")


if __name__ == "__main__":
    run_cli(main)
