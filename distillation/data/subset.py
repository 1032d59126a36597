"""--validation_split: hold out a seeded share of the training set as the evaluation set."""

from typing import List, Tuple

import torch
from torch.utils.data import Dataset

from distillation.errors import InputError


class Subset(Dataset):
    """Examples `indices` of `dataset`, numbered 0..n-1 again: the `index` of an item is its
    position here, which is what the teacher-logit cache keys by."""

    def __init__(self, dataset, indices: List[int]):
        self.dataset, self.indices = dataset, indices
        self.lengths = [dataset.lengths[i] for i in indices]
        if getattr(dataset, "routes", None) is not None:  # --teacher_column
            self.routes = [dataset.routes[i] for i in indices]
        for attr in ("num_labels", "label2id", "unit"):  # what objectives and the run's header read off a dataset
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return {**self.dataset[self.indices[i]], "index": i}


def split_off(dataset, fraction: float, seed: int) -> Tuple[Subset, Subset]:
    """(train, held out): a random `fraction` of the examples (at least one), drawn with `seed`."""
    n = len(dataset)
    n_eval = max(1, round(fraction * n))
    if n_eval >= n:
        raise InputError(f"--validation_split {fraction}: holding out {n_eval} of the {n} examples leaves none to train on")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, sorted(order[n_eval:])), Subset(dataset, sorted(order[:n_eval]))
