"""Tiny models and data built in the test session: nothing is downloaded.

The vocabulary is a handful of words; the "sentiment" of an example is which cue words it
holds, so a tiny model can learn it in a few steps.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

# Tiny models: one thread each avoids OpenMP spin-waiting when subprocesses share 2 cores.
torch.set_num_threads(1)
SUBPROCESS_ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "scripts", "train.py")

WORDS = "good great fine fun love bad awful boring hate dull the a is was movie film plot actor it this".split()
POSITIVE, NEGATIVE = ["good", "great", "fun", "love"], ["bad", "awful", "boring", "hate"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def tiny_bert_config(layers=2, hidden=32, dropout=0.0, num_labels=2, vocab_size=len(VOCAB), positions=64, **kw):
    return BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=positions, num_labels=num_labels,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, **kw,
    )


def make_tokenizer(folder):
    os.makedirs(folder, exist_ok=True)
    vocab_file = os.path.join(folder, "vocab.txt")
    with open(vocab_file, "w") as f:
        f.write("\n".join(VOCAB) + "\n")
    return BertTokenizerFast(vocab=vocab_file)  # transformers 5 ignores vocab_file=


def make_examples(n, seed, names=("0", "1")):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.choices(WORDS[10:], k=rng.randint(2, 14)) + rng.sample(POSITIVE if label else NEGATIVE, 2)
        rng.shuffle(words)
        out.append({"text": " ".join(words), "label": int(names[label]) if names == ("0", "1") else names[label]})
    return out


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def save_model(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def fit_briefly(model, tokenizer, examples, steps=60, lr=3e-3):
    """A few full-batch Adam steps on the cue-word data, so the model's logits depend on its
    input (a random tiny classifier gives every example nearly the same logits, and a test of
    per-example bookkeeping could not tell examples apart)."""
    enc = tokenizer([e["text"] for e in examples], padding=True, return_tensors="pt")
    labels = torch.tensor([int(e["label"]) for e in examples])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(**enc, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    """Folders of a 4-layer BERT teacher fitted to the data, 2-layer BERT students (plain,
    dropout, narrow) at random init, train and test data."""
    root = tmp_path_factory.mktemp("assets")
    tok = make_tokenizer(str(root / "tok"))
    torch.manual_seed(0)
    teacher = fit_briefly(BertForSequenceClassification(tiny_bert_config(layers=4)), tok, make_examples(96, seed=1))
    student = BertForSequenceClassification(tiny_bert_config(layers=2))
    student_dropout = BertForSequenceClassification(tiny_bert_config(layers=2, dropout=0.1))
    paths = {
        "tokenizer": str(root / "tok"),
        "teacher": save_model(teacher, tok, str(root / "teacher")),
        "student": save_model(student, tok, str(root / "student")),
        "student_dropout": save_model(student_dropout, tok, str(root / "student_dropout")),
        "student_narrow": save_model(BertForSequenceClassification(tiny_bert_config(layers=2, hidden=16)), tok, str(root / "narrow")),
        "student_narrow_dropout": save_model(BertForSequenceClassification(tiny_bert_config(layers=2, hidden=16, dropout=0.1)), tok,
                                             str(root / "narrow_dropout")),
        "train": write_jsonl(str(root / "train.jsonl"), make_examples(96, seed=1)),
        "test": write_jsonl(str(root / "test.jsonl"), make_examples(40, seed=2)),
        "root": str(root),
    }
    return paths


# Two CPU processes (gloo) on any machine: with CUDA visible they would each want a GPU, and a
# 1-GPU machine refuses the second (test_more_processes_than_visible_gpus_is_refused).
TORCHRUN = ["env", "CUDA_VISIBLE_DEVICES=", sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def train_args(assets, dump_path, *extra):
    return [
        "--objective", "sequence_classification", "--teacher_name", assets["teacher"],
        "--student_name", assets["student"], "--data_file", assets["train"], "--eval_file", assets["test"],
        "--dump_path", str(dump_path), "--n_epoch", "1", "--batch_size", "16", "--learning_rate", "1e-3",
        *map(str, extra),
    ]


def run_train(args, timeout=300, launcher=None):
    """Run scripts/train.py (or torchrun) in a subprocess; returns CompletedProcess."""
    cmd = (launcher or [sys.executable]) + [TRAIN] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=SUBPROCESS_ENV, cwd=ROOT)


def train_in_process(argv):
    """scripts/train.py's exit code for `argv`, run in this process (no interpreter start-up)."""
    from distillation.cli.train import main

    return main([str(a) for a in argv])


def read_metrics(dump_path):
    with open(os.path.join(dump_path, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def build_distiller(assets, dump, **overrides):
    """A Distiller in this process (no run folder written), for tests of single steps."""
    from distillation.config import DistillConfig
    from distillation.distributed import DistEnv
    from distillation.pipeline import build

    values = {"objective": "sequence_classification", "teacher_name": assets["teacher"], "student_name": assets["student"],
              "data_file": assets["train"], "dump_path": str(dump), "group_by_size": False, "alpha_ce": 0.7,
              "alpha_task": 0.3, "max_grad_norm": 1e9, "n_epoch": 1, **overrides}
    distiller, _ = build(DistillConfig.from_dict(values), DistEnv())
    return distiller, distiller.train_dataset, distiller.tokenizer


def first_step(distiller):
    """Run the first optimizer step: (its loss terms, the gradients it applied, captured just before)."""
    captured, step = {}, distiller.scaler.step

    def spy(optimizer):
        captured.update({n: p.grad.clone() for n, p in distiller.model.named_parameters() if p.grad is not None})
        return step(optimizer)

    distiller.scaler.step = spy
    batches = distiller._batches(0)[: distiller.cfg.gradient_accumulation_steps]
    values = distiller._step([distiller.objective.collate([distiller.train_dataset[i] for i in b]) for b in batches])
    return values, captured


def first_step_grads(distiller):
    """The gradients of the first optimizer step."""
    return first_step(distiller)[1]


def kill_after_step(cmd, dump, step, timeout=240):
    """Start `cmd`, SIGKILL its whole process group once metrics.jsonl reaches `step`."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    metrics, deadline = os.path.join(dump, "metrics.jsonl"), time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and any(r.get("step", 0) >= step for r in read_metrics(dump)):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return read_metrics(dump)[-1]["step"]
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"run ended before step {step}: {proc.stderr.read().decode()[-2000:]}")


def final_weights(dump):
    return load_file(os.path.join(dump, "final", "model.safetensors"))


@pytest.fixture(scope="session")
def vllm_teacher(tmp_path_factory, request):
    """One real vLLM server for the session (tests/vllm_server.py): a tiny Llama teacher over
    lm_helpers' causal tokenizer, fp32, --max-logprobs 64. Yields (url, folder, process); a
    server that cannot start fails the test with its log's tail (never a skip)."""
    from vllm_server import VllmTeacher, build_teacher, start_server, stop_server, vllm_python

    root = tmp_path_factory.mktemp("vllm")
    folder = build_teacher(str(root / "teacher"))
    try:
        # not captured: making the venv takes minutes, and says so
        with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
            python = vllm_python()
        url, proc = start_server(folder, str(root / "server.log"), python)
    except Exception as err:  # the venv's creation or the server's start
        pytest.fail(f"vLLM teacher server: {err}", pytrace=False)
    try:
        yield VllmTeacher(url, folder, proc)
    finally:
        stop_server(proc)
