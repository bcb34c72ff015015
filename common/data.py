"""Sharded, resumable batch sampling for data-parallel training.

Each epoch draws one global permutation from (seed, epoch), identical on every rank, cuts it into
global batches of `global_batch` samples (the incomplete tail is dropped, so every optimizer step
sees the same number of samples), and gives rank r the r-th contiguous slice of each global batch.
One process and N processes therefore see the same global batch at every step, which is what makes
their parameters comparable, and `set_epoch(epoch, start_step)` lets a resumed run continue mid-epoch.
"""

import torch


class ShardedBatchSampler:
    """Yield this rank's index list for each optimizer step of one epoch."""

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int, seed: int, shuffle: bool = True):
        if global_batch % world_size != 0:
            raise ValueError(f"global batch {global_batch} does not divide by world size {world_size}")
        if num_samples < global_batch:
            raise ValueError(f"{num_samples} samples cannot fill one global batch of {global_batch}")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.start_step = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Choose the epoch's permutation; start_step skips batches a resumed run already trained on."""
        self.epoch = epoch
        self.start_step = start_step

    def global_order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.num_samples, generator=generator)

    def __iter__(self):
        order = self.global_order()
        lo = self.rank * self.local_batch
        for step in range(self.start_step, self.steps_per_epoch):
            batch = order[step * self.global_batch : (step + 1) * self.global_batch]
            yield batch[lo : lo + self.local_batch].tolist()

    def __len__(self) -> int:
        return self.steps_per_epoch - self.start_step


def eval_shard(num_samples: int, rank: int, world_size: int) -> range:
    """Indices rank r evaluates: r, r + W, r + 2W, ... Every index lands on exactly one rank, no padding."""
    return range(rank, num_samples, world_size)
