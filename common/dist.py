"""Distributed setup and teardown from the torchrun environment.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; a plain `python script.py` has none of them and runs
as a single process with world size 1. The backend is nccl on CUDA and gloo otherwise. Collectives
time out after `timeout_s`, so a rank that dies makes the others fail instead of hanging.
"""

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from common.errors import UserError


@dataclass
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(request: str, local_rank: int = 0) -> torch.device:
    """Map system.device (auto|cpu|cuda|mps) to a torch.device, or raise UserError if unavailable."""
    if request == "auto":
        if torch.cuda.is_available():
            request = "cuda"
        elif torch.backends.mps.is_available():
            request = "mps"
        else:
            request = "cpu"
    if request == "cuda":
        if not torch.cuda.is_available():
            raise UserError("system.device is cuda but CUDA is not available; use system.device=cpu or auto")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if request == "mps":
        if not torch.backends.mps.is_available():
            raise UserError("system.device is mps but MPS is not available; use system.device=cpu or auto")
        return torch.device("mps")
    return torch.device("cpu")


def setup_distributed(device_request: str, timeout_s: int = 300) -> DistInfo:
    """Join the process group if torchrun started us, and pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_request, local_rank)
    if world_size > 1:
        if device.type == "mps":
            raise UserError("distributed training on mps is not supported; use system.device=cpu")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def teardown_distributed() -> None:
    """Leave the process group; call it after the DDP-wrapped model is out of scope."""
    if dist.is_available() and dist.is_initialized():
        # DDP sits in reference cycles, so only the cycle collector frees it. Freed after the group is
        # destroyed, its reducer aborts the process with 'terminate called without an active exception'.
        gc.collect()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks in place (a no-op for one process) and return it."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, info: DistInfo):
    """Send a picklable object from rank 0 to every rank (used for small values such as paths)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj, info: DistInfo) -> list:
    """Collect one picklable object from every rank, in rank order."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP does this at the start of each forward, so after the last training step each rank still
    has the statistics of its own last batch. Evaluation and the final weights need rank 0's.
    """
    if info.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def parameter_fingerprints(model: torch.nn.Module, info: DistInfo) -> list[str]:
    """SHA-256 of this rank's parameter bytes, gathered from every rank; equal strings mean bitwise sync."""
    import hashlib

    digest = hashlib.sha256()
    for tensor in model.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return all_gather_objects(digest.hexdigest(), info)
