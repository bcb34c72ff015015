"""The training loop shared by the classification topics (MNIST, CIFAR-10), with the run contract.

A topic script builds its config, datasets and model, then calls `fit`, which owns everything
the contract fixes: the sharded sampler, optimizer and LR schedule, DDP wrapping, autocast and the
gradient scaler, the log line, metrics.csv, validation, last/best checkpoints, bitwise resume, the
final test of the best-validation checkpoint, summary.json and the plots. A dataset here is any
object with `__len__`, `batch(indices) -> (x, y)` and, for the training split, `__getitems__`.
"""

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from common.checkpoint import load_checkpoint, load_model_state, save_checkpoint, unwrap_model
from common.config import config_to_dict, dump_yaml, load_yaml
from common.data import ShardedBatchSampler, eval_shard
from common.dist import (
    DistInfo, all_gather_objects, all_reduce_sum, barrier, broadcast_buffers, broadcast_object, parameter_fingerprints,
)
from common.errors import UserError
from common.perf import count_flops, mfu, peak_memory_mb, peak_tflops, reset_peak_memory, sync
from common.plots import plot_run
from common.run import MetricsWriter, create_run_dir, git_commit, setup_logging, write_json_atomic, write_text_atomic
from common.seed import capture_rng_state, rank_seed, restore_rng_state, seed_everything


@dataclass
class TrainConfig:
    epochs: int = field(default=1, metadata={"help": "passes over the training split; sets the LR schedule length"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0 = no cap); the LR schedule still spans all epochs"})
    time_limit_s: float = field(default=0.0, metadata={"help": "stop once the training loop has run this many seconds (0 = no limit); makes the run length machine-dependent"})
    schedule_steps: int = field(default=0, metadata={"help": "length of the run and its LR schedule in optimizer steps (0 = epochs x steps per epoch); overrides epochs"})
    batch_size: int = field(default=64, metadata={"help": "global batch: samples per optimizer step over all ranks and micro-steps"})
    grad_accum_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step on each rank"})
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    optimizer: str = field(default="adam", metadata={"help": "optimizer", "choices": ("adam", "adamw", "sgd")})
    weight_decay: float = field(default=0.0, metadata={"help": "decoupled for adamw, L2 for adam and sgd; applied to weight matrices and kernels only"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (Nesterov)"})
    schedule: str = field(default="constant", metadata={"help": "LR shape: constant, cosine or linear after warmup; onecycle is torch's OneCycleLR (cosine up from lr/25 over warmup_steps, cosine down to lr/2.5e5)", "choices": ("constant", "cosine", "linear", "onecycle")})
    warmup_steps: int = field(default=0, metadata={"help": "steps of linear LR warmup from lr/warmup_steps to lr"})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "final LR as a fraction of lr for cosine and linear decay"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing in [0, 1)"})
    grad_clip: float = field(default=0.0, metadata={"help": "clip the global gradient norm to this value (0 = no clipping)"})
    log_every: int = field(default=100, metadata={"help": "optimizer steps between train log lines and metrics rows"})
    eval_every: int = field(default=0, metadata={"help": "optimizer steps between validation passes (0 = only at epoch ends)"})
    ckpt_every: int = field(default=0, metadata={"help": "optimizer steps between checkpoints (0 = only at epoch ends)"})
    eval_batch_size: int = field(default=1000, metadata={"help": "batch size per rank for validation and test"})


METRIC_COLUMNS = ["step", "epoch", "split", "loss", "acc", "lr", "grad_norm",
                  "samples_per_s", "ms_per_step", "peak_mem_mb", "mfu", "elapsed_s"]
# Columns that measure the machine rather than the optimisation; determinism checks skip them.
TIMING_COLUMNS = ["samples_per_s", "ms_per_step", "peak_mem_mb", "mfu", "elapsed_s"]


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of train.lr at optimizer step `step` (0-based): linear warmup, then the schedule."""
    if schedule == "onecycle":
        return onecycle_factor(step, total_steps, warmup)
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * (1 - progress)


def onecycle_factor(step: int, total_steps: int, warmup: int, div: float = 25.0, final_div: float = 1e4) -> float:
    """Return the LR multiplier of torch.optim.lr_scheduler.OneCycleLR's two-phase cosine shape.

    The rate rises from peak/div to the peak by step warmup - 1, then falls to peak/(div * final_div)
    at step total_steps - 1 (torch's defaults: div 25, final_div 1e4, pct_start = warmup / total).
    """
    start, low = 1.0 / div, 1.0 / (div * final_div)
    peak_step = max(1, warmup) - 1
    step = min(step, total_steps - 1)

    def cos_anneal(begin: float, end: float, pct: float) -> float:
        return end + (begin - end) / 2 * (math.cos(math.pi * pct) + 1)

    if step <= peak_step:
        return cos_anneal(start, 1.0, step / peak_step) if peak_step > 0 else 1.0
    return cos_anneal(1.0, low, (step - peak_step) / max(1, total_steps - 1 - peak_step))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and conv kernels only; biases and norm scales are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.Adam(groups, lr=cfg.lr)


def autocast_context(device: torch.device, dtype: str):
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


def train_step(model, micro_batches, global_count: int, world_size: int, amp_dtype: str, scaler,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """Run forward and backward over one optimizer step's micro-batches on this rank.

    Each micro-batch contributes loss_sum * world_size / global_count. DDP averages gradients over
    ranks, so the world_size factor turns that average back into a sum. Dividing by the samples of
    the whole step then gives the gradient of the mean loss over the global batch, however the batch
    is split. Returns this rank's (loss sum, correct, count) for logging.
    """
    device = micro_batches[0][0].device
    totals = torch.zeros(3, dtype=torch.float64, device=device)
    for i, (x, y) in enumerate(micro_batches):
        is_last = i == len(micro_batches) - 1
        # Gradients are all-reduced only on the last micro-step; earlier ones accumulate locally.
        no_sync = isinstance(model, DistributedDataParallel) and not is_last
        with model.no_sync() if no_sync else nullcontext():
            with autocast_context(device, amp_dtype):
                logits = model(x)
            loss_sum = F.cross_entropy(logits.float(), y, reduction="sum", label_smoothing=label_smoothing)
            scaler.scale(loss_sum * (world_size / global_count)).backward()
        correct = (logits.argmax(dim=1) == y).sum()
        totals += torch.stack([loss_sum.detach().double(), correct.double(), torch.tensor(len(y), dtype=torch.float64, device=device)])
    return totals


@torch.no_grad()
def evaluate(model, dataset, info: DistInfo, batch_size: int, amp_dtype: str) -> tuple[float, float, int]:
    """Mean loss, accuracy and example count; each rank scores a disjoint shard and the sums are all-reduced."""
    was_training = model.training
    model.eval()
    indices = eval_shard(len(dataset), info.rank, info.world_size)
    totals = torch.zeros(3, dtype=torch.float64, device=info.device)
    for start in range(0, len(indices), batch_size):
        x, y = dataset.batch(indices[start : start + batch_size])
        x, y = x.to(info.device), y.to(info.device)
        with autocast_context(info.device, amp_dtype):
            logits = model(x)
        loss_sum = F.cross_entropy(logits.float(), y, reduction="sum")
        correct = (logits.argmax(dim=1) == y).sum()
        totals += torch.stack([loss_sum.double(), correct.double(), torch.tensor(len(y), dtype=torch.float64, device=info.device)])
    all_reduce_sum(totals, info)
    model.train(was_training)
    loss_sum, correct, count = totals.tolist()
    return loss_sum / count, correct / count, int(count)


def resolve_resume_dir(resume: str) -> tuple[Path, Path]:
    """Accept a run directory or a checkpoint file; return (run directory, checkpoint path)."""
    path = Path(resume)
    if path.is_dir():
        return path, path / "checkpoints" / "last.pt"
    if path.is_file():
        return path.parent.parent, path
    raise UserError(f"run.resume {resume} not found; pass a run directory that this script wrote, results/<run.name>_<YYYYmmdd-HHMMSS>")


def check_system(cfg, info: DistInfo) -> None:
    """Reject combinations the hardware or the world size cannot run, before any work starts."""
    if cfg.system.dtype == "float16" and info.device.type != "cuda":
        raise UserError(f"system.dtype float16 runs only on CUDA (its gradient scaler is CUDA-only), but the device is {info.device.type}; use bfloat16 or float32")
    per_step = info.world_size * cfg.train.grad_accum_steps
    if cfg.train.batch_size % per_step != 0:
        raise UserError(
            f"train.batch_size {cfg.train.batch_size} is not divisible by world size {info.world_size} x "
            f"grad_accum_steps {cfg.train.grad_accum_steps}; pick a multiple of {per_step}"
        )


def validate_common(cfg) -> None:
    """Check the run, train and system keys every classification config shares."""
    train, system = cfg.train, cfg.system
    positive = {
        "train.epochs": train.epochs, "train.batch_size": train.batch_size,
        "train.grad_accum_steps": train.grad_accum_steps, "train.log_every": train.log_every,
        "train.eval_batch_size": train.eval_batch_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise UserError(f"config key {key} is {value}, must be positive")
    non_negative = {
        "train.max_steps": train.max_steps, "train.schedule_steps": train.schedule_steps,
        "train.eval_every": train.eval_every, "train.ckpt_every": train.ckpt_every,
        "train.warmup_steps": train.warmup_steps, "train.grad_clip": train.grad_clip,
        "train.time_limit_s": train.time_limit_s,
        "train.weight_decay": train.weight_decay, "system.num_workers": system.num_workers,
        "system.threads": system.threads,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise UserError(f"config key {key} is {value}, must be zero or positive")
    if not train.lr > 0:
        raise UserError(f"config key train.lr is {train.lr}, must be positive")
    if not 0 <= train.min_lr_ratio <= 1:
        raise UserError(f"config key train.min_lr_ratio is {train.min_lr_ratio}, must be in [0, 1]")
    if not 0 <= train.label_smoothing < 1:
        raise UserError(f"config key train.label_smoothing is {train.label_smoothing}, must be in [0, 1)")


def micro_step_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Count the forward and backward FLOPs of one micro-batch on a copy of the model.

    The copy keeps the real model's gradients and BatchNorm statistics untouched.
    """
    probe = copy.deepcopy(model)
    return count_flops(lambda: F.cross_entropy(probe(x), y).backward())


def time_is_up(elapsed_s: float, limit_s: float, info: DistInfo) -> bool:
    """Decide on every rank at once whether the time limit is reached, so no rank stops alone and hangs the others."""
    flag = torch.tensor([1.0 if elapsed_s >= limit_s else 0.0], device=info.device)
    all_reduce_sum(flag, info)  # one tiny collective per step, only when a time limit is set
    return flag.item() > 0


def identity_collate(batch):
    """Return the batch as is: a dataset's __getitems__ already stacks it into tensors."""
    return batch


def fit(cfg, info: DistInfo, data: dict, raw_model: torch.nn.Module, *, script_start: float,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None, channels_last: bool = False) -> dict:
    """Train raw_model on data["train"], select on data["val"], test on data["test"]; return the summary.

    raw_model must already be on info.device and initialised from cfg.run.seed on every rank.
    `augment` maps a training batch on the device to an augmented one; `channels_last` stores
    images and conv weights in NHWC order, which is faster for convolutions on CUDA.

    NOTE: the CUDA-only paths (nccl, float16 with the gradient scaler, channels_last, pinned
    memory) have not yet run on a GPU; the CPU tests exercise the same loop with gloo and bfloat16.
    """
    log = setup_logging(None, info.is_main)
    global_batch = cfg.train.batch_size
    micro_batch = global_batch // (info.world_size * cfg.train.grad_accum_steps)
    sampler = ShardedBatchSampler(len(data["train"]), global_batch, info.rank, info.world_size, seed=cfg.run.seed)
    steps_per_epoch = sampler.steps_per_epoch
    # The LR schedule always spans the full run; max_steps may stop it early without reshaping it.
    total_steps = cfg.train.schedule_steps or cfg.train.epochs * steps_per_epoch
    stop_step = min(total_steps, cfg.train.max_steps) if cfg.train.max_steps > 0 else total_steps

    n_params = sum(p.numel() for p in raw_model.parameters())

    probe_x, probe_y = data["train"].batch(list(range(micro_batch)))
    flops_per_micro = micro_step_flops(raw_model, probe_x.to(info.device), probe_y.to(info.device))
    flops_per_step = flops_per_micro * cfg.train.grad_accum_steps * info.world_size
    peak = peak_tflops(info.device, cfg.system.peak_tflops)

    optimizer = build_optimizer(raw_model, cfg.train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps, cfg.train.warmup_steps, cfg.train.schedule, cfg.train.min_lr_ratio),
    )
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.system.dtype == "float16")
    seed_everything(rank_seed(cfg.run.seed, info.rank))  # dropout masks differ per rank

    # Resume: restore every piece of state, or start a fresh run directory.
    step, best_val_acc, best_step, elapsed_before, keep_rows = 0, -1.0, 0, 0.0, None
    if cfg.run.resume:
        run_dir, ckpt_path = resolve_resume_dir(cfg.run.resume)
        ckpt = load_checkpoint(ckpt_path)
        if "optimizer" not in ckpt:
            raise UserError(
                f"checkpoint {ckpt_path} contains only model weights (a best.pt), not the training state; "
                f"resume from the run directory {run_dir}, which uses checkpoints/last.pt"
            )
        if info.is_main and not (run_dir / "metrics.csv").is_file():
            raise UserError(f"run directory {run_dir} has no metrics.csv; resume a directory written by a training run")
        saved_model = ckpt["config"]["model"]
        if saved_model["name"] != cfg.model.name:
            raise UserError(
                f"checkpoint {ckpt_path} was trained with model.name={saved_model['name']}, the config asks for "
                f"{cfg.model.name}; resume with the config in {run_dir / 'config.yaml'}"
            )
        load_model_state(raw_model, ckpt["model"], str(ckpt_path))
        if (run_dir / "summary.json").exists() and ckpt["step"] >= stop_step:
            raise UserError(f"run {run_dir} already finished at step {ckpt['step']}; start a new run instead of resuming")
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        rng_states = ckpt["rng_states"]
        if len(rng_states) == info.world_size:
            restore_rng_state(rng_states[info.rank])
        elif info.is_main:
            log.warning(f"warning: checkpoint has RNG states of {len(rng_states)} ranks, this job has "
                        f"{info.world_size}; random streams restart from the seed")
        step, best_val_acc, best_step = ckpt["step"], ckpt["best_val_acc"], ckpt["best_step"]
        elapsed_before, keep_rows = ckpt["train_time_s"], ckpt["metrics_rows"]
        saved_cfg = load_yaml(str(run_dir / "config.yaml")) if (run_dir / "config.yaml").is_file() else {}
        changed = [f"{s}.{k}" for s, section in config_to_dict(cfg).items() for k, v in section.items()
                   if s != "run" and saved_cfg.get(s, {}).get(k, v) != v]
    else:
        run_dir = Path(broadcast_object(str(create_run_dir(cfg.run.results_dir, cfg.run.name)) if info.is_main else None, info))
        changed = []

    metrics = None
    if info.is_main:
        log = setup_logging(run_dir, True)
        if keep_rows is None:
            write_text_atomic(run_dir / "config.yaml", dump_yaml(cfg))
        try:
            metrics = MetricsWriter(run_dir / "metrics.csv", METRIC_COLUMNS, keep_rows=keep_rows)
        except ValueError as exc:
            raise UserError(f"cannot resume: {exc}; resume a run directory written by this script") from None
    if changed and info.is_main:
        log.warning(f"warning: resuming with changed config keys {', '.join(changed)}")

    model = raw_model
    if channels_last:
        raw_model.to(memory_format=torch.channels_last)
    if cfg.system.compile:
        model = torch.compile(model)
    if info.enabled:
        model = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)

    loader = DataLoader(
        data["train"], batch_sampler=sampler, num_workers=cfg.system.num_workers,
        collate_fn=identity_collate, persistent_workers=cfg.system.num_workers > 0,
        pin_memory=info.device.type == "cuda",
        # Its own generator: a DataLoader iterator otherwise draws a worker seed from the global RNG at
        # every epoch start, and a resumed run would then see different dropout masks.
        generator=torch.Generator().manual_seed(cfg.run.seed),
    )

    log.info(f"run dir {run_dir}")
    log.info(f"model {cfg.model.name} | {n_params:,} parameters | device {info.device} | dtype {cfg.system.dtype} | world size {info.world_size}")
    log.info(f"global batch {global_batch} = {info.world_size} ranks x {cfg.train.grad_accum_steps} micro-steps x {micro_batch} | "
             f"{len(data['train'])} train / {len(data['val'])} val / {len(data['test'])} test images")
    log.info(f"{steps_per_epoch} steps/epoch | schedule spans {total_steps} steps | this run stops at step {stop_step} | "
             f"{flops_per_step / 1e9:.3f} GFLOP/step | MFU peak {peak:.2f} TFLOP/s per rank")
    if step:
        log.info(f"resumed from step {step} (epoch {step // steps_per_epoch}, batch {step % steps_per_epoch})")

    def save(name: str) -> None:
        """Gather every rank's RNG state and write the checkpoint from rank 0."""
        rng_states = all_gather_objects(capture_rng_state(), info)
        if info.is_main:
            save_checkpoint(run_dir / "checkpoints" / name, {
                "model": unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng_states": rng_states,
                "step": step, "best_val_acc": best_val_acc, "best_step": best_step,
                "train_time_s": elapsed_before + time.perf_counter() - loop_start,
                "metrics_rows": metrics.rows, "config": config_to_dict(cfg), "world_size": info.world_size,
            })

    # Training loop.
    reset_peak_memory(info.device)
    loop_start = time.perf_counter()
    interval_start, interval_steps = loop_start, 0
    timed_seconds, timed_steps = 0.0, 0  # excludes the first log interval (warm-up) and eval/checkpoint pauses
    interval_totals = torch.zeros(3, dtype=torch.float64, device=info.device)
    grad_norm = torch.zeros((), device=info.device)
    model.train()
    try:
        while step < stop_step:
            epoch = step // steps_per_epoch
            sampler.set_epoch(epoch, start_step=step % steps_per_epoch)
            for x, y in loader:
                x = x.to(info.device, non_blocking=True)
                y = y.to(info.device, non_blocking=True)
                if augment is not None:
                    x = augment(x)  # on the device, drawing from the global RNG that checkpoints capture
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                optimizer.zero_grad(set_to_none=True)
                micro = list(zip(x.split(micro_batch), y.split(micro_batch)))
                interval_totals += train_step(model, micro, global_batch, info.world_size, cfg.system.dtype, scaler,
                                              cfg.train.label_smoothing)
                scaler.unscale_(optimizer)
                max_norm = cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm)
                lr = optimizer.param_groups[0]["lr"]
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                interval_steps += 1
                if cfg.train.time_limit_s > 0 and time_is_up(elapsed_before + time.perf_counter() - loop_start,
                                                             cfg.train.time_limit_s, info):
                    stop_step = step  # ends the run here, with the usual final validation and checkpoint

                epoch_end = step % steps_per_epoch == 0 or step == stop_step
                if step % cfg.train.log_every == 0 or epoch_end:
                    sync(info.device)
                    seconds = time.perf_counter() - interval_start
                    if step > cfg.train.log_every or step == stop_step:
                        timed_seconds += seconds
                        timed_steps += interval_steps
                    all_reduce_sum(interval_totals, info)  # the .tolist() below waits for the device
                    loss_sum, correct, count = interval_totals.tolist()
                    ms_per_step = 1000 * seconds / interval_steps
                    samples_per_s = global_batch * interval_steps / seconds
                    step_mfu = mfu(flops_per_step, seconds / interval_steps, peak * info.world_size)
                    peak_mb = peak_memory_mb(info.device)
                    if info.is_main:
                        metrics.log(step=step, epoch=epoch, split="train", loss=loss_sum / count, acc=correct / count,
                                    lr=lr, grad_norm=grad_norm.item(), samples_per_s=samples_per_s, ms_per_step=ms_per_step,
                                    peak_mem_mb=peak_mb, mfu=step_mfu, elapsed_s=elapsed_before + time.perf_counter() - loop_start)
                    mfu_text = f" | mfu {100 * step_mfu:.1f}%" if step_mfu is not None else ""
                    log.info(f"step {step}/{stop_step} | epoch {epoch} | loss {loss_sum / count:.4f} | lr {lr:.2e} | "
                             f"grad_norm {grad_norm.item():.3f} | {ms_per_step:.1f} ms/step | {samples_per_s:,.0f} samples/s | "
                             f"peak_mem {peak_mb:.0f} MB{mfu_text}")
                    interval_totals.zero_()
                    interval_start, interval_steps = time.perf_counter(), 0

                do_eval = epoch_end or (cfg.train.eval_every > 0 and step % cfg.train.eval_every == 0)
                do_ckpt = epoch_end or (cfg.train.ckpt_every > 0 and step % cfg.train.ckpt_every == 0)
                if do_eval or do_ckpt:
                    sync(info.device)
                    pause_start = time.perf_counter()
                    broadcast_buffers(raw_model, info)
                    if do_eval:
                        val_loss, val_acc, val_count = evaluate(unwrap_model(model), data["val"], info, cfg.train.eval_batch_size, cfg.system.dtype)
                        if info.is_main:
                            metrics.log(step=step, epoch=epoch, split="val", loss=val_loss, acc=val_acc,
                                        elapsed_s=elapsed_before + time.perf_counter() - loop_start)
                        improved = val_acc > best_val_acc
                        log.info(f"val step {step} | loss {val_loss:.4f} | acc {100 * val_acc:.2f}% over {val_count} images"
                                 + (" | new best" if improved else ""))
                        if improved:
                            best_val_acc, best_step = val_acc, step
                            if info.is_main:
                                save_checkpoint(run_dir / "checkpoints" / "best.pt", {
                                    "model": unwrap_model(model).state_dict(), "step": step, "val_acc": val_acc,
                                    "config": config_to_dict(cfg),
                                })
                    if do_ckpt:
                        save("last.pt")
                        log.info(f"checkpoint saved at step {step}")
                    interval_start += time.perf_counter() - pause_start
                if step == stop_step or step % steps_per_epoch == 0:
                    break
    except KeyboardInterrupt:
        # One line instead of a traceback: where the run stopped and how to continue it.
        log.warning(f"interrupted at step {step}; continue from the last checkpoint with --run.resume={run_dir}")
        raise
    train_time_s = elapsed_before + time.perf_counter() - loop_start

    # Final evaluation: the test set, once, with the checkpoint that scored best on validation.
    barrier(info)
    best = load_checkpoint(run_dir / "checkpoints" / "best.pt", map_location=info.device)
    final_state = copy.deepcopy(unwrap_model(model).state_dict())
    load_model_state(raw_model, best["model"], "best.pt")
    test_loss, test_acc, test_count = evaluate(raw_model, data["test"], info, cfg.train.eval_batch_size, cfg.system.dtype)
    raw_model.load_state_dict(final_state)
    fingerprints = parameter_fingerprints(raw_model, info)
    log.info(f"test (best val checkpoint, step {best_step}) | loss {test_loss:.4f} | acc {100 * test_acc:.2f}% over {test_count} images")

    summary = None
    if info.is_main:
        metrics.log(step=step, epoch=(step - 1) // steps_per_epoch, split="test", loss=test_loss, acc=test_acc,
                    elapsed_s=train_time_s)
        metrics.close()
        samples_per_s = global_batch * timed_steps / timed_seconds if timed_seconds > 0 else None
        summary = {
            "test_acc": test_acc, "test_loss": test_loss, "test_examples": test_count,
            "train_examples": len(data["train"]), "val_examples": len(data["val"]),
            "best_val_acc": best_val_acc, "best_step": best_step, "steps": step, "epochs": step / steps_per_epoch,
            "params": n_params, "model": cfg.model.name, "train_time_s": train_time_s,
            "total_time_s": time.perf_counter() - script_start,
            "samples_per_s": samples_per_s,
            "ms_per_step": 1000 * timed_seconds / timed_steps if timed_steps else None,
            "mfu": mfu(flops_per_step, timed_seconds / timed_steps, peak * info.world_size) if timed_steps else None,
            "flops_per_step": flops_per_step, "peak_tflops_per_rank": peak, "peak_mem_mb": peak_memory_mb(info.device),
            "global_batch": global_batch, "device": str(info.device), "dtype": cfg.system.dtype,
            "world_size": info.world_size, "threads_per_rank": torch.get_num_threads(),
            "ranks_in_sync": len(set(fingerprints)) == 1, "seed": cfg.run.seed,
            "torch_version": torch.__version__, "git_commit": git_commit(), "run_dir": str(run_dir),
        }
        write_json_atomic(run_dir / "summary.json", summary)
        plot_run(run_dir / "metrics.csv", run_dir / "plots", title=cfg.run.name)
        log.info(f"done in {train_time_s:.1f} s of training | summary {run_dir / 'summary.json'}")
    barrier(info)  # no rank tears down the group while a peer still waits in a collective
    return {"summary": summary, "run_dir": run_dir, "model": raw_model, "fingerprints": fingerprints}

