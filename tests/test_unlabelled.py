"""Classification rows without labels (--unlabelled_ok, --unlabelled_file): they train on the
teacher's soft targets only; the hard-label loss is a mean over the labelled rows; a missing
label is still an error by default and in held-out data."""

import pytest
import torch

from conftest import build_distiller, first_step, make_examples, train_args, train_in_process, write_jsonl
from lm_helpers import single_thread  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("single_thread")


def _without_labels(rows, every=2):
    """`rows` with the label of every `every`-th row removed: null in one half of them, absent in the other."""
    out = []
    for i, row in enumerate(rows):
        if i % every:
            row = {"text": row["text"], "label": None} if i % (2 * every) == 1 else {"text": row["text"]}
        out.append(row)
    return out


def test_a_missing_label_is_refused_unless_the_run_takes_unlabelled_rows(assets, tmp_path, capsys):
    data = write_jsonl(str(tmp_path / "some.jsonl"), _without_labels(make_examples(48, seed=3)))
    capsys.readouterr()
    assert train_in_process(train_args(assets, tmp_path / "refused", "--data_file", data)) == 2
    assert "line 2: --label_column 'label' is null, not an integer or a string" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    assert train_in_process(train_args(assets, tmp_path / "taken", "--data_file", data, "--unlabelled_ok")) == 0
    assert f"48 training examples ({data}: 24 labelled, 24 unlabelled, on the teacher's soft targets only)" in capsys.readouterr().out
    held_out = write_jsonl(str(tmp_path / "held_out.jsonl"), _without_labels(make_examples(8, seed=4)))
    for extra, message in ((["--eval_file", held_out, "--unlabelled_ok"], "--eval_file: "),
                           (["--unlabelled_ok", "--teacher_name", None], "--unlabelled_ok: rows without labels learn only from"),
                           (["--unlabelled_ok", "--eval_file", None, "--validation_split", "0.2"], "--validation_split: with")):
        args = _with(train_args(assets, tmp_path / "bad", "--data_file", data), extra)
        assert train_in_process(args) == 2, extra
        assert message in capsys.readouterr().err, extra
        assert not (tmp_path / "bad").exists()


def _with(args, extra):
    """`args` with the flags of `extra` set (value None: the flag removed; a bare flag appended)."""
    args = list(map(str, args))
    i = 0
    while i < len(extra):
        flag = extra[i]
        has_value = i + 1 < len(extra) and (extra[i + 1] is None or not str(extra[i + 1]).startswith("--"))
        value = extra[i + 1] if has_value else True
        if flag in args:
            at = args.index(flag)
            del args[at: at + 2]
        if value is True:
            args.append(flag)
        elif value is not None:
            args += [flag, str(value)]
        i += 2 if has_value else 1
    return args


def test_the_task_loss_is_a_mean_over_labelled_rows_and_distillation_covers_every_row(assets, tmp_path):
    """One batch of 32 rows, half of them unlabelled: the hard-label term equals a hand
    cross-entropy over the 16 labelled rows, and the soft-target term equals that of the same
    rows all labelled (the teacher's targets do not depend on labels)."""
    rows = make_examples(32, seed=5)
    terms = {}
    for name, data in (("all", rows), ("half", _without_labels(rows))):
        path = write_jsonl(str(tmp_path / f"{name}.jsonl"), data)
        distiller, dataset, _ = build_distiller(assets, tmp_path / name, data_file=path, batch_size=32, unlabelled_ok=True)
        batch = distiller.objective.collate([dataset[i] for i in distiller._batches(0)[0]])
        with torch.no_grad():
            logits = distiller.model.student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                             token_type_ids=batch["token_type_ids"]).logits
        terms[name], _ = first_step(distiller)
        labelled = batch["labels"] >= 0
        assert int(labelled.sum()) == (32 if name == "all" else 16)
        hand = -logits.log_softmax(-1)[labelled, batch["labels"][labelled]].mean()
        assert terms[name]["task"] == pytest.approx(hand.item(), rel=1e-5)
    assert terms["half"]["ce"] == pytest.approx(terms["all"]["ce"], rel=1e-6)


def test_an_unlabelled_file_adds_texts_that_a_resume_must_keep(assets, tmp_path, capsys):
    texts = [{"text": row["text"]} for row in make_examples(40, seed=6)]  # no label column at all
    extra = write_jsonl(str(tmp_path / "extra.jsonl"), texts)
    capsys.readouterr()
    assert train_in_process(train_args(assets, tmp_path / "run", "--unlabelled_file", extra)) == 0
    assert f"136 training examples ({assets['train']} + {extra}: 96 labelled, 40 unlabelled" in capsys.readouterr().out
    other = write_jsonl(str(tmp_path / "other.jsonl"), texts[:-1])
    assert train_in_process(train_args(assets, tmp_path / "run", "--unlabelled_file", other, "--resume", "--n_epoch", 2)) == 2
    assert "--unlabelled_file" in capsys.readouterr().err
