"""Train a GPT (lm.model) on a folder of token files with the repository's training contract.

    python lm/train.py --config lm/configs/bpe_cpu.yaml                     # tiny Shakespeare in BPE tokens
    python lm/train.py --config lm/configs/bpe_cpu.yaml --data.dir=data/my_corpus --train.max_iters=50
    torchrun --standalone --nproc_per_node=2 lm/train.py --config lm/configs/bpe_cpu.yaml
    python lm/train.py --run.resume=results/bpe_cpu_20260101-120000
    python lm/train.py --help

The data folder is what lm/prepare.py (or charlm/prepare.py, for characters) writes: token files
per split and a meta.json (lm/tokens.py). Each iteration draws `train.batch_size` random windows
of block_size + 1 tokens from the training files, and a window never crosses from one file into
the next. The batch is global: it is split over ranks and accumulation micro-steps. The loss of a
step is the sum over its tokens divided by the tokens of the whole step, so accumulation and
DDP give the gradient of one large batch. The LR warms up linearly, then follows a cosine to
min_lr at lr_decay_iters. Every eval_interval iterations the mean loss over eval_iters random
batches of train and val is logged and a checkpoint saved. The run directory, resume and DDP
behave as in mnist/train.py. charlm/train.py is this loop with character data as defaults.
"""

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

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
from lm.tokens import read_meta, read_split


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
    time_limit_s: float = field(default=0.0, metadata={"help": "stop after this many seconds of training, evaluation excluded (0 = no limit)"})


@dataclass
class ModelConfig:
    n_layer: int = field(default=4, metadata={"help": "transformer blocks"})
    n_head: int = field(default=4, metadata={"help": "attention heads"})
    n_embd: int = field(default=128, metadata={"help": "embedding width"})
    block_size: int = field(default=64, metadata={"help": "context length in tokens"})
    dropout: float = field(default=0.0, metadata={"help": "dropout probability"})
    bias: bool = field(default=False, metadata={"help": "biases in linear layers and LayerNorms"})
    attention: str = field(default="manual", metadata={"help": "attention implementation", "choices": ("manual", "sdpa")})


@dataclass
class DataConfig:
    dir: str = field(default="data/tinyshakespeare/bpe4096", metadata={"help": "folder written by lm/prepare.py: token files and meta.json"})


@dataclass
class Config:
    run: RunConfig = field(default_factory=lambda: RunConfig(name="lm"))
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
        if self.train.time_limit_s < 0:
            raise UserError(f"config key train.time_limit_s is {self.train.time_limit_s}, must be >= 0 (0 = no limit)")


METRIC_COLUMNS = ["step", "split", "loss", "lr", "grad_norm", "tokens_per_s", "ms_per_step", "peak_mem_mb", "mfu", "elapsed_s"]
TIMING_COLUMNS = ["tokens_per_s", "ms_per_step", "peak_mem_mb", "mfu", "elapsed_s"]


def short_run_overrides(iters: int) -> list[str]:
    """Return the overrides that shrink a config to `iters` iterations with a whole schedule (for smoke runs)."""
    return [f"--train.max_iters={iters}", f"--train.lr_decay_iters={iters}", f"--train.warmup_iters={max(1, iters // 10)}",
            f"--train.eval_interval={iters}", f"--train.log_interval={max(1, iters // 3)}"]


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to lr, cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / cfg.warmup_iters
    if step >= cfg.lr_decay_iters:
        return cfg.min_lr
    progress = (step - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def load_tokens(data_dir: str, block_size: int) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """Memory-map the train and val token files of a data folder; return them and the vocabulary size."""
    if not (Path(data_dir) / "meta.json").is_file():
        raise UserError(f"data.dir {data_dir} has no meta.json; make it with lm/prepare.py (BPE or gpt2 tokens) "
                        f"or charlm/prepare.py (characters)")
    try:
        meta = read_meta(data_dir)
        splits = {split: read_split(data_dir, split) for split in ("train", "val")}
    except ValueError as exc:
        raise UserError(str(exc)) from None
    for split, files in splits.items():
        if not any(len(t) > block_size for t in files):
            raise UserError(f"no {split} file in {data_dir} has block_size + 1 = {block_size + 1} tokens or more; "
                            f"lower model.block_size or prepare more data")
    return splits["train"], splits["val"], meta["vocab_size"]


def get_batch(files: list[np.ndarray], batch: int, block: int, generator: torch.Generator, device: torch.device):
    """Random windows: x = tokens[i : i + block], y = tokens[i + 1 : i + block + 1], each (batch, block).

    Every start position of every file is equally likely: a start is drawn over the windows of all
    files laid end to end, then mapped to its file.
    """
    windows = np.array([max(0, len(t) - block) for t in files])  # starts whose block + 1 tokens fit in the file
    ends = np.cumsum(windows)
    starts = torch.randint(int(ends[-1]), (batch,), generator=generator).tolist()
    xs, ys = [], []
    for start in starts:
        f = int(np.searchsorted(ends, start, side="right"))
        s = start - (int(ends[f - 1]) if f else 0)
        chunk = torch.from_numpy(files[f][s : s + block + 1].astype(np.int64))
        xs.append(chunk[:-1])
        ys.append(chunk[1:])
    return torch.stack(xs).to(device), torch.stack(ys).to(device)


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


def main(argv, config_class=Config, prog: str = "lm/train.py", doc: str = __doc__, prepare_data=None) -> dict:
    """Parse the config and train; prepare_data(cfg, log), when given, runs on rank 0 before the data is read."""
    cfg = parse_config(config_class, argv, prog=prog, description=doc.split("\n\n")[0])
    info = setup_distributed(cfg.system.device, cfg.system.dist_timeout_s)
    try:
        return train(cfg, info, prepare_data)
    finally:
        teardown_distributed()


def train(cfg: Config, info: DistInfo, prepare_data=None) -> dict:
    check_system(cfg, info)
    per_step = info.world_size * cfg.train.grad_accum_steps
    if cfg.system.threads > 0:
        torch.set_num_threads(cfg.system.threads)
    log = setup_logging(None, info.is_main)
    micro_batch = cfg.train.batch_size // per_step
    tokens_per_step = cfg.train.batch_size * cfg.model.block_size

    # Data and model. Weights come from run.seed on every rank; batches from a per-rank generator.
    if prepare_data is not None:
        if info.is_main:
            prepare_data(cfg, log.info)
        barrier(info)
    train_tokens, val_tokens, vocab_size = load_tokens(cfg.data.dir, cfg.model.block_size)
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
    step, best_val, elapsed_before, step_time_before, keep_rows = 0, float("inf"), 0.0, 0.0, None
    if cfg.run.resume:
        run_dir, ckpt_path = resolve_resume_dir(cfg.run.resume)
        ckpt = load_checkpoint(ckpt_path)
        if "optimizer" not in ckpt:
            raise UserError(f"checkpoint {ckpt_path} contains only model weights; resume from the run directory {run_dir}")
        load_model_state(raw_model, ckpt["model"], str(ckpt_path))
        if (run_dir / "summary.json").exists():
            raise UserError(f"run {run_dir} already finished at step {ckpt['step']}; start a new run instead of resuming")
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        if len(ckpt["rng_states"]) == info.world_size:
            restore_rng_state(ckpt["rng_states"][info.rank])
            data_generator.set_state(ckpt["data_generator_states"][info.rank])
        elif info.is_main:
            log.warning(f"warning: checkpoint has RNG states of {len(ckpt['rng_states'])} ranks, this job has {info.world_size}")
        step, best_val, elapsed_before, keep_rows = ckpt["step"], ckpt["best_val"], ckpt["train_time_s"], ckpt["metrics_rows"]
        step_time_before = ckpt["step_time_s"]
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
                "step_time_s": step_time(),
                "metrics_rows": metrics.rows, "config": config_to_dict(cfg), "model_config": vars(gpt_cfg),
            })

    # Training loop.
    reset_peak_memory(info.device)
    loop_start = time.perf_counter()
    interval_start, interval_steps, interval_loss = loop_start, 0, torch.zeros((), dtype=torch.float64, device=info.device)
    timed_seconds, timed_steps = 0.0, 0
    eval_seconds = 0.0  # evaluation and checkpoints of this session, left out of the time limit

    def step_time() -> float:
        return step_time_before + time.perf_counter() - loop_start - eval_seconds

    losses: dict[str, float] = {}
    out_of_time = False
    while step < cfg.train.max_iters and not out_of_time:
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
        if cfg.train.time_limit_s:
            # Ranks decide together, so they all stop after the same step.
            flag = torch.tensor(float(step_time() >= cfg.train.time_limit_s), dtype=torch.float64, device=info.device)
            all_reduce_sum(flag, info)
            out_of_time = flag.item() > 0
        last = step == cfg.train.max_iters or out_of_time

        if step % cfg.train.log_interval == 0 or last:
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

        if step % cfg.train.eval_interval == 0 or last:
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
            eval_seconds += time.perf_counter() - pause_start
    if out_of_time:
        log.info(f"stopped at step {step} of {cfg.train.max_iters}: train.time_limit_s {cfg.train.time_limit_s:g} s reached")
    train_time_s = elapsed_before + time.perf_counter() - loop_start

    summary = None
    if info.is_main:
        metrics.close()
        tokens_per_s = timed_steps * tokens_per_step / timed_seconds if timed_seconds else None
        summary = {
            "best_val_loss": best_val, "final_val_loss": losses.get("val"),
            "steps": step, "params": raw_model.num_params(), "train_time_s": train_time_s,
            "step_time_s": step_time(), "stopped_by_time_limit": out_of_time,
            "ms_per_step": 1000 * timed_seconds / timed_steps if timed_steps else None, "tokens_per_s": tokens_per_s,
            "mfu": raw_model.estimate_mfu(tokens_per_s, peak * 1e12 * info.world_size) if tokens_per_s and peak > 0 else None,
            "peak_mem_mb": peak_memory_mb(info.device), "device": str(info.device), "dtype": cfg.system.dtype,
            "world_size": info.world_size, "torch_version": torch.__version__, "git_commit": git_commit(),
            "run_dir": str(run_dir), "seed": cfg.run.seed,
        }
        write_json_atomic(run_dir / "summary.json", summary)
        plot_run(run_dir / "metrics.csv", run_dir / "plots", title=cfg.run.name)
        log.info(f"done: {summary['step_time_s']:.1f} s of training steps ({train_time_s:.1f} s with evaluation and "
                 f"checkpoints) | best val loss {best_val:.4f} | summary {run_dir / 'summary.json'}")
    barrier(info)
    return {"summary": summary, "run_dir": run_dir, "model": raw_model}


if __name__ == "__main__":
    run_cli(main)
