"""scripts/generate_responses.py --model_url: sequence-level KD data written by a real vLLM
server (the session's `vllm_teacher`): the local path's rows, drawn by the server."""

import json
import os

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from conftest import write_jsonl
from lm_helpers import CAUSAL_VOCAB, call_script, run_script, sentences, single_thread  # noqa: F401 - a fixture
from vllm_server import build_student

pytestmark = pytest.mark.usefixtures("single_thread")

# Greedy answers of the session's teacher (tests/vllm_server.build_teacher, seed 0) within 16
# tokens: the first four end on </s>, the last three are cut by --max_new_tokens.
PROMPTS = [("movie movie great", ""), ("fun", "dull this a dull"), ("good", "dull the"), ("this a", "why great"),
           ("it", ""), ("the", ""), ("a", "it why")]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    root = tmp_path_factory.mktemp("served_gen")
    return write_jsonl(str(root / "prompts.jsonl"), [{"instruction": i, "input": x} for i, x in PROMPTS])


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _served(vllm_teacher, prompts, dump, *extra):
    return ["--model_url", vllm_teacher.url, "--tokenizer_name", vllm_teacher.folder, "--data_file", prompts, "--dump_file", dump,
            "--num_responses", 2, "--max_new_tokens", 16, "--seed", 3, *extra]


def _set(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def test_a_rerun_writes_the_same_rows_and_an_interrupted_file_resumes_to_them(vllm_teacher, prompts, tmp_path, capsys):
    first, again = str(tmp_path / "first.jsonl"), str(tmp_path / "again.jsonl")
    assert call_script(capsys, "generate_responses", *_served(vllm_teacher, prompts, first))[0] == 0
    # one request at a time this time: other batches on the server, the same draws (per-prompt seeds)
    assert call_script(capsys, "generate_responses", *_served(vllm_teacher, prompts, again, "--requests_in_flight", 1))[0] == 0
    rows = _rows(first)
    assert _rows(again) == rows
    assert [(r["prompt_index"], r["response_index"]) for r in rows] == [(i, r) for i in range(len(PROMPTS)) for r in range(2)]
    assert rows[0]["instruction"] == "movie movie great" and rows[2]["input"] == "dull this a dull"
    assert any(rows[2 * i]["output"] != rows[2 * i + 1]["output"] for i in range(len(PROMPTS)))  # two draws, not one twice
    assert 0 < sum(r["ended_with_eos"] for r in rows) < len(rows)
    assert not [p for p in os.listdir(tmp_path) if ".part" in p or ".settings" in p]
    # Another seed draws otherwise.
    other = str(tmp_path / "other.jsonl")
    assert call_script(capsys, "generate_responses", *_set(_served(vllm_teacher, prompts, other), "--seed", 4))[0] == 0
    assert [r["output"] for r in _rows(other)] != [r["output"] for r in rows]
    # Killed after 5 rows, the 6th cut mid-line: the rerun asks for the rest, the same rows.
    cut = tmp_path / "cut.jsonl"
    (tmp_path / "cut.jsonl.part0-of-1").write_text("".join(json.dumps(r) + "\n" for r in rows[:5]) + json.dumps(rows[5])[:20])
    assert call_script(capsys, "generate_responses", *_served(vllm_teacher, prompts, str(cut)))[0] == 0
    assert _rows(cut) == rows


def test_greedy_by_the_server_is_the_local_generate(vllm_teacher, prompts, tmp_path, capsys):
    """--temperature 0: the server's answers are HF generate's on the same folder (the same ids,
    so the same text), ended_with_eos where the answer ended on </s> and only there; --top_k 1
    draws them too (top_k reaches the server)."""
    served, local, top1 = str(tmp_path / "served.jsonl"), str(tmp_path / "local.jsonl"), str(tmp_path / "top1.jsonl")
    greedy = _set(_served(vllm_teacher, prompts, served, "--temperature", 0), "--num_responses", 1)
    assert call_script(capsys, "generate_responses", *greedy)[0] == 0
    local_args = ["--model", vllm_teacher.folder, *_set(greedy[4:], "--dump_file", local)]
    assert call_script(capsys, "generate_responses", *local_args)[0] == 0
    assert _rows(served) == _rows(local)
    assert [r["ended_with_eos"] for r in _rows(served)] == [True] * 4 + [False] * 3
    assert all(r["output"] for r in _rows(served))
    assert call_script(capsys, "generate_responses", *_served(vllm_teacher, prompts, top1, "--top_k", 1))[0] == 0
    assert [(r["output"], r["ended_with_eos"]) for r in _rows(top1)] == [(r["output"], r["ended_with_eos"])
                                                                        for r in _rows(local) for _ in range(2)]


def _swapped_tokenizer(folder):
    """The teacher's word-level tokenizer with two words' ids swapped (the same size and specials)."""
    vocab = list(CAUSAL_VOCAB)
    a, b = vocab.index("movie"), vocab.index("film")
    vocab[a], vocab[b] = vocab[b], vocab[a]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(folder)
    return folder


def test_another_tokenizer_or_no_server_exits_2_and_writes_nothing(vllm_teacher, prompts, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dump = str(out / "gen.jsonl")
    swapped = _swapped_tokenizer(str(tmp_path / "swapped"))
    code, err = call_script(capsys, "generate_responses", *_set(_served(vllm_teacher, prompts, dump), "--tokenizer_name", swapped))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --model_url: the served model") and "otherwise than" in err[0], err
    dead = "http://127.0.0.1:9"  # nothing listens on the discard port
    code, err = call_script(capsys, "generate_responses", *_set(_served(vllm_teacher, prompts, dump), "--model_url", dead))
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: --model_url: no teacher server answers at {dead}"), err
    code, err = call_script(capsys, "generate_responses", *_served(vllm_teacher, prompts, dump), "--model", vllm_teacher.folder)
    assert code == 2 and err == ["error: give one of --model (a local model) and --model_url (a served one)"], err
    assert os.listdir(out) == []


def test_the_generation_benchmark_times_both_writers_and_trains_a_student_on_each(vllm_teacher, tmp_path):
    """Structure only (the numbers are measured on SmolLM2: docs/served.md): each writer answers
    every prompt once, a student trains on each file, and a rerun reuses results.json."""
    text = tmp_path / "text.txt"
    text.write_text("\n".join(sentences(30, seed=5)) + "\n")
    student = build_student(vllm_teacher.folder, str(tmp_path / "student"))
    out = tmp_path / "bench"
    args = ["--out", out, "--teacher_url", vllm_teacher.url, "--assets", vllm_teacher.folder, student, text, text, "--prompts", 6,
            "--eval_lines", 5, "--max_new_tokens", 4, "--max_seq_length", 48, "--prompt_template", "{instruction} {input}", "--seeds", 3, "--epochs", 1, "--threads", 1]
    proc = run_script("benchmark_generation.py", *args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["answers"] == {"local": 6, "served": 6} and all(v > 0 for v in results["seconds"].values())
    assert set(results["perplexity"]) == {"local-seed3", "served-seed3"} and all(v > 1 for v in results["perplexity"].values())
    assert len(_rows(out / "heldout.jsonl")) == 5 and all(r["output"] for r in _rows(out / "heldout.jsonl"))
    for writer, name in (("local", "local `generate`"), ("served", "vLLM server")):
        row = next(line for line in proc.stdout.splitlines() if name in line)
        assert f"{100 * results['seconds'][writer] / 6:.1f}" in row and f"{results['perplexity'][f'{writer}-seed3']:.2f}" in row
    os.remove(out / "student-served-seed3" / "summary.json")  # finished steps are not run again
    again = run_script("benchmark_generation.py", *args, timeout=600)
    assert again.returncode == 0 and again.stdout == proc.stdout
    no_server = run_script("benchmark_generation.py", *args[:2], *args[4:])
    assert no_server.returncode == 2 and "--teacher_url: serve the teacher first" in no_server.stderr
