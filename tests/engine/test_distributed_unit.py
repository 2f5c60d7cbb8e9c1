"""rswb.engine.distributed without a process group: sampler equivalence across world sizes, sharding, gathering."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as tdist

from rswb.engine import distributed as dmod
from rswb.engine.distributed import (
    DistContext,
    EpochBatchSampler,
    current_context,
    gather_outputs,
    init_distributed,
    shard_indices,
)


def _batches(n, batch_size, world_size=1, rank=0, seed=0, epoch=0, shuffle=True, drop_last=False):
    s = EpochBatchSampler(n, batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last, rank=rank,
                          world_size=world_size)
    s.set_epoch(epoch)
    return list(s)


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize(("n", "batch_size"), [(48, 8), (50, 8), (37, 4), (9, 8), (3, 4)])
@pytest.mark.parametrize("drop_last", [False, True])
def test_rank_batches_reassemble_the_global_batch(world, n, batch_size, drop_last):
    single = _batches(n, batch_size, seed=3, epoch=2, drop_last=drop_last)
    per_rank = [_batches(n, batch_size, world, r, seed=3, epoch=2, drop_last=drop_last) for r in range(world)]
    # Every rank takes the same number of steps, each with the same number of samples.
    assert len({len(b) for b in per_rank}) == 1
    steps = len(per_rank[0])
    for b in range(steps):
        assert len({len(per_rank[r][b]) for r in range(world)}) == 1
        if len(single[b]) == batch_size:
            expected = single[b]
        else:  # the last partial batch is cut to a multiple of the world size
            expected = single[b][: len(single[b]) - len(single[b]) % world]
        union = sorted(i for r in range(world) for i in per_rank[r][b])
        assert union == sorted(expected)
        for r in range(world):
            assert per_rank[r][b] == expected[r::world]  # rank r holds items r, r + W, ... of it
    # The steps cover exactly the full batches plus the (cut) last one, if it survives.
    full, rest = divmod(n, batch_size)
    cut = rest - rest % world
    assert steps == full + int(not drop_last and cut > 0)
    # Only a last single-process batch too small to give every rank an item is missing.
    assert steps == len(single) or (steps == len(single) - 1 and len(single[-1]) < world)


def test_single_process_epoch_is_a_permutation():
    batches = _batches(23, 5, seed=1, epoch=0)
    assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
    assert sorted(i for b in batches for i in b) == list(range(23))
    assert [len(b) for b in _batches(23, 5, drop_last=True)] == [5, 5, 5, 5]
    ordered = _batches(7, 3, shuffle=False)
    assert ordered == [[0, 1, 2], [3, 4, 5], [6]]
    assert _batches(8, 4, world_size=2, rank=1, shuffle=False) == [[1, 3], [5, 7]]
    assert all(isinstance(i, int) for b in batches for i in b)


def test_order_depends_only_on_seed_and_epoch():
    a = _batches(64, 8, seed=5, epoch=3)
    assert a == _batches(64, 8, seed=5, epoch=3)
    assert a != _batches(64, 8, seed=5, epoch=4)
    assert a != _batches(64, 8, seed=6, epoch=3)
    # Iterating again without set_epoch repeats the epoch; the global RNG does not matter.
    s = EpochBatchSampler(64, 8, seed=5)
    s.set_epoch(3)
    torch.manual_seed(123)
    first = list(s)
    torch.manual_seed(456)
    assert list(s) == first == a
    # Resuming at an epoch boundary: a fresh sampler set to epoch e matches the uninterrupted one.
    s.set_epoch(0)
    list(s)
    s.set_epoch(1)
    fresh = EpochBatchSampler(64, 8, seed=5)
    fresh.set_epoch(1)
    assert list(fresh) == list(s)


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 15, 16, 17, 31, 33])
@pytest.mark.parametrize("drop_last", [False, True])
def test_len_equals_number_of_batches(world, n, drop_last):
    for rank in range(world):
        s = EpochBatchSampler(n, 8, seed=0, drop_last=drop_last, rank=rank, world_size=world)
        assert len(s) == len(list(s))


def test_len_hand_computed():
    assert len(EpochBatchSampler(10, 4)) == 3  # 4, 4, 2
    assert len(EpochBatchSampler(10, 4, drop_last=True)) == 2
    assert len(EpochBatchSampler(10, 4, world_size=4, rank=0)) == 2  # the last 2 items cannot feed 4 ranks
    assert len(EpochBatchSampler(10, 4, world_size=2, rank=1)) == 3
    assert len(EpochBatchSampler(0, 4)) == 0


@pytest.mark.parametrize(("batch_size", "world", "rank"), [(6, 4, 0), (0, 1, 0), (-2, 1, 0), (3, 2, 1)])
def test_batch_size_must_be_a_multiple_of_world_size(batch_size, world, rank):
    with pytest.raises(ValueError, match=f"global batch size {batch_size} must be a positive multiple"):
        EpochBatchSampler(10, batch_size, rank=rank, world_size=world)


@pytest.mark.parametrize(("rank", "world"), [(2, 2), (-1, 2), (0, 0)])
def test_rank_must_be_in_range(rank, world):
    with pytest.raises(ValueError, match="is not one of the"):
        EpochBatchSampler(10, 4, rank=rank, world_size=world)


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [0, 1, 5, 10, 11])
def test_shard_indices_partition(world, n):
    shards = [shard_indices(n, r, world) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n)) and len(flat) == n
    for r, s in enumerate(shards):
        assert s == [i for i in range(n) if i % world == r]


def test_gather_outputs_one_process_returns_input():
    out = {"logits": torch.randn(5, 3), "ids": ["a", "b", "c", "d", "e"]}
    assert gather_outputs(out, DistContext(), 5) is out


@pytest.mark.parametrize("world", [2, 3, 4])
@pytest.mark.parametrize("n", [7, 12, 2])
def test_gather_outputs_reassembles_dataset_order(monkeypatch, world, n):
    """With all_gather_object faked, the shards of every rank come back in dataset order."""
    g = torch.Generator().manual_seed(world * 100 + n)
    full = {"logits": torch.randn(n, 3, generator=g), "labels": torch.randint(0, 9, (n,), generator=g),
            "names": [f"item{i}" for i in range(n)]}
    shards = []
    for r in range(world):
        idx = shard_indices(n, r, world)
        shards.append({"logits": full["logits"][idx], "labels": full["labels"][idx],
                       "names": [full["names"][i] for i in idx]})

    for rank in range(world):
        calls = []

        def fake_all_gather_object(parts, obj, rank=rank, calls=calls):
            assert len(parts) == world
            assert torch.equal(obj["logits"], shards[rank]["logits"]) and obj["names"] == shards[rank]["names"]
            calls.append(1)
            for r in range(world):
                parts[r] = shards[r]

        monkeypatch.setattr(dmod.dist, "all_gather_object", fake_all_gather_object)
        got = gather_outputs(shards[rank], DistContext(rank=rank, world_size=world), n)
        assert calls == [1]
        assert torch.equal(got["logits"], full["logits"])
        assert torch.equal(got["labels"], full["labels"])
        assert got["names"] == full["names"]


def test_dist_context_one_process():
    ctx = DistContext()
    assert (ctx.rank, ctx.world_size, ctx.local_rank) == (0, 1, 0)
    assert ctx.is_main and not ctx.enabled
    ctx.barrier()  # no process group needed
    values = [1.0, 2.5]
    summed = ctx.all_reduce_sum(values)
    assert summed == values and summed is not values
    obj = {"a": [1]}
    assert ctx.broadcast_object(obj) is obj
    other = DistContext(rank=1, world_size=2, local_rank=1)
    assert not other.is_main and other.enabled
    with pytest.raises(AttributeError):
        ctx.rank = 3  # frozen


def test_init_distributed_without_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert not tdist.is_initialized()
    assert init_distributed() == DistContext()
    assert current_context() == DistContext()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed() == DistContext()
    assert not tdist.is_initialized()
