"""Length-grouped batches (a port of the reference's GroupedBatchSampler) and the
per-epoch, per-rank batch plan the Distiller iterates.

Grouping examples of similar length into a batch cuts padding, so with dynamic padding a
batch costs about what its real tokens cost. The plan is a pure function of
(seed, epoch, rank, world size): every rank builds the same global list of batches and takes
its share, so ranks always agree on the number of steps, a new epoch reshuffles (the
reference never called `set_epoch`), and resuming mid-epoch just skips the first batches.
"""

import bisect
from collections import defaultdict
from typing import Iterable, List, Sequence

import torch
from torch.utils.data import BatchSampler


def length_groups(lengths: Sequence[int], bin_width: int = 4) -> List[int]:
    """Group id of each example: its length bucket (bins every `bin_width` tokens)."""
    edges = list(range(0, max(lengths, default=0) + 1, bin_width))
    return [bisect.bisect_right(edges, n) for n in lengths]


class GroupedBatchSampler(BatchSampler):
    """Yield batches whose examples share a length group, in the order `sampler` visits them.

    A batch is emitted as soon as one group holds `batch_size` examples; what is left at the
    end is merged across groups in group order (so neighbours still have similar lengths).
    Every index of `sampler` is yielded exactly once.
    """

    def __init__(self, sampler: Iterable[int], group_ids: Sequence[int], batch_size: int):
        self.sampler = sampler
        self.group_ids = group_ids
        self.batch_size = batch_size

    def __iter__(self):
        buffers = defaultdict(list)
        for idx in self.sampler:
            group = buffers[self.group_ids[idx]]
            group.append(idx)
            if len(group) == self.batch_size:
                yield list(group)
                group.clear()
        leftover: List[int] = []
        for _, idxs in sorted(buffers.items()):
            leftover.extend(idxs)
            while len(leftover) >= self.batch_size:
                yield leftover[: self.batch_size]
                leftover = leftover[self.batch_size :]
        if leftover:
            yield leftover

    def __len__(self):
        return (len(self.sampler) + self.batch_size - 1) // self.batch_size


def epoch_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    group_by_size: bool = True,
    shuffle: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> List[List[int]]:
    """This rank's batches for `epoch`.

    The global batch list (shuffled by `seed + epoch`, grouped by length when asked) is dealt
    round-robin to ranks; when it does not divide evenly, the first batches are repeated so
    every rank runs the same number of steps (as DistributedSampler pads with repeats).
    """
    n = len(lengths)
    if shuffle:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    else:
        order = list(range(n))
    if group_by_size:
        batches = list(GroupedBatchSampler(order, length_groups(lengths), batch_size))
    else:
        batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if world_size > 1 and batches:
        pad = (-len(batches)) % world_size
        batches = batches + [batches[i % len(batches)] for i in range(pad)]
        batches = batches[rank::world_size]
    return batches
