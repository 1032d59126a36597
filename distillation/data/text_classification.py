"""Text (or text-pair) classification data, checked row by row and tokenised once up front.

Tokenising every example once, unpadded, keeps tokenisation off the training loop; batches
are padded to their own longest example at collate time (dynamic padding).

Labels are integer ids or label names, one kind per column (digit strings, as CSV writes ids,
are ids). A row without a label (column absent or null) is refused unless the run takes
unlabelled rows (--unlabelled_ok): its label is then UNLABELLED, which the task loss skips. Names map to ids through the fixed mapping when there is one (--label_names, else
the teacher's named labels), else through their sorted set. Every bad row is refused with its
line and value: a missing or null text or label, a float or boolean label, a name among ids,
an id outside the known number of labels.
"""

from typing import Dict, List, Optional

import torch
from torch.utils.data import Dataset

from distillation.data.records import Records, read_records, route_ids
from distillation.errors import InputError

UNLABELLED = -100  # the label of a row without one: cross-entropy's ignore_index


class TextClassificationDataset(Dataset):
    """Tokenised examples. `label2id` is None when the labels are unnamed integer ids."""

    def __init__(self, encodings: Dict[str, List[List[int]]], labels: List[int], label2id: Optional[Dict[str, int]], num_labels: int,
                 routes: Optional[List[int]] = None):
        self.encodings = encodings
        self.routes = routes  # each example's teacher (--teacher_column), or None
        self.labels = labels
        self.label2id = label2id
        self.num_labels = num_labels
        self.lengths = [len(ids) for ids in encodings["input_ids"]]
        self.unlabelled = sum(label == UNLABELLED for label in labels)

    def extended(self, other: "TextClassificationDataset") -> "TextClassificationDataset":
        """This data followed by `other`'s rows (unlabelled texts: --unlabelled_file)."""
        encodings = {k: v + other.encodings[k] for k, v in self.encodings.items()}
        routes = self.routes + other.routes if self.routes is not None else None
        return TextClassificationDataset(encodings, self.labels + other.labels, self.label2id, self.num_labels, routes)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.encodings.items()}
        item["label"] = self.labels[i]
        item["index"] = i
        return item


class LabelSpace:
    """What the labels may be: a fixed name -> id mapping and/or a fixed number of labels, and
    where that comes from (named in errors). Both None: the training data decides."""

    def __init__(self, label2id: Optional[Dict[str, int]] = None, num_labels: Optional[int] = None, source: str = ""):
        self.label2id, self.num_labels, self.source = label2id, num_labels, source


def load_text_classification(path: str, flag: str, tokenizer, text_column: str, label_column: Optional[str], max_seq_length: int,
                             text_pair_column: Optional[str], space: LabelSpace, unlabelled_ok: bool = False,
                             routes: Optional[tuple] = None) -> TextClassificationDataset:
    """Read `path`, check every row, tokenise. The labels must fit `space`; `label_column` None:
    texts only, every row unlabelled. `routes` (--teacher_column, {route: teacher}): each row's teacher."""
    records = read_records(path, flag)
    texts = [records.column(i, text_column, "--text_column") for i in range(len(records))]
    pairs = [records.column(i, text_pair_column, "--text_pair_column") for i in range(len(records))] if text_pair_column else None
    if label_column is None:
        labels, label2id, num_labels = [UNLABELLED] * len(records), space.label2id, space.num_labels
    else:
        labels, label2id, num_labels = _label_ids(records, label_column, space, unlabelled_ok)
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_seq_length)
    keep = [k for k in ("input_ids", "token_type_ids") if k in enc]
    teachers = route_ids(records, *routes) if routes else None
    return TextClassificationDataset({k: enc[k] for k in keep}, labels, label2id, num_labels, teachers)


def _label_ids(records: Records, column: str, space: LabelSpace, unlabelled_ok: bool):
    """(ids, label2id or None, num_labels) of every record's label (UNLABELLED where a row has
    none and `unlabelled_ok`)."""
    values = [None if unlabelled_ok and records[i].get(column) is None else records.column(i, column, "--label_column", kinds=(int, str))
              for i in range(len(records))]
    values = [int(v) if isinstance(v, str) and v.strip().lstrip("-").isdigit() else v for v in values]  # CSV writes ids as text
    ids = [isinstance(v, int) for v in values]
    labelled = [v is not None for v in values]
    if not any(labelled):
        raise InputError(f"{records.flag}: '{records.path}' has no labelled row (--label_column '{column}'): give labelled rows "
                         "(--unlabelled_file takes texts without labels)")
    as_ids = sum(ids) * 2 >= sum(labelled)  # the column's kind is its majority's: the odd rows are the bad ones
    for i, (value, is_id) in enumerate(zip(values, ids)):
        if value is None:
            continue
        if is_id != as_ids:
            kind, others = ("an integer id", "label names") if is_id else ("a label name", "integer ids")
            raise records.error(i, f"label {_quote(value)} is {kind}, but the column holds {others} (--label_column '{column}': "
                                   "one kind per column)")
        if is_id:
            limit = space.num_labels if space.num_labels is not None else len(space.label2id or {}) or None
            if value < 0 or (limit is not None and value >= limit):
                known = f"the {limit} labels (0-{limit - 1}) of {space.source}" if limit else "label ids, which are >= 0"
                raise records.error(i, f"label {value} is outside {known} (--label_column '{column}')")
        elif space.label2id is not None and value not in space.label2id:
            raise records.error(i, f"label {_quote(value)} is not one of the labels {sorted(space.label2id)} of {space.source} "
                                   f"(--label_column '{column}')")
    if as_ids:
        num_labels = space.num_labels or (len(space.label2id) if space.label2id else max(v for v in values if v is not None) + 1)
        return [UNLABELLED if v is None else v for v in values], space.label2id, num_labels
    label2id = space.label2id or {name: i for i, name in enumerate(sorted({v for v in values if v is not None}))}
    if space.num_labels is not None and len(label2id) > space.num_labels:
        raise InputError(f"{records.flag}: '{records.path}' has {len(label2id)} label names {sorted(label2id)}, more than the "
                         f"{space.num_labels} labels of {space.source} (--label_column '{column}')")
    return [UNLABELLED if v is None else label2id[v] for v in values], label2id, space.num_labels or len(label2id)


def _quote(value) -> str:
    return f"'{value}'" if isinstance(value, str) else str(value)


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
