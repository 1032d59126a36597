"""Length-grouped batches: every example once per epoch, less padding, consistent shards."""

import random

import torch

from distillation.data.grouped_batch_sampler import GroupedBatchSampler, epoch_batches, length_groups


def _padding(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_grouped_sampler_yields_each_example_once_with_less_padding():
    rng = random.Random(0)
    lengths = [rng.randint(3, 120) for _ in range(1000)]
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    grouped = list(GroupedBatchSampler(order, length_groups(lengths), 16))
    flat = [i for b in grouped for i in b]
    assert sorted(flat) == list(range(1000))
    assert all(len(b) <= 16 for b in grouped) and len(grouped) == len(GroupedBatchSampler(order, length_groups(lengths), 16))
    random_batches = [order[i : i + 16] for i in range(0, 1000, 16)]
    assert _padding(grouped, lengths) < 0.3 * _padding(random_batches, lengths)


def test_length_groups_bins_every_four_tokens():
    assert length_groups([0, 3, 4, 7, 8, 13]) == [1, 1, 2, 2, 3, 4]


def test_epoch_batches_reshuffle_per_epoch_and_shard_across_ranks():
    lengths = [5 + i % 40 for i in range(203)]
    e0, e1 = epoch_batches(lengths, 8, 1, 0), epoch_batches(lengths, 8, 1, 1)
    assert e0 != e1 and sorted(i for b in e1 for i in b) == list(range(203))
    assert epoch_batches(lengths, 8, 1, 0) == e0  # a pure function of (seed, epoch): resume replays it
    shards = [epoch_batches(lengths, 8, 1, 0, rank=r, world_size=3) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # same step count on every rank
    seen = [i for s in shards for b in s for i in b]
    assert set(seen) == set(range(203))


def test_epoch_batches_without_grouping_split_the_global_batch():
    lengths = [10] * 32
    single = epoch_batches(lengths, 8, 3, 0, group_by_size=False)
    r0 = epoch_batches(lengths, 4, 3, 0, group_by_size=False, rank=0, world_size=2)
    r1 = epoch_batches(lengths, 4, 3, 0, group_by_size=False, rank=1, world_size=2)
    for step, batch in enumerate(single):
        assert sorted(batch) == sorted(r0[step] + r1[step])
