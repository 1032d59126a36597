"""Pickled datasets and token counts are read without running code from them (item 7 of issue
11): a pickle that calls os.system is refused before the call, while the pickles our scripts and
the reference's write (every protocol, numpy 1 or 2 names) still load."""

import json
import os
import pickle

import numpy as np
import pytest

from conftest import tiny_bert_config
from distillation.data.lm_seqs_dataset import load_binarized
from distillation.data.safe_pickle import load_data_pickle
from distillation.errors import InputError
from distillation.objectives.mlm import load_token_counts
from lm_helpers import bert_tokenizer, call_script, write_binarized, write_counts, sentences


class _RunsACommand:
    """What a hostile 'dataset' pickle holds: unpickling it calls os.system."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("flag", ["--data_file", "--token_counts"])
def test_a_pickle_that_runs_a_command_is_refused_and_the_command_never_runs(tmp_path, capsys, flag):
    tok = bert_tokenizer(str(tmp_path / "tok"))
    data = write_binarized(tmp_path / "data.pickle", tok, sentences(40, seed=1))
    counts = write_counts(tmp_path / "counts.pickle", data, len(tok))
    marker = tmp_path / "the_command_ran"
    evil = tmp_path / "evil.pickle"
    # the hostile object hides inside an otherwise plausible list of token arrays
    evil.write_bytes(pickle.dumps([np.arange(20, dtype=np.uint16), _RunsACommand(marker)]))
    files = {"--data_file": data, "--token_counts": counts, flag: str(evil)}
    (tmp_path / "student.json").write_text(json.dumps({"model_type": "bert", **tiny_bert_config().to_diff_dict()}))
    code, err = call_script(capsys, "train.py", "--objective", "mlm", "--student_config", str(tmp_path / "student.json"),
                            "--tokenizer_name", str(tmp_path / "tok"), "--dump_path", str(tmp_path / "run"), *sum(files.items(), ()))
    assert code == 2 and len(err) == 1
    assert f"error: {flag}: '{evil}' would call posix.system when unpickled: refused without running it" in err[0]
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_our_and_the_reference_pickles_still_load(tmp_path, protocol):
    seqs = [np.array([2, 7, 9, 3], dtype=np.uint16), np.array([2, 5, 3], dtype=np.int32)]
    path = tmp_path / "data.pickle"
    path.write_bytes(pickle.dumps(seqs, protocol=protocol))
    tokens, offsets = load_binarized(str(path), "--data_file")
    assert tokens.tolist() == [2, 7, 9, 3, 2, 5, 3] and offsets.tolist() == [0, 4, 7]
    for counts in ([0, 3, 1, 4], [np.int64(0), np.int64(3), np.int64(1), np.int64(4)], np.array([0, 3, 1, 4])):
        path.write_bytes(pickle.dumps(counts, protocol=protocol))
        assert load_token_counts(str(path)).tolist() == [0, 3, 1, 4]


def test_other_objects_are_refused_by_name(tmp_path):
    import collections

    path = tmp_path / "x.pickle"
    path.write_bytes(pickle.dumps(collections.OrderedDict(a=1)))
    with pytest.raises(InputError, match="would call collections.OrderedDict when unpickled"):
        load_data_pickle(str(path), "--data_file", "a binarized dataset")
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(InputError, match="is not a binarized dataset"):
        load_data_pickle(str(path), "--data_file", "a binarized dataset")
