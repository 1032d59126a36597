"""Text (or text-pair) classification data, tokenised once up front.

Tokenising every example once, unpadded, keeps tokenisation off the training loop; batches
are padded to their own longest example at collate time (dynamic padding).
"""

from typing import Dict, List, Optional

import torch
from torch.utils.data import Dataset

from distillation.data.records import read_records
from distillation.errors import InputError


class TextClassificationDataset(Dataset):
    """Tokenised examples. `label2id` is None when the data's labels are integer ids."""

    def __init__(self, encodings: Dict[str, List[List[int]]], labels: List[int], label2id: Optional[Dict[str, int]]):
        self.encodings = encodings
        self.labels = labels
        self.label2id = label2id
        self.lengths = [len(ids) for ids in encodings["input_ids"]]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.encodings.items()}
        item["label"] = self.labels[i]
        item["index"] = i
        return item

    @property
    def num_labels(self) -> int:
        return len(self.label2id) if self.label2id else max(self.labels) + 1


def load_text_classification(
    path: str,
    flag: str,
    tokenizer,
    text_column: str,
    label_column: str,
    max_seq_length: int,
    text_pair_column: Optional[str] = None,
    label2id: Optional[Dict[str, int]] = None,
) -> TextClassificationDataset:
    """Read `path` and tokenise it. String labels are mapped through `label2id` when given
    (the teacher's or the training set's), else through their sorted set."""
    records = read_records(path, flag)
    columns = [("--text_column", text_column), ("--label_column", label_column)]
    if text_pair_column:
        columns.append(("--text_pair_column", text_pair_column))
    for col_flag, col in columns:
        if col not in records[0]:
            raise InputError(f"{col_flag}: '{path}' has no column '{col}' (has {', '.join(map(str, records[0]))})")
    labels, label2id = _label_ids([r[label_column] for r in records], label2id, path, flag)
    texts = [str(r[text_column]) for r in records]
    pairs = [str(r[text_pair_column]) for r in records] if text_pair_column else None
    max_len = min(max_seq_length, getattr(tokenizer, "model_max_length", max_seq_length) or max_seq_length)
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_len)
    keep = [k for k in ("input_ids", "token_type_ids") if k in enc]
    return TextClassificationDataset({k: enc[k] for k in keep}, labels, label2id)


def _label_ids(raw: list, label2id: Optional[Dict[str, int]], path: str, flag: str):
    if label2id is None and all(_is_int(v) for v in raw):
        labels = [int(v) for v in raw]
        if min(labels) < 0:
            raise InputError(f"{flag}: '{path}' has a negative label {min(labels)} (--label_column)")
        return labels, None
    names = [str(v) for v in raw]
    if label2id is None:
        label2id = {name: i for i, name in enumerate(sorted(set(names)))}
    unknown = sorted(set(names) - set(label2id))
    if unknown:
        raise InputError(
            f"{flag}: label '{unknown[0]}' of '{path}' is not among the known labels "
            f"{sorted(label2id)} (--label_column)"
        )
    return [label2id[n] for n in names], label2id


def _is_int(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, str) and value.strip().lstrip("-").isdigit()


def collate_classification(examples: List[dict], pad_token_id: int) -> Dict[str, torch.Tensor]:
    """Pad to the longest example of the batch. Returns input_ids/attention_mask
    (and token_type_ids) [B, S], labels [B], index [B]."""
    longest = max(len(e["input_ids"]) for e in examples)
    batch = {}
    for key, pad in (("input_ids", pad_token_id), ("token_type_ids", 0)):
        if key in examples[0]:
            batch[key] = torch.tensor([e[key] + [pad] * (longest - len(e[key])) for e in examples])
    batch["attention_mask"] = torch.tensor([[1] * len(e["input_ids"]) + [0] * (longest - len(e["input_ids"])) for e in examples])
    batch["labels"] = torch.tensor([e["label"] for e in examples])
    batch["index"] = torch.tensor([e["index"] for e in examples])
    return batch
