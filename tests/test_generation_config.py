"""How the student (on-policy, --eval_generate) and generate_responses.py draw: by our flags
alone, never an id past the tokenizer, one set of stop ids, prompts tokenised as training does,
every rank in step, and a warning when the student's answers stop ending."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from tokenizers import processors
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

from conftest import save_model, write_jsonl
from lm_helpers import (CAUSAL_VOCAB, call_script, config, first_step, last_json_at_one_and_two_processes, llama_pair,
                        single_thread)  # noqa: F401 - a fixture
from distillation.data.lm_text import load_instructions
from distillation.distributed import DistEnv
from distillation.pipeline import build
from distillation.reporting import eval_line, run_summary
from test_on_policy import SAMPLE_METRICS

pytestmark = pytest.mark.usefixtures("single_thread")
TEMPLATE = "{instruction} {input} A:"
EOS, OTHER_STOP = 2, CAUSAL_VOCAB.index("it")


def _pair(root, vocab_padding: int = 0) -> dict:
    paths = llama_pair(root, n_train=10, student_layers=1, vocab_padding=vocab_padding)
    rows = [{"instruction": "say why", "input": f"the {noun} {verb}", "output": f"it {verb} good"}
            for noun in ("movie", "film", "plot", "actor") for verb in ("is", "was")]
    paths["instructions"] = write_jsonl(str(root / "instructions.jsonl"), rows)
    paths["root"] = root
    return paths


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return _pair(tmp_path_factory.mktemp("genconfig"))


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """Both vocabularies 2 rows past the tokenizer (Qwen's have hundreds)."""
    return _pair(tmp_path_factory.mktemp("padded"), vocab_padding=2)


def _variant(pair, name, role="student", edit=None, generation=None):
    """A copy of the `role` model folder, its weights changed by `edit(model)`, with
    `generation` as its generation_config.json."""
    model = AutoModelForCausalLM.from_pretrained(pair[role])
    if edit:
        with torch.no_grad():
            edit(model)
    if generation:
        model.generation_config = GenerationConfig(**generation)
    return save_model(model, AutoTokenizer.from_pretrained(pair[role]), str(pair["root"] / name))


def _pad_rows_win(model):
    """The two rows past the tokenizer along ±(the first hidden unit): one of them has a huge
    logit whatever the sign, so an unmasked draw takes it."""
    model.model.norm.weight[0] = 5.0
    weight = model.get_output_embeddings().weight
    weight[len(CAUSAL_VOCAB):] = 0
    weight[len(CAUSAL_VOCAB), 0], weight[len(CAUSAL_VOCAB) + 1, 0] = 200.0, -200.0


def _cfg(pair, dump, **values):
    base = dict(objective="clm", data_file=pair["instructions"], eval_file=pair["instructions"], teacher_name=pair["teacher"],
                student_name=pair["student"], prompt_template=TEMPLATE, batch_size=4, max_seq_length=24, group_by_size=False,
                dump_path=str(dump), alpha_ce=1.0, alpha_task=0.0, gradient_accumulation_steps=1, eval_generate=8, max_new_tokens=12)
    return config(**{**base, **values})


def _sample(pair, tmp_path, **values):
    d, _ = build(_cfg(pair, tmp_path / "run", **values), DistEnv())
    return d.on_policy.sample_metrics(d.eval_prompts, d.model, d.teacher, DistEnv())


def _responses(pair, capsys, dump, model, *extra):
    args = ["--model", model, "--data_file", pair["instructions"], "--dump_file", dump, "--num_responses", 2,
            "--max_new_tokens", 8, "--seed", 3, "--prompt_template", TEMPLATE, *extra]
    assert call_script(capsys, "generate_responses", *args)[0] == 0
    with open(dump) as f:
        return [json.loads(line) for line in f]


def test_the_folder_generation_config_does_not_change_the_draws(pair, tmp_path, capsys):
    """A folder's generation_config.json with repetition_penalty 50 and no_repeat_ngram_size 1
    (and sampling knobs, and fields our config leaves unset: min_new_tokens, suppress_tokens)
    draws what the bare folder draws, on-policy and in generate_responses.py; --repetition_penalty
    is how a user asks for one."""
    leaky = {"do_sample": True, "temperature": 0.3, "top_k": 1, "repetition_penalty": 50.0, "no_repeat_ngram_size": 1,
             "min_new_tokens": 6, "suppress_tokens": [CAUSAL_VOCAB.index("it")], "eos_token_id": EOS, "pad_token_id": 3}
    student = _variant(pair, "leaky_student", generation=leaky)
    assert _sample(pair, tmp_path / "a", student_name=student) == _sample(pair, tmp_path / "b")
    writer = _variant(pair, "leaky_teacher", role="teacher", generation=leaky)
    plain = _responses(pair, capsys, str(tmp_path / "plain.jsonl"), pair["teacher"])
    assert _responses(pair, capsys, str(tmp_path / "leaky.jsonl"), writer) == plain
    penalised = _responses(pair, capsys, str(tmp_path / "penalised.jsonl"), pair["teacher"], "--repetition_penalty", 50)
    assert [r["output"] for r in penalised] != [r["output"] for r in plain]


def test_ids_past_the_tokenizer_are_never_drawn(padded, tmp_path, capsys, monkeypatch):
    """Models whose two pad rows (past len(tokenizer)) have huge logits: on-policy steps train
    (no out-of-bounds target), --eval_generate and generate_responses.py draw tokenizer ids only."""
    student = _variant(padded, "pad_student", edit=_pad_rows_win)
    cfg = _cfg(padded, tmp_path / "step", student_name=student, on_policy_fraction=1.0)
    terms, _ = first_step(cfg)
    assert torch.isfinite(torch.tensor(terms["loss"]))
    _, answers = _sample(padded, tmp_path, student_name=student)
    tok = AutoTokenizer.from_pretrained(padded["student"])
    assert all(a["answer"].strip() for a in answers)  # drawn, and every id is a word
    drawn = []
    generate = LlamaForCausalLM.generate
    monkeypatch.setattr(LlamaForCausalLM, "generate", lambda self, *a, **k: drawn.append(generate(self, *a, **k)) or drawn[-1])
    _responses(padded, capsys, str(tmp_path / "rows.jsonl"), _variant(padded, "pad_teacher", role="teacher", edit=_pad_rows_win))
    assert drawn and all(int(out.max()) < len(tok) for out in drawn)


def test_prompts_are_tokenised_as_training_tokenises_them(pair, tmp_path, capsys, monkeypatch):
    """A tokenizer that adds BOS (Llama's): the writer is asked exactly the prompt ids the
    student trains on, BOS included."""
    tok = AutoTokenizer.from_pretrained(pair["teacher"])
    tok._tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    folder = str(pair["root"] / "bos_teacher")
    shutil.copytree(pair["teacher"], folder)
    tok.save_pretrained(folder)
    asked = []
    generate = LlamaForCausalLM.generate
    monkeypatch.setattr(LlamaForCausalLM, "generate", lambda self, ids, **k: asked.append(ids[0].tolist()) or generate(self, ids, **k))
    dump = str(tmp_path / "rows.jsonl")
    _responses(pair, capsys, dump, folder, "--num_responses", 1)
    trained = load_instructions(dump, "--data_file", AutoTokenizer.from_pretrained(folder), 64, TEMPLATE)
    assert asked[0][0] == tok.bos_token_id
    assert asked == [trained[i]["input_ids"][: trained[i]["prompt_len"]] for i in range(len(trained))]


def test_every_stop_id_ends_an_answer_and_counts_as_eos(pair, tmp_path, capsys):
    """The model's generation_config lists a second EOS (Qwen-Instruct: <|im_end|>, <|endoftext|>),
    which the model says often: an answer ending on it ended (generate_responses.py's
    ended_with_eos, on-policy's cut) and trains with the tokenizer's EOS after it."""
    def likes_other_stop(model):
        model.get_output_embeddings().weight[OTHER_STOP] *= 8

    generation = {"eos_token_id": [EOS, OTHER_STOP], "pad_token_id": 3}
    student = _variant(pair, "two_stops_student", edit=likes_other_stop, generation=generation)
    metrics, answers = _sample(pair, tmp_path, student_name=student)
    tok = AutoTokenizer.from_pretrained(pair["student"])
    other = tok.convert_ids_to_tokens(OTHER_STOP)
    assert any(a["answer"].split()[-1:] == [other] for a in answers)
    assert all(a["ended_with_eos"] == (a["answer"].split()[-1:] in ([other], [tok.eos_token])) for a in answers)
    assert not any(other in a["answer"].split()[:-1] for a in answers)  # cut through the first stop id
    writer = _variant(pair, "two_stops_teacher", role="teacher", edit=likes_other_stop, generation=generation)
    dump = str(tmp_path / "rows.jsonl")
    rows = _responses(pair, capsys, dump, writer, "--max_new_tokens", 12)
    assert any(r["ended_with_eos"] for r in rows) and all(other not in r["output"].split() for r in rows)
    trained = load_instructions(dump, "--data_file", tok, 64, TEMPLATE)
    assert [trained[i]["input_ids"][-1] == EOS for i in range(len(trained))] == [r["ended_with_eos"] for r in rows]


def test_eval_generate_with_fewer_prompts_than_processes_under_fsdp(pair, tmp_path):
    """--eval_generate 1 at 2 processes: the rank without a prompt repeats prompt 0 in step with
    the other (fsdp's collectives) and drops it: the one-process numbers."""
    args = ["--objective", "clm", "--teacher_name", pair["teacher"], "--student_name", pair["student"], "--data_file",
            pair["instructions"], "--eval_file", pair["instructions"], "--prompt_template", TEMPLATE, "--max_seq_length", 16,
            "--eval_generate", 1, "--dump_path", tmp_path / "unused", "--gradient_accumulation_steps", 1]
    runs = last_json_at_one_and_two_processes(SAMPLE_METRICS, tmp_path, args, fsdp=True)
    assert runs[1] == runs[2] == runs["fsdp"]
    assert [a["prompt_index"] for a in runs[1][0][1]] == [0]


def _eos_prone(model):
    model.get_output_embeddings().weight[EOS] *= 6


def _never_ends(model):
    """Hidden unit 0 always large and positive (every embedding's), and EOS's row along -it: EOS
    is never drawn."""
    embeddings = model.get_input_embeddings().weight
    embeddings[:, 0] = 100.0
    model.get_output_embeddings().weight[EOS] = 0
    model.get_output_embeddings().weight[EOS, 0] = -100.0


def test_answers_that_stop_ending_warn(pair, tmp_path):
    """The teacher's own answers to the same prompts are the yardstick: a student that never says
    EOS is warned about at each eval and in the summary; one that says it as often as the
    teacher is not."""
    teacher = _variant(pair, "eos_teacher", role="teacher", edit=_eos_prone)
    ok, _ = _sample(pair, tmp_path / "ok", teacher_name=teacher, student_name=teacher)
    assert ok["eval_sample_eos"] == ok["eval_teacher_sample_eos"] > 0
    assert "warning" not in eval_line(5, 1.0, {"eval_loss": 1.0, **ok})
    mute = _variant(pair, "mute_student", edit=_never_ends)
    collapsed, _ = _sample(pair, tmp_path / "mute", teacher_name=teacher, student_name=mute)
    assert collapsed["eval_sample_eos"] == 0 and collapsed["eval_teacher_sample_eos"] == ok["eval_teacher_sample_eos"]
    line = eval_line(5, 1.0, {"eval_loss": 1.0, **collapsed})
    assert "warning: the student's answers end with EOS 0% of the time" in line and "--divergence forward_kl" in line
    summary = {"examples_per_s": 0, "interrupted": False, "stopped_early": False, "step": 5, "epoch": 1.0, "wall_time_s": 1.0,
               "best": None, "final": "final"}
    for metrics, warned in ((collapsed, True), (ok, False)):
        run = SimpleNamespace(last_eval={"eval_loss": 1.0, **metrics}, last_eval_step=5, cfg=SimpleNamespace(dump_path="run"))
        assert any(line.startswith("warning: the student's answers end with EOS") for line in run_summary(run, summary)) == warned
