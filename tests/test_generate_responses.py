"""scripts/generate_responses.py (sequence-level KD): a model's responses to instruction prompts,
as jsonl that train.py reads as clm instruction data; an interrupted file resumes to the
unbroken run's rows, and 2 processes write the same file as 1."""

import json
import os
import subprocess
import sys

import pytest
from transformers import AutoTokenizer

from conftest import ROOT, SUBPROCESS_ENV, train_in_process, write_jsonl
from distillation.data.lm_text import load_instructions
from lm_helpers import call_script, llama_pair, single_thread  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def writer(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    pair = llama_pair(root, n_train=20, student_layers=1)
    prompts = [{"instruction": "say why", "input": f"the {noun}"} for noun in ("movie", "film", "plot", "actor", "movie")]
    prompts += [{"instruction": "say", "input": None, "output": "ignored"}]
    return {**pair, "prompts": write_jsonl(str(root / "prompts.jsonl"), prompts), "root": root}


def _rows(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _args(writer, dump, *extra):
    return ["--model", writer["teacher"], "--data_file", writer["prompts"], "--dump_file", dump, "--num_responses", 2,
            "--max_new_tokens", 6, "--seed", 3, *extra]


def test_responses_are_instruction_data_and_an_interrupted_file_resumes_to_the_same_rows(writer, tmp_path, capsys):
    full = str(tmp_path / "full.jsonl")
    assert call_script(capsys, "generate_responses", *_args(writer, full))[0] == 0
    rows = _rows(full)
    assert [(r["prompt_index"], r["response_index"]) for r in rows] == [(i, r) for i in range(6) for r in range(2)]
    assert rows[0]["instruction"] == "say why" and rows[0]["input"] == "the movie" and rows[-1]["input"] == ""
    assert all(isinstance(r["output"], str) for r in rows) and rows[-1]["output"] != "ignored"
    assert rows[0]["output"] != rows[1]["output"] or rows[2]["output"] != rows[3]["output"]  # sampled, not copied
    assert not [p for p in os.listdir(tmp_path) if ".part" in p or ".settings" in p]
    # Killed after 5 rows, the 6th cut mid-line: the rerun writes only what is missing, the same rows.
    part = tmp_path / "cut.jsonl.part0-of-1"
    part.write_text("".join(json.dumps(r) + "\n" for r in rows[:5]) + json.dumps(rows[5])[:20])
    cut = str(tmp_path / "cut.jsonl")
    assert call_script(capsys, "generate_responses", *_args(writer, cut))[0] == 0
    assert _rows(cut) == rows
    # A response cut by --max_new_tokens is no ending: clm reads it without an EOS.
    tokenizer = AutoTokenizer.from_pretrained(writer["teacher"])
    dataset = load_instructions(full, "--data_file", tokenizer, 64, None)
    ends = [dataset[i]["input_ids"][-1] == tokenizer.eos_token_id for i in range(len(dataset))]
    assert ends == [r["ended_with_eos"] for r in rows] and 0 < sum(ends) < len(rows)
    # The file trains a student as instruction data.
    assert train_in_process(["--objective", "clm", "--student_name", writer["student"], "--data_file", full, "--max_steps", 2,
                             "--batch_size", 4, "--gradient_accumulation_steps", 1, "--dump_path", tmp_path / "student"]) == 0


def test_two_processes_write_the_one_process_file(writer, tmp_path, capsys):
    one = str(tmp_path / "one.jsonl")
    assert call_script(capsys, "generate_responses", *_args(writer, one))[0] == 0
    two = str(tmp_path / "two.jsonl")
    cmd = ["env", "CUDA_VISIBLE_DEVICES=", sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "scripts", "generate_responses.py"), *map(str, _args(writer, two))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=SUBPROCESS_ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _rows(two) == _rows(one)


def test_top_k_is_passed_to_generate(writer, tmp_path, capsys):
    """--top_k 1 draws the most likely token: sampled responses equal the greedy ones (generate's
    own fallback, top 50, would not cut this tiny vocabulary at all)."""
    top1, greedy = str(tmp_path / "top1.jsonl"), str(tmp_path / "greedy.jsonl")
    assert call_script(capsys, "generate_responses", *_args(writer, top1, "--top_k", 1))[0] == 0
    args = _args(writer, greedy, "--temperature", 0)
    args[args.index("--num_responses") + 1] = 1
    assert call_script(capsys, "generate_responses", *args)[0] == 0
    assert [r["output"] for r in _rows(top1)] == [r["output"] for r in _rows(greedy) for _ in range(2)]


def test_bad_input_is_one_line_and_writes_nothing(writer, tmp_path, capsys):
    dump = str(tmp_path / "out.jsonl")
    no_instruction = write_jsonl(str(tmp_path / "bad.jsonl"), [{"prompt": "hi"}])
    cases = {
        "--data_file: ": ["--data_file", no_instruction],
        "--num_responses 2: greedy decoding": ["--temperature", 0],
        "--model: cannot load a model config": ["--model", str(tmp_path / "nowhere")],
    }
    for message, extra in cases.items():
        args = _args(writer, dump)
        for flag, value in zip(extra[::2], extra[1::2]):
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        code, err = call_script(capsys, "generate_responses", *args)
        assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {message}"), (message, err)
        assert os.listdir(tmp_path) == ["bad.jsonl"], os.listdir(tmp_path)
    open(dump, "w").close()
    code, err = call_script(capsys, "generate_responses", *_args(writer, dump))
    assert code == 2 and "already exists; add --force" in err[0]
