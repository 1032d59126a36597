"""A big teacher's levers: the teacher held in its compute dtype (--teacher_dtype) and the memory
plan each run states before step 1 (distillation/memory_plan.py), checked against the tensors
a run really holds."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoConfig

from conftest import ROOT
from lm_helpers import call_script, config, first_step, llama_pair, single_thread  # noqa: F401 - a fixture
from distillation.distributed import DistEnv
from distillation.memory_plan import GIB, memory_plan, plan_of_run
from distillation.pipeline import build

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return llama_pair(tmp_path_factory.mktemp("big"), n_train=60, student_layers=1, vocab_padding=5)


def _cfg(pair, dump, **values):
    base = dict(objective="clm", data_file=pair["train"], teacher_name=pair["teacher"], student_name=pair["student"], alpha_ce=1.0,
                alpha_task=0.5, batch_size=4, max_seq_length=24, group_by_size=False, dump_path=str(dump))
    return config(**{**base, **values})


def test_the_teacher_is_held_in_the_compute_dtype_and_its_loss_stays_close(pair, tmp_path):
    """--precision bf16 holds the teacher in bf16 (half the bytes), --teacher_dtype overrides; the KD
    term of the first step against an fp32 teacher's (the same student, batch and autocast)."""
    distiller, _ = build(_cfg(pair, tmp_path / "a", precision="bf16"), DistEnv())
    fp32_bytes = sum(p.numel() * 4 for p in distiller.teacher.model.parameters())
    assert {p.dtype for p in distiller.teacher.model.parameters()} == {torch.bfloat16}
    assert sum(p.numel() * p.element_size() for p in distiller.teacher.model.parameters()) == fp32_bytes // 2
    kept, _ = build(_cfg(pair, tmp_path / "b", precision="bf16", teacher_dtype="fp32"), DistEnv())
    assert {p.dtype for p in kept.teacher.model.parameters()} == {torch.float32}
    bf16_teacher, _ = first_step(_cfg(pair, tmp_path / "c", precision="bf16"))
    fp32_teacher, _ = first_step(_cfg(pair, tmp_path / "d", precision="bf16", teacher_dtype="fp32"))
    assert bf16_teacher["ce"] != fp32_teacher["ce"]  # the teacher did change
    assert bf16_teacher["ce"] == pytest.approx(fp32_teacher["ce"], rel=0.05)
    assert bf16_teacher["task"] == fp32_teacher["task"]  # the student's own loss does not see the teacher


def test_the_plan_matches_the_bytes_a_run_holds(pair, tmp_path):
    """Teacher, student, gradient and AdamW bytes of the plan equal those read off the tensors
    after one step (one process; the fsdp division by N is the hand formula below)."""
    distiller, _ = build(_cfg(pair, tmp_path / "run", precision="bf16"), DistEnv())
    plan = plan_of_run(distiller)
    grads = {}
    step = distiller.scaler.step

    def spy(optimizer):
        grads.update({n: p.grad.numel() * p.grad.element_size() for n, p in distiller.model.named_parameters() if p.grad is not None})
        return step(optimizer)

    distiller.scaler.step = spy
    batches = distiller._batches(0)[:1]
    distiller._step([distiller.objective.collate([distiller.train_dataset[i] for i in b]) for b in batches])
    teacher = sum(p.numel() * p.element_size() for p in distiller.teacher.model.parameters())
    student = sum(p.numel() * p.element_size() for p in distiller.model.parameters())
    adamw = sum(v.numel() * v.element_size() for s in distiller.optimizer.state.values() for k, v in s.items() if k != "step")
    assert (plan.teacher, plan.student, plan.gradients, plan.adamw) == (teacher, student, sum(grads.values()), adamw)
    columns = len(distiller.tokenizer)
    assert plan.logits == 4 * 24 * columns * (2 * 2 + 16)  # batch x seq rows, both models' bf16 logits + 4 fp32 copies


def test_the_plan_of_fsdp_divides_what_is_sharded():
    dense = memory_plan(1000, "bf16", 200, 200, 1, False, False, "bf16", 10, 50)
    sharded = memory_plan(1000, "bf16", 200, 200, 4, True, True, "bf16", 10, 50)
    replicated = memory_plan(1000, "bf16", 200, 200, 4, True, False, "bf16", 10, 50)
    assert (dense.teacher, dense.student, dense.gradients, dense.adamw) == (2000, 800, 800, 1600)
    assert (sharded.teacher, sharded.student, sharded.gradients, sharded.adamw) == (500, 200, 200, 400)
    assert replicated.teacher == 2000 and replicated.student == 200
    # A sharded teacher's root (embeddings, head: 100 of its 1,000 parameters) stays gathered after its forward.
    assert memory_plan(1000, "bf16", 200, 200, 4, True, True, "bf16", 10, 50, teacher_root_params=100).teacher == (250 + 100) * 2
    assert memory_plan(1000, "bf16", 200, 200, 4, True, False, "bf16", 10, 50, teacher_root_params=100).teacher == 2000
    chunked = memory_plan(1000, "bf16", 200, 200, 1, False, False, "bf16", 10, 50, chunk_rows=4, hidden_sizes=(8, 16))
    assert chunked.logits == 4 * 50 * 20 + 10 * (8 + 16) * 2 and dense.logits == 10 * 50 * 20


def test_plan_only_of_the_8b_pairs_reads_the_real_configs(tmp_path):
    """scripts/benchmark_scale.py --plan_only: parameter counts from the configs in
    training_configs/models (built on the meta device), the published sizes."""
    cmd = [sys.executable, "scripts/benchmark_scale.py", "--plan_only", "--teacher_config", "training_configs/models/llama-3.1-8b.json",
           "--student_config", "training_configs/models/llama-3.2-1b.json", "--processes", "8", "--strategies", "fsdp", "ddp",
           "--seq", "4096", "--tokens_per_step", "4096", "--precision", "bf16", "--columns", "128256"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "8,030,261,248" in proc.stdout and "1,235,814,400" in proc.stdout  # Llama-3.1-8B, Llama-3.2-1B
    fsdp = next(line for line in proc.stdout.splitlines() if line.startswith("| fsdp | 8 | 4096 |"))
    root = 2 * 128256 * 4096 + 4096  # embeddings, untied LM head, final norm: gathered after the teacher's forward
    teacher_gib = (8_030_261_248 / 8 + root) * 2 / GIB
    assert fsdp.split("|")[5].strip() == f"{teacher_gib:.2f}"
    assert AutoConfig.from_pretrained(f"{ROOT}/training_configs/models/qwen2.5-7b.json").vocab_size == 152064
    for change, expect in ((["--teacher_config", "nope.json"], "error: --teacher_config: no such file 'nope.json'"),
                           (["--columns", "200000"], "error: --columns 200000: must be between 1 and the smaller vocab_size (128256)"),
                           (["--processes", "0"], "error: --processes must be >= 1 (got 0)")):
        bad = subprocess.run(cmd + change, capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert bad.returncode == 2 and bad.stderr.strip() == expect, bad.stderr


def test_the_cache_pass_runs_the_teacher_in_its_dtype_under_autocast(pair, tmp_path, capsys):
    """cache_teacher.py --precision bf16: the teacher in bf16 (recorded in the manifest), the cached
    entropies those of a bf16 forward pass: close to an fp32 pass's, not equal."""
    folders = {}
    for precision in ("fp32", "bf16"):
        folders[precision] = tmp_path / precision
        code, err = call_script(capsys, "cache_teacher", "--teacher_name", pair["teacher"], "--data_file", pair["train"],
                                "--max_seq_length", 24, "--dump_path", folders[precision], "--precision", precision)
        assert code == 0, err
    manifest = json.loads((folders["bf16"] / "manifest.json").read_text())
    assert (manifest["precision"], manifest["teacher_dtype"]) == ("bf16", "bf16")
    fp32, bf16 = (np.load(folders[p] / "shard-00000.entropy.npy").astype(np.float64) for p in ("fp32", "bf16"))
    assert not np.array_equal(fp32, bf16) and np.allclose(fp32, bf16, rtol=0.05)


def test_fsdp_with_chunked_losses_equals_fsdp_dense(pair, tmp_path):
    """2 processes under fsdp: --loss_chunk_rows 7 (a tied student head, an untied teacher head,
    both vocabularies padded past the tokenizer) takes the same losses step for step and ends at
    the same weights as the dense loss, in fp32."""
    from conftest import TORCHRUN, final_weights, read_metrics, run_train

    common = ["--objective", "clm", "--teacher_name", pair["teacher"], "--student_name", pair["student"], "--data_file", pair["train"],
              "--max_seq_length", 24, "--batch_size", 4, "--no-group_by_size", "--log_interval", 1, "--max_steps", 6, "--alpha_ce", 1,
              "--alpha_task", 0.5, "--strategy", "fsdp"]
    runs = {}
    for name, extra in (("dense", []), ("chunked", ["--loss_chunk_rows", 7])):
        proc = run_train([*map(str, common), "--dump_path", str(tmp_path / name), *map(str, extra)], launcher=TORCHRUN)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = [(r["loss_ce"], r["loss_clm"]) for r in read_metrics(tmp_path / name) if "loss" in r]
    assert len(runs["dense"]) == 6
    for dense, chunked in zip(runs["dense"], runs["chunked"]):
        assert chunked == pytest.approx(dense, rel=1e-5)
    dense, chunked = final_weights(tmp_path / "dense"), final_weights(tmp_path / "chunked")
    assert dense.keys() == chunked.keys()
    for key in dense:
        assert torch.allclose(dense[key], chunked[key], atol=1e-5), key


@pytest.mark.parametrize("eval_data", ["text", "instructions"])
def test_chunked_evaluation_equals_dense_evaluation(pair, tmp_path, eval_data):
    """--loss_chunk_rows 5 scores the held-out set chunk by chunk: every metric (loss, perplexity,
    accuracy, exact match; student and teacher) equals the dense path's."""
    from conftest import write_jsonl
    from distillation.evaluation import evaluate

    eval_file = pair["eval"] if eval_data == "text" else write_jsonl(str(tmp_path / "eval.jsonl"), [
        {"instruction": "say why", "input": "the movie", "output": "it is good"},
        {"instruction": "say", "input": "", "output": "the plot was dull the actor was bad"}])
    metrics = {}
    for name, chunk in (("dense", 0), ("chunked", 5)):
        distiller, _ = build(_cfg(pair, tmp_path / name, eval_file=eval_file, loss_chunk_rows=chunk, prompt_template=None), DistEnv())
        d = distiller
        metrics[name] = evaluate(d.model, d.teacher, d.objective, d.eval_dataset, 3, d.env, d.autocast, 0)
    assert metrics["chunked"].keys() == metrics["dense"].keys()
    assert ("eval_exact_match" in metrics["dense"]) == (eval_data == "instructions")
    for key, value in metrics["dense"].items():
        assert metrics["chunked"][key] == pytest.approx(value, rel=1e-5), key
