"""The loss terms of metrics.jsonl: each is the mean over the steps of its log interval that
have it. A step without task targets (--unlabelled_ok rows only) has no task loss, not 0; an
on-policy step's terms are logged apart (`loss_ce_on_policy`) and its hard-label term, weighted 0
(the student's own tokens are no labels), not at all."""

import pytest

from conftest import make_examples, read_metrics, train_args, train_in_process, write_jsonl
from lm_helpers import llama_pair, single_thread  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("single_thread")


def _train_lines(dump):
    return [r for r in read_metrics(dump) if "loss" in r]


def _by_hand(per_step, lines):
    """Each line of a run logged every few steps, from the same run logged every step: the mean of
    each loss key over the steps since the previous line that have it; absent where none has."""
    start = 0
    for line in lines:
        steps = [r for r in per_step if start < r["step"] <= line["step"]]
        keys = {k for r in steps for k in r if k.startswith("loss")}
        assert {k for k in line if k.startswith("loss")} == keys, line
        for key in keys:
            values = [r[key] for r in steps if key in r]
            assert line[key] == pytest.approx(sum(values) / len(values), rel=1e-6), (key, line)
        start = line["step"]


def test_steps_without_labelled_rows_have_no_task_loss(assets, tmp_path):
    rows = make_examples(96, seed=3)
    rows = [row if i % 10 == 0 else {"text": row["text"]} for i, row in enumerate(rows)]  # 10 labelled rows
    data = write_jsonl(str(tmp_path / "some.jsonl"), rows)
    for every in (1, 5):
        assert train_in_process(train_args(assets, tmp_path / f"every{every}", "--data_file", data, "--unlabelled_ok",
                                           "--batch_size", 4, "--log_interval", every)) == 0
    per_step = _train_lines(tmp_path / "every1")
    unlabelled = [r for r in per_step if "loss_task" not in r]
    assert len(per_step) == 24 and 0 < len(unlabelled) < 24
    for r in per_step:  # alpha_ce = alpha_task = 0.5
        assert r["loss"] == pytest.approx(0.5 * r["loss_ce"] + 0.5 * r.get("loss_task", 0.0), rel=1e-6)
    _by_hand(per_step, _train_lines(tmp_path / "every5"))


def test_on_policy_steps_are_logged_apart(tmp_path):
    paths = llama_pair(tmp_path, n_train=10, student_layers=1)
    rows = [{"instruction": "say why", "input": f"the {noun} {verb}", "output": f"it {verb} {adj}"}
            for noun in ("movie", "film", "plot", "actor") for verb in ("is", "was") for adj in ("good", "dull")]
    common = ["--objective", "clm", "--teacher_name", paths["teacher"], "--student_name", paths["student"],
              "--data_file", write_jsonl(str(tmp_path / "instructions.jsonl"), rows), "--prompt_template", "{instruction} {input} A:",
              "--max_seq_length", 16, "--batch_size", 2, "--no-group_by_size", "--max_steps", 8, "--on_policy_fraction", 0.5]
    for every in (1, 3):
        assert train_in_process(common + ["--dump_path", tmp_path / f"every{every}", "--log_interval", every]) == 0
    per_step = _train_lines(tmp_path / "every1")
    sampled = [r for r in per_step if r["on_policy_share"] == 1.0]
    assert 0 < len(sampled) < len(per_step) == 8
    for r in per_step:  # alpha_ce = alpha_task = 0.5; the task term weighs 0 on a sampled step
        if r in sampled:
            assert set(r) & {"loss_ce", "loss_clm", "loss_ce_on_policy"} == {"loss_ce_on_policy"}
            assert r["loss"] == pytest.approx(0.5 * r["loss_ce_on_policy"], rel=1e-6)
        else:
            assert set(r) & {"loss_ce", "loss_clm", "loss_ce_on_policy"} == {"loss_ce", "loss_clm"}
            assert r["loss"] == pytest.approx(0.5 * r["loss_ce"] + 0.5 * r["loss_clm"], rel=1e-6)
    _by_hand(per_step, _train_lines(tmp_path / "every3"))
