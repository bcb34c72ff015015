"""Train a character-level GPT (lm.model) on tiny Shakespeare with the repository's training contract.

    python charlm/train.py --config charlm/configs/cpu.yaml                   # 2,000 iterations on a CPU
    python charlm/train.py --config charlm/configs/cpu.yaml --train.max_iters=50
    torchrun --standalone --nproc_per_node=2 charlm/train.py --config charlm/configs/cpu.yaml
    python charlm/train.py --config charlm/configs/gpu.yaml --system.dtype=bfloat16
    python charlm/train.py --run.resume=results/charlm_cpu_20260101-120000
    python charlm/train.py --help

Each iteration draws `train.batch_size` random windows of block_size + 1 characters from the
training tokens (the batch is global: split over ranks and accumulation micro-steps). The LR
warms up linearly, then follows a cosine to min_lr at lr_decay_iters. Every eval_interval
iterations the mean loss over eval_iters random batches of train and val is logged and a
checkpoint saved; the run directory, resume and DDP behave as in mnist/train.py.
"""

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from charlm.prepare import prepare
from common.checkpoint import load_checkpoint, load_model_state, save_checkpoint, unwrap_model
from common.config import RunConfig, SystemConfig, config_to_dict, dump_yaml, parse_config
from common.dist import (
    DistInfo, all_gather_objects, all_reduce_sum, barrier, broadcast_object, setup_distributed, teardown_distributed,
)
from common.errors import UserError, run_cli
from common.perf import peak_memory_mb, peak_tflops, reset_peak_memory, sync
from common.plots import plot_run
from common.run import MetricsWriter, create_run_dir, git_commit, setup_logging, write_json_atomic, write_text_atomic
from common.seed import capture_rng_state, rank_seed, restore_rng_state, seed_everything
from common.trainer import autocast_context, check_system, resolve_resume_dir
from lm.model import GPT, GPTConfig


@dataclass
class TrainConfig:
    max_iters: int = field(default=2000, metadata={"help": "optimizer steps of the run"})
    batch_size: int = field(default=12, metadata={"help": "global batch: sequences per optimizer step over all ranks and micro-steps"})
    grad_accum_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step on each rank"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    min_lr: float = field(default=1e-4, metadata={"help": "learning rate at and after lr_decay_iters"})
    warmup_iters: int = field(default=100, metadata={"help": "linear warmup steps"})
    lr_decay_iters: int = field(default=2000, metadata={"help": "step at which the cosine reaches min_lr"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay on matrices only"})
    beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    beta2: float = field(default=0.99, metadata={"help": "AdamW beta2"})
    grad_clip: float = field(default=1.0, metadata={"help": "clip the global gradient norm (0 = no clipping)"})
    eval_interval: int = field(default=250, metadata={"help": "steps between loss estimates and checkpoints"})
    eval_iters: int = field(default=20, metadata={"help": "batches per loss estimate and split"})
    log_interval: int = field(default=10, metadata={"help": "steps between train log lines"})


@dataclass
class ModelConfig:
    n_layer: int = field(default=4, metadata={"help": "transformer blocks"})
    n_head: int = field(default=4, metadata={"help": "attention heads"})
    n_embd: int = field(default=128, metadata={"help": "embedding width"})
    block_size: int = field(default=64, metadata={"help": "context length in characters"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability"})
    bias: bool = field(default=False, metadata={"help": "biases in linear layers and LayerNorms"})
    attention: str = field(default="manual", metadata={"help": "attention implementation", "choices": ("manual", "sdpa")})


@dataclass
class DataConfig:
    dir: str = field(default="data/tinyshakespeare/char", metadata={"help": "folder with train.bin, val.bin, meta.json (made from data.input when missing)"})
    input: str = field(default="data/tinyshakespeare/input.txt", metadata={"help": "text file to prepare when data.dir has no token files"})


@dataclass
class Config:
    run: RunConfig = field(default_factory=lambda: RunConfig(name="charlm"))
    train: TrainConfig = field(default_factory=TrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    system: SystemConfig = field(default_factory=SystemConfig)

    def validate(self) -> None:
        positive = {"train.max_iters": self.train.max_iters, "train.batch_size": self.train.batch_size,
                    "train.grad_accum_steps": self.train.grad_accum_steps, "train.eval_interval": self.train.eval_interval,
                    "train.eval_iters": self.train.eval_iters, "train.log_interval": self.train.log_interval,
                    "train.lr_decay_iters": self.train.lr_decay_iters, "model.n_layer": self.model.n_layer,
                    "model.n_head": self.model.n_head, "model.n_embd": self.model.n_embd, "model.block_size": self.model.block_size}
        for key, value in positive.items():
            if value <= 0:
                raise UserError(f"config key {key} is {value}, must be positive")
        if self.model.n_embd % self.model.n_head:
            raise UserError(f"config key model.n_embd {self.model.n_embd} is not divisible by model.n_head {self.model.n_head}")
        if not 0 < self.train.min_lr <= self.train.lr:
            raise UserError(f"config key train.min_lr is {self.train.min_lr}, must be in (0, train.lr]")


METRIC_COLUMNS = ["step", "split", "loss", "lr", "grad_norm", "tokens_per_s", "ms_per_step", "peak_mem_mb", "mfu", "elapsed_s"]
TIMING_COLUMNS = ["tokens_per_s", "ms_per_step", "peak_mem_mb", "mfu", "elapsed_s"]


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to lr, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    if step >= cfg.lr_decay_iters:
        return cfg.min_lr
    progress = (step - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def load_tokens(cfg: Config, log) -> tuple[np.ndarray, np.ndarray, int]:
    """Memory-map train.bin and val.bin (preparing them from data.input when missing)."""
    data_dir = Path(cfg.data.dir)
    if not (data_dir / "meta.json").is_file():
        if not Path(cfg.data.input).is_file():
            raise UserError(f"data.dir {data_dir} has no meta.json and data.input {cfg.data.input} is not a file; "
                            f"run charlm/prepare.py or pass --data.input=<text file>")
        meta = prepare(cfg.data.input, str(data_dir))
        log(f"prepared {data_dir} from {cfg.data.input}: {meta['vocab_size']} characters")
    meta = json.loads((data_dir / "meta.json").read_text())
    train = np.memmap(data_dir / "train.bin", dtype="<u2", mode="r")
    val = np.memmap(data_dir / "val.bin", dtype="<u2", mode="r")
    for name, tokens in (("train", train), ("val", val)):
        if len(tokens) <= cfg.model.block_size + 1:
            raise UserError(f"{data_dir / (name + '.bin')} has {len(tokens)} tokens, too few for block_size {cfg.model.block_size}")
    return train, val, meta["vocab_size"]


def get_batch(tokens: np.ndarray, batch: int, block: int, generator: torch.Generator, device: torch.device):
    """Random windows: x = tokens[i : i + block], y = tokens[i + 1 : i + block + 1], each (batch, block)."""
    starts = torch.randint(len(tokens) - block - 1, (batch,), generator=generator)
    x = torch.stack([torch.from_numpy(tokens[s : s + block].astype(np.int64)) for s in starts.tolist()])
    y = torch.stack([torch.from_numpy(tokens[s + 1 : s + 1 + block].astype(np.int64)) for s in starts.tolist()])
    return x.to(device), y.to(device)


@torch.no_grad()
def estimate_loss(model, tokens, cfg: Config, info: DistInfo, micro_batch: int) -> float:
    """Mean loss over eval_iters batches per rank, drawn from a fixed generator so every estimate uses the same windows."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(10_000 + info.rank)
    total = torch.zeros(2, dtype=torch.float64, device=info.device)
    for _ in range(cfg.train.eval_iters):
        x, y = get_batch(tokens, micro_batch, cfg.model.block_size, generator, info.device)
        with autocast_context(info.device, cfg.system.dtype):
            _, loss = model(x, y)
        total += torch.stack([loss.double() * y.numel(), torch.tensor(float(y.numel()), dtype=torch.float64, device=info.device)])
    all_reduce_sum(total, info)
    model.train(was_training)
    return (total[0] / total[1]).item()


def main(argv) -> dict:
    cfg = parse_config(Config, argv, prog="charlm/train.py", description=__doc__.split("\n\n")[0])
    info = setup_distributed(cfg.system.device, cfg.system.dist_timeout_s)
    try:
        return train(cfg, info)
    finally:
        teardown_distributed()


def train(cfg: Config, info: DistInfo) -> dict:
    check_system(cfg, info)
    per_step = info.world_size * cfg.train.grad_accum_steps
    if cfg.system.threads > 0:
        torch.set_num_threads(cfg.system.threads)
    log = setup_logging(None, info.is_main)
    micro_batch = cfg.train.batch_size // per_step
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size

    # Data and model. Weights come from run.seed on every rank; batches from a per-rank generator.
    train_tokens, val_tokens, vocab_size = load_tokens(cfg, log.info)
    seed_everything(cfg.run.seed)
    gpt_cfg = GPTConfig(vocab_size=vocab_size, block_size=cfg.model.block_size, n_layer=cfg.model.n_layer,
                        n_head=cfg.model.n_head, n_embd=cfg.model.n_embd, dropout=cfg.model.dropout,
                        bias=cfg.model.bias, attention=cfg.model.attention)
    raw_model = GPT(gpt_cfg).to(info.device)
    optimizer = torch.optim.AdamW(raw_model.param_groups(cfg.train.weight_decay), lr=cfg.train.lr,
                                  betas=(cfg.train.beta1, cfg.train.beta2))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.system.dtype == "float16")
    seed_everything(rank_seed(cfg.run.seed, info.rank))
    data_generator = torch.Generator().manual_seed(rank_seed(cfg.run.seed, info.rank))
    peak = peak_tflops(info.device, cfg.system.peak_tflops)

    # Resume or start a run directory.
    step, best_val, elapsed_before, keep_rows = 0, float("inf"), 0.0, None
    if cfg.run.resume:
        run_dir, ckpt_path = resolve_resume_dir(cfg.run.resume)
        ckpt = load_checkpoint(ckpt_path)
        if "optimizer" not in ckpt:
            raise UserError(f"checkpoint {ckpt_path} contains only model weights; resume from the run directory {run_dir}")
        load_model_state(raw_model, ckpt["model"], str(ckpt_path))
        if (run_dir / "summary.json").exists() and ckpt["step"] >= cfg.train.max_iters:
            raise UserError(f"run {run_dir} already finished at step {ckpt['step']}; start a new run instead of resuming")
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        if len(ckpt["rng_states"]) == info.world_size:
            restore_rng_state(ckpt["rng_states"][info.rank])
            data_generator.set_state(ckpt["data_generator_states"][info.rank])
        elif info.is_main:
            log.warning(f"warning: checkpoint has RNG states of {len(ckpt['rng_states'])} ranks, this job has {info.world_size}")
        step, best_val, elapsed_before, keep_rows = ckpt["step"], ckpt["best_val"], ckpt["train_time_s"], ckpt["metrics_rows"]
    else:
        run_dir = Path(broadcast_object(str(create_run_dir(cfg.run.results_dir, cfg.run.name)) if info.is_main else None, info))
    metrics = None
    if info.is_main:
        log = setup_logging(run_dir, True)
        if keep_rows is None:
            write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
        metrics = MetricsWriter(run_dir / "metrics.csv", METRIC_COLUMNS, keep_rows=keep_rows)

    model = raw_model
    if cfg.system.compile:
        model = torch.compile(model)
    if info.enabled:
        model = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    flops_per_step = raw_model.flops_per_token(cfg.model.block_size) * tokens_per_step
    log.info(f"run dir {run_dir}")
    log.info(f"GPT {raw_model.num_params():,} parameters (without positions) | vocab {vocab_size} | device {info.device} | "
             f"dtype {cfg.system.dtype} | world size {info.world_size}")
    log.info(f"global batch {cfg.train.batch_size} x {cfg.model.block_size} = {tokens_per_step:,} tokens/step | "
             f"{info.world_size} ranks x {cfg.train.grad_accum_steps} micro-steps x {micro_batch} | "
             f"{flops_per_step / 1e9:.2f} GFLOP/step | MFU peak {peak:.2f} TFLOP/s per rank")

    def save(name: str) -> None:
        """Gather every rank's RNG and batch-generator state and write the checkpoint from rank 0."""
        states = all_gather_objects((capture_rng_state(), data_generator.get_state()), info)
        if info.is_main:
            save_checkpoint(run_dir / "checkpoints" / name, {
                "model": unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng_states": [s[0] for s in states], "data_generator_states": [s[1] for s in states],
                "step": step, "best_val": best_val, "train_time_s": elapsed_before + time.perf_counter() - loop_start,
                "metrics_rows": metrics.rows, "config": config_to_dict(cfg), "model_config": vars(gpt_cfg),
            })

    # Training loop.
    reset_peak_memory(info.device)
    loop_start = time.perf_counter()
    interval_start, interval_steps, interval_loss = loop_start, 0, torch.zeros((), dtype=torch.float64, device=info.device)
    timed_seconds, timed_steps = 0.0, 0
    losses: dict[str, float] = {}
    while step < cfg.train.max_iters:
        lr = learning_rate(step, cfg.train)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        for micro in range(cfg.train.grad_accum_steps):
            x, y = get_batch(train_tokens, micro_batch, cfg.model.block_size, data_generator, info.device)
            no_sync = isinstance(model, DistributedDataParallel) and micro < cfg.train.grad_accum_steps - 1
            with model.no_sync() if no_sync else nullcontext():
                with autocast_context(info.device, cfg.system.dtype):
                    logits, _ = model(x)
                loss_sum = torch.nn.functional.cross_entropy(logits.float().view(-1, vocab_size), y.view(-1), reduction="sum")
                # Sum over tokens, divided by the tokens of the whole step; x world_size undoes DDP's mean over ranks.
                scaler.scale(loss_sum * (info.world_size / tokens_per_step)).backward()
            interval_loss += loss_sum.detach().double()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.train.grad_clip or float("inf"))
        scaler.step(optimizer)
        scaler.update()
        step += 1
        interval_steps += 1

        if step % cfg.train.log_interval == 0 or step == cfg.train.max_iters:
            sync(info.device)
            seconds = time.perf_counter() - interval_start
            if step > cfg.train.log_interval:
                timed_seconds, timed_steps = timed_seconds + seconds, timed_steps + interval_steps
            all_reduce_sum(interval_loss, info)
            train_loss = interval_loss.item() / (interval_steps * tokens_per_step)
            tokens_per_s = interval_steps * tokens_per_step / seconds
            step_mfu = raw_model.estimate_mfu(tokens_per_s, peak * 1e12 * info.world_size) if peak > 0 else None
            if info.is_main:
                metrics.log(step=step, split="train", loss=train_loss, lr=lr, grad_norm=grad_norm.item(),
                            tokens_per_s=tokens_per_s, ms_per_step=1000 * seconds / interval_steps,
                            peak_mem_mb=peak_memory_mb(info.device), mfu=step_mfu,
                            elapsed_s=elapsed_before + time.perf_counter() - loop_start)
            mfu_text = f" | mfu {100 * step_mfu:.1f}%" if step_mfu is not None else ""
            log.info(f"step {step}/{cfg.train.max_iters} | loss {train_loss:.4f} | lr {lr:.2e} | grad_norm {grad_norm.item():.3f} | "
                     f"{1000 * seconds / interval_steps:.1f} ms/step | {tokens_per_s:,.0f} tokens/s | "
                     f"peak_mem {peak_memory_mb(info.device):.0f} MB{mfu_text}")
            interval_loss.zero_()
            interval_start, interval_steps = time.perf_counter(), 0

        if step % cfg.train.eval_interval == 0 or step == cfg.train.max_iters:
            sync(info.device)
            pause_start = time.perf_counter()
            losses = {split: estimate_loss(raw_model, tokens, cfg, info, micro_batch)
                      for split, tokens in (("train", train_tokens), ("val", val_tokens))}
            if info.is_main:
                metrics.log(step=step, split="val", loss=losses["val"], elapsed_s=elapsed_before + time.perf_counter() - loop_start)
            improved = losses["val"] < best_val
            log.info(f"eval step {step} | train loss {losses['train']:.4f} | val loss {losses['val']:.4f}" + (" | new best" if improved else ""))
            if improved:
                best_val = losses["val"]
                if info.is_main:
                    save_checkpoint(run_dir / "checkpoints" / "best.pt", {"model": raw_model.state_dict(), "step": step,
                                                                          "val_loss": best_val, "model_config": vars(gpt_cfg)})
            save("last.pt")
            log.info(f"checkpoint saved at step {step}")
            interval_start += time.perf_counter() - pause_start
    train_time_s = elapsed_before + time.perf_counter() - loop_start

    summary = None
    if info.is_main:
        metrics.close()
        tokens_per_s = timed_steps * tokens_per_step / timed_seconds if timed_seconds else None
        summary = {
            "best_val_loss": best_val, "final_val_loss": losses.get("val"),
            "steps": step, "params": raw_model.num_params(), "train_time_s": train_time_s,
            "ms_per_step": 1000 * timed_seconds / timed_steps if timed_steps else None, "tokens_per_s": tokens_per_s,
            "mfu": raw_model.estimate_mfu(tokens_per_s, peak * 1e12 * info.world_size) if tokens_per_s and peak > 0 else None,
            "peak_mem_mb": peak_memory_mb(info.device), "device": str(info.device), "dtype": cfg.system.dtype,
            "world_size": info.world_size, "torch_version": torch.__version__, "git_commit": git_commit(),
            "run_dir": str(run_dir), "seed": cfg.run.seed,
        }
        write_json_atomic(run_dir / "summary.json", summary)
        plot_run(run_dir / "metrics.csv", run_dir / "plots", title=cfg.run.name)
        log.info(f"done in {train_time_s:.1f} s of training | best val loss {best_val:.4f} | summary {run_dir / 'summary.json'}")
    barrier(info)
    return {"summary": summary, "run_dir": run_dir, "model": raw_model}


if __name__ == "__main__":
    run_cli(main)
