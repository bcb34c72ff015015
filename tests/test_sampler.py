"""The sharded batch sampler and the evaluation shards."""

import pytest

from common.data import ShardedBatchSampler, eval_shard


def batches(sampler, epoch, start_step=0):
    sampler.set_epoch(epoch, start_step)
    return list(sampler)


def test_new_order_every_epoch():
    sampler = ShardedBatchSampler(100, 10, rank=0, world_size=1, seed=3)
    assert batches(sampler, 0) != batches(sampler, 1)


def test_same_seed_same_order():
    a = ShardedBatchSampler(100, 10, rank=0, world_size=1, seed=3)
    b = ShardedBatchSampler(100, 10, rank=0, world_size=1, seed=3)
    assert batches(a, 2) == batches(b, 2)


def test_ranks_split_the_global_batch():
    single = batches(ShardedBatchSampler(103, 8, 0, 1, seed=1), 4)
    rank0 = batches(ShardedBatchSampler(103, 8, 0, 2, seed=1), 4)
    rank1 = batches(ShardedBatchSampler(103, 8, 1, 2, seed=1), 4)
    assert len(single) == 12  # 103 // 8, the tail of 7 is dropped
    for full, left, right in zip(single, rank0, rank1):
        assert len(left) == 4
        assert set(left).isdisjoint(right)
        assert left + right == full


def test_start_step_resumes_mid_epoch():
    sampler = ShardedBatchSampler(64, 8, 0, 1, seed=0)
    full = batches(sampler, 1)
    assert batches(sampler, 1, start_step=5) == full[5:]
    assert len(sampler) == 3


def test_batch_must_divide_by_world():
    with pytest.raises(ValueError, match="does not divide"):
        ShardedBatchSampler(100, 10, 0, 3, seed=0)


@pytest.mark.parametrize("n, world", [(10, 3), (4999, 2), (7, 8)])
def test_eval_shards_cover_every_index_once(n, world):
    seen = [i for rank in range(world) for i in eval_shard(n, rank, world)]
    assert sorted(seen) == list(range(n))
