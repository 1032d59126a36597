"""scripts/binarized_data.py and scripts/token_counts.py end to end, and LmSeqsDataset's checks."""

import pickle

import numpy as np
import pytest

from distillation.data.lm_seqs_dataset import (
    LmSeqsDataset, collate_lm, count_in_spans, ids_dtype, load_binarized, load_lm_sequences,
)
from distillation.errors import InputError
from lm_helpers import bert_tokenizer, call_script, run_script, sentences, single_thread  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("single_thread")
CLS, SEP, UNK = 2, 3, 1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("binarize")
    tok = bert_tokenizer(str(root / "tok"))
    lines = sentences(50, seed=3, min_clauses=1, max_clauses=4)
    (root / "text.txt").write_text("\n".join(lines[:20]) + "\n\n   \n" + "\n".join(lines[20:]) + "\n")
    return {"root": root, "tok": str(root / "tok"), "tokenizer": tok, "lines": lines, "text": str(root / "text.txt")}


def _binarize(corpus, dump, *extra):
    proc = run_script("binarized_data.py", "--file_path", corpus["text"], "--tokenizer_type", "bert",
                      "--tokenizer_name", corpus["tok"], "--dump_file", dump, "--batch_lines", "7", *extra)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_binarize_round_trip_both_formats_and_seeded_shuffle(corpus, capsys):
    root = corpus["root"]
    _binarize(corpus, root / "a", "--format", "both")
    with open(root / "a.tok.pickle", "rb") as f:
        seqs = pickle.load(f)
    tok = corpus["tokenizer"]
    assert len(seqs) == 50 and all(s.dtype == np.uint16 for s in seqs)  # blank lines skipped
    assert all(s[0] == CLS and s[-1] == SEP for s in seqs)
    assert sorted(tok.decode(s[1:-1].tolist()) for s in seqs) == sorted(corpus["lines"])
    decoded = [tok.decode(s[1:-1].tolist()) for s in seqs]
    assert decoded != corpus["lines"], "not shuffled"
    tokens, offsets = load_binarized(str(root / "a.tok.tokens.npy"), "--data_file")
    assert isinstance(tokens, np.memmap) and np.array_equal(tokens, np.concatenate(seqs))
    assert np.array_equal(np.diff(offsets), [len(s) for s in seqs])
    common = ("--file_path", corpus["text"], "--tokenizer_name", corpus["tok"], "--batch_lines", "7")
    assert call_script(capsys, "binarized_data.py", *common, "--dump_file", root / "b")[0] == 0
    assert call_script(capsys, "binarized_data.py", *common, "--dump_file", root / "c", "--seed", "7")[0] == 0
    assert (root / "b.tok.pickle").read_bytes() == (root / "a.tok.pickle").read_bytes()
    assert (root / "c.tok.pickle").read_bytes() != (root / "a.tok.pickle").read_bytes()
    assert not (root / "b.tok.tokens.npy").exists()


def test_token_counts(corpus, capsys):
    root = corpus["root"]
    code, _ = call_script(capsys, "binarized_data.py", "--file_path", corpus["text"], "--tokenizer_name", corpus["tok"],
                          "--dump_file", root / "d", "--format", "both")
    assert code == 0
    for data in ("d.tok.pickle", "d.tok.tokens.npy"):
        code, err = call_script(capsys, "token_counts.py", "--data_file", root / data,
                                "--token_counts_dump", root / "counts.pickle", "--vocab_size", 30)
        assert code == 0, err
        with open(root / "counts.pickle", "rb") as f:
            counts = pickle.load(f)
        expected = np.bincount(np.concatenate(pickle.load(open(root / "d.tok.pickle", "rb"))), minlength=30)
        assert isinstance(counts, list) and len(counts) == 30 and counts == expected.tolist()
    code, err = call_script(capsys, "token_counts.py", "--data_file", root / "d.tok.pickle",
                            "--token_counts_dump", root / "x.pickle", "--vocab_size", 10)
    assert code == 2 and len(err) == 1 and "--vocab_size" in err[0] and not (root / "x.pickle").exists()


def test_binarize_bad_input(corpus, tmp_path, capsys):
    for args, expected in (
        (["--file_path", tmp_path / "missing.txt", "--tokenizer_name", corpus["tok"]], "--file_path: no such file"),
        (["--file_path", corpus["text"], "--tokenizer_name", tmp_path / "nowhere"], "--tokenizer_name"),
    ):
        code, err = call_script(capsys, "binarized_data.py", *args, "--dump_file", tmp_path / "out")
        assert code == 2 and len(err) == 1 and expected in err[0], err
    assert not list(tmp_path.glob("out*"))


def test_ids_dtype():
    assert ids_dtype(30522) == np.uint16 and ids_dtype(65535) == np.uint16
    assert ids_dtype(65536) == np.int32 and ids_dtype(151_936) == np.int32


def _offsets(seqs):
    return np.concatenate([[0], np.cumsum([len(s) for s in seqs])])


def test_dataset_splits_long_drops_short_and_unknown():
    long = [CLS] + list(range(5, 39)) + [SEP]  # 36 tokens, max_len 14 -> chunks of 12 source tokens
    short = [CLS] + [7] * 9 + [SEP]  # 11 tokens: dropped
    unknown = [CLS] + [UNK] * 7 + [8] * 5 + [SEP]  # 7/14 unknown: dropped
    kept = [CLS] + [UNK] * 6 + [8] * 6 + [SEP]  # 6/14 unknown: kept
    seqs = [np.array(s, dtype=np.uint16) for s in (long, short, unknown, kept)]
    ds = LmSeqsDataset(np.concatenate(seqs), _offsets(seqs), max_len=14, start_id=CLS, end_id=SEP, unk_id=UNK)
    items = [ds[i]["input_ids"].tolist() for i in range(len(ds))]
    # Chunks re-gain the [CLS] / [SEP] they lack.
    assert items[:3] == [[CLS, *range(5, 16), SEP], [CLS, *range(16, 28), SEP], [CLS, *range(28, 39), SEP]]
    assert items[3] == kept and len(items) == 4
    assert ds.lengths == [len(x) for x in items] and max(ds.lengths) <= 14
    assert [ds[i]["index"] for i in range(4)] == [0, 1, 2, 3]
    batch = collate_lm([ds[0], ds[3]], pad_id=0, with_labels=False)
    assert batch["input_ids"].shape == (2, 14) and batch["attention_mask"].sum().item() == 13 + 14


def test_count_in_spans_matches_a_loop():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 4, 5000).astype(np.uint16)
    cuts = np.sort(rng.choice(np.arange(1, 5000), 300, replace=False))
    starts, ends = np.concatenate([[0], cuts])[::2], np.concatenate([cuts, [5000]])[::2]  # every other span: gaps
    expected = [int((tokens[s:e] == 1).sum()) for s, e in zip(starts, ends)]
    assert count_in_spans(tokens, starts, ends, 1, block=7).tolist() == expected


def test_refuses_what_is_not_a_binarized_dataset(corpus, tmp_path):
    cases = {"dict.pickle": {"ids": [1, 2]}, "strings.pickle": ["the movie"], "floats.pickle": [np.ones(3)]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(pickle.dumps(data))
        with pytest.raises(InputError, match="--data_file: .* not a binarized dataset"):
            load_binarized(str(tmp_path / name), "--data_file")
    (tmp_path / "text.pickle").write_text("not a pickle")
    with pytest.raises(InputError, match="not a binarized dataset"):
        load_binarized(str(tmp_path / "text.pickle"), "--data_file")
    other = [np.array([0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 1], dtype=np.uint16)]  # not wrapped in [CLS] ... [SEP]
    (tmp_path / "other.pickle").write_bytes(pickle.dumps(other))
    with pytest.raises(InputError, match="binarize it with the same --tokenizer_name"):
        load_lm_sequences(str(tmp_path / "other.pickle"), "--data_file", corpus["tokenizer"], 512)
