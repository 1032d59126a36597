"""Read tabular/JSON records (jsonl, json, csv, tsv) or a Hugging Face dataset into dicts.

Used by every text dataset (classification, instructions). A path that is not a file may
name a `datasets` hub dataset (`imdb`, `imdb:test`) or a `save_to_disk` folder, when the
optional `datasets` package is installed.
"""

import csv
import json
import os
from typing import List

from distillation.errors import InputError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


def read_records(path: str, flag: str) -> List[dict]:
    """All records of `path` as dicts; raise InputError naming `flag` when it cannot."""
    if os.path.isfile(path):
        records = _read_file(path, flag)
    elif os.path.isdir(path) or ":" in path or not os.path.splitext(path)[1]:
        records = _read_hf_dataset(path, flag)
    else:
        raise InputError(f"{flag}: no such file '{path}'")
    if not records:
        raise InputError(f"{flag}: '{path}' holds no examples")
    return records


def _read_file(path: str, flag: str) -> List[dict]:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{flag}: '{path}' is not one of {', '.join(SUFFIXES)}")
    text = _read_text(path)
    try:
        if suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif suffix == ".json":
            records = json.loads(text) if text.strip() else []
        else:
            records = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
    except json.JSONDecodeError as err:
        raise InputError(f"{flag}: '{path}' is not valid JSON ({err})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InputError(f"{flag}: '{path}' must hold one JSON object per record")
    return records


def _read_text(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # e.g. tweet corpora exported from spreadsheets


def _read_hf_dataset(path: str, flag: str) -> List[dict]:
    try:
        import datasets
    except ImportError:
        raise InputError(f"{flag}: no such file '{path}' (hub datasets need `pip install datasets`)") from None
    name, _, split = path.partition(":")
    try:
        if os.path.isdir(name):
            data = datasets.load_from_disk(name)
        else:
            data = datasets.load_dataset(name, split=split or "train")
    except Exception as err:  # noqa: BLE001 - any failure of the optional loader is bad input
        raise InputError(f"{flag}: cannot load dataset '{path}' ({type(err).__name__}: {err})".splitlines()[0]) from None
    if isinstance(data, datasets.DatasetDict):
        split = split or "train"
        if split not in data:
            raise InputError(f"{flag}: dataset '{name}' has no split '{split}' (has {', '.join(data)})")
        data = data[split]
    return data.to_list()
