"""Read tabular/JSON records (jsonl, json, csv, tsv) or a Hugging Face dataset into dicts that
remember where they came from.

Used by every text dataset (classification, instructions). A path that is not a file may
name a `datasets` hub dataset (`imdb`, `imdb:test`) or a `save_to_disk` folder, when the
optional `datasets` package is installed. Every error names the flag, the file and the line
(jsonl, csv, tsv), record (json) or row (datasets) it is about, whichever row that is.
"""

import csv
import io
import json
import math
import os
from typing import List, Optional

from distillation.errors import InputError

SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


class Records(list):
    """The records (dicts) of one source, and where each one is in it."""

    def __init__(self, rows: List[dict], path: str, flag: str, unit: str, numbers: Optional[List[int]] = None):
        super().__init__(rows)
        self.path, self.flag, self.unit = path, flag, unit
        self.numbers = numbers  # the line of each record (jsonl, csv, tsv); None: its 1-based position

    def where(self, i: int) -> str:
        number = self.numbers[i] if self.numbers is not None else i + 1
        return f"{self.flag}: '{self.path}' {self.unit} {number}"

    def error(self, i: int, message: str) -> InputError:
        return InputError(f"{self.where(i)}: {message}")

    def column(self, i: int, name: str, flag: str, kinds=(str,), nullable: bool = False):
        """Record i's value of column `name` (given by `flag`), refused when missing or of another type."""
        record = self[i]
        if name not in record:
            raise self.error(i, f"no column '{name}' ({flag}; this record has {', '.join(map(str, record)) or 'none'})")
        value = record[name]
        if value is None and nullable:
            return None
        if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
            raise self.error(i, f"{flag} '{name}' is {json.dumps(value)}, not {' or '.join(_KIND_NAMES[k] for k in kinds)}")
        return value


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true/false"}


def read_records(path: str, flag: str) -> Records:
    """All records of `path`; raise InputError naming `flag` (and the line) when it cannot."""
    if os.path.isfile(path):
        records = _read_file(path, flag)
    elif os.path.isdir(path) or ":" in path or not os.path.splitext(path)[1]:
        records = _read_hf_dataset(path, flag)
    else:
        raise InputError(f"{flag}: no such file '{path}'")
    if not records:
        raise InputError(f"{flag}: '{path}' holds no examples")
    return records


def _read_file(path: str, flag: str) -> Records:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise InputError(f"{flag}: '{path}' is not one of {', '.join(SUFFIXES)}")
    text = _read_text(path)
    if suffix == ".jsonl":
        return _read_jsonl(text, path, flag)
    if suffix == ".json":
        return _read_json(text, path, flag)
    return _read_delimited(text, path, flag, "\t" if suffix == ".tsv" else ",")


def _read_jsonl(text: str, path: str, flag: str) -> Records:
    rows, numbers = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError) as err:
            raise InputError(f"{flag}: '{path}' line {number}: not valid JSON ({getattr(err, 'msg', err)}, column "
                             f"{getattr(err, 'colno', '?')})") from None
        if not isinstance(row, dict):
            raise InputError(f"{flag}: '{path}' line {number}: not a JSON object (got {json.dumps(row)[:60]})")
        rows.append(row)
        numbers.append(number)
    return Records(rows, path, flag, "line", numbers)


def _read_json(text: str, path: str, flag: str) -> Records:
    try:
        rows = json.loads(text, parse_constant=_no_constant) if text.strip() else []
    except (json.JSONDecodeError, ValueError) as err:
        raise InputError(f"{flag}: '{path}' is not valid JSON ({err})") from None
    if not isinstance(rows, list):
        raise InputError(f"{flag}: '{path}' must hold a JSON list of records (one object per example)")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"{flag}: '{path}' record {i + 1}: not a JSON object (got {json.dumps(row)[:60]})")
    return Records(rows, path, flag, "record")


def _read_delimited(text: str, path: str, flag: str, delimiter: str) -> Records:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = next(reader, None)
    if header is None:
        return Records([], path, flag, "line")
    if len(set(header)) != len(header) or not all(h.strip() for h in header):
        raise InputError(f"{flag}: '{path}' line 1: the header must name every column once (got {header})")
    rows, numbers, start = [], [], reader.line_num
    for fields in reader:
        number, start = start + 1, reader.line_num  # a quoted field may span lines: report the first
        if not fields:
            continue
        if len(fields) != len(header):
            raise InputError(f"{flag}: '{path}' line {number}: {len(fields)} fields, the header has {len(header)} ({', '.join(header)})")
        rows.append(dict(zip(header, fields)))
        numbers.append(number)
    return Records(rows, path, flag, "line", numbers)


def _no_constant(name):
    raise ValueError(f"{name} is not a JSON value")


def _read_text(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # e.g. tweet corpora exported from spreadsheets


def _read_hf_dataset(path: str, flag: str) -> Records:
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
    return Records(data.to_list(), path, flag, "row")


def route_ids(records: Records, column: str, routes: dict) -> List[int]:
    """Each record's teacher (--teacher_column) as its index in `routes` {route: index}."""
    ids = []
    for i in range(len(records)):
        value = records.column(i, column, "--teacher_column", kinds=(str, int))
        if str(value) not in routes:
            raise records.error(i, f"--teacher_column '{column}' is {json.dumps(value)}, not a route of --teachers "
                                   f"({', '.join(sorted(routes))})")
        ids.append(routes[str(value)])
    return ids


def is_finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
