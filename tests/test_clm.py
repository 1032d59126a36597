"""The clm objective: label shift, response-only instruction targets, text blocks, and a real
distillation from a teacher trained in the test."""

import json
import re

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from conftest import read_metrics, save_model, write_jsonl
from distillation.data.lm_text import ALPACA_PROMPT, ALPACA_PROMPT_NO_INPUT, render_prompt
from distillation.errors import InputError
from distillation.losses import forward_kl
from distillation.objectives.clm import shift_labels
from distillation.pipeline import run
from lm_helpers import (  # noqa: F401 - single_thread is a fixture
    CAUSAL_VOCAB, call_script, causal_tokenizer, config, first_step, heldout_loss, objective_for, sentences, single_thread, write_binarized,
)

pytestmark = pytest.mark.usefixtures("single_thread")
TEMPLATE = "Q: {instruction} {input} A:"
RECORDS = [
    {"instruction": "say why", "input": "the movie", "output": "it is good"},
    {"instruction": "say", "input": "", "output": "the plot was dull the actor was bad"},
]


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("clm")
    tok = causal_tokenizer(str(root / "tok"))
    (root / "train.txt").write_text("\n".join(sentences(200, seed=1)) + "\n")
    (root / "eval.txt").write_text("\n".join(sentences(40, seed=2)) + "\n")
    return {"root": root, "tok": str(root / "tok"), "tokenizer": tok, "train": str(root / "train.txt"),
            "eval": str(root / "eval.txt"), "instructions": write_jsonl(str(root / "inst.jsonl"), RECORDS)}


def _objective(lm, **values):
    return objective_for(config(objective="clm", student_config="x", tokenizer_name=lm["tok"], **values))


def test_shift_labels():
    labels = torch.tensor([[5, 6, 7, -100], [-100, -100, 8, 9]])
    assert torch.equal(shift_labels(labels), torch.tensor([[6, 7, -100, -100], [-100, 8, 9, -100]]))


def test_instruction_loss_and_kl_cover_the_response_only(lm):
    objective = _objective(lm, prompt_template=TEMPLATE)
    dataset = objective.load_dataset(lm["instructions"], "--data_file")
    tok = lm["tokenizer"]
    prompts = [tok(TEMPLATE.format(**r))["input_ids"] for r in RECORDS]
    responses = [tok(r["output"])["input_ids"] + [tok.eos_token_id] for r in RECORDS]
    for i in range(2):
        assert dataset[i]["input_ids"] == prompts[i] + responses[i] and dataset[i]["prompt_len"] == len(prompts[i])
    batch = objective.collate([dataset[0], dataset[1]])
    g = torch.Generator().manual_seed(0)
    s = torch.randn(*batch["input_ids"].shape, len(CAUSAL_VOCAB), generator=g)
    t = torch.randn(*batch["input_ids"].shape, len(CAUSAL_VOCAB), generator=g)
    # By hand: position p predicts token p+1, for p from the prompt's last token to the one before the last.
    rows = [(b, p) for b in range(2) for p in range(len(prompts[b]) - 1, len(prompts[b]) + len(responses[b]) - 1)]
    targets = torch.tensor([batch["input_ids"][b, p + 1] for b, p in rows])
    s_rows, t_rows = torch.stack([s[b, p] for b, p in rows]), torch.stack([t[b, p] for b, p in rows])
    assert torch.equal(targets, torch.tensor(responses[0] + responses[1]))
    counts = objective.counts(batch)
    assert counts["task"] == counts["rows"] == len(rows)
    assert torch.allclose(objective.task_loss(s, batch), F.cross_entropy(s_rows, targets, reduction="sum"))
    ours_s, ours_t = objective.distill_rows(s, t, batch)
    assert torch.equal(ours_s, s_rows) and torch.equal(ours_t, t_rows)
    assert torch.allclose(forward_kl(ours_s, ours_t, 2.0), forward_kl(s_rows, t_rows, 2.0))
    metrics = objective.eval_metrics(objective.eval_batch(s, t, batch))
    assert metrics["perplexity"] == pytest.approx(torch.exp(F.cross_entropy(s_rows, targets)).item(), rel=1e-4)
    assert "teacher_perplexity" in metrics


def test_prompt_rendering_truncation_and_refusals(lm, tmp_path):
    tok = lm["tokenizer"]
    assert render_prompt("x", "", tok, None) == ALPACA_PROMPT_NO_INPUT.format(instruction="x")
    assert render_prompt("x", "y", tok, None) == ALPACA_PROMPT.format(instruction="x", input="y")
    chat = causal_tokenizer(str(tmp_path / "chat"))
    chat.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}"
    assert render_prompt("x", "y", chat, None) == "<user>x\n\ny<bot>"
    with pytest.raises(InputError, match="--prompt_template"):
        render_prompt("x", "", tok, "{question}")
    # max 8 tokens: record 0's 6-token prompt keeps 2 response tokens, record 1's 3-token prompt keeps 5.
    dataset = _objective(lm, prompt_template=TEMPLATE, max_seq_length=8).load_dataset(lm["instructions"], "--data_file")
    assert dataset.lengths == [8, 8] and [dataset[i]["prompt_len"] for i in range(2)] == [6, 3]
    dataset = _objective(lm, prompt_template=TEMPLATE, max_seq_length=4).load_dataset(lm["instructions"], "--data_file")
    assert dataset.lengths == [4] and dataset[0]["prompt_len"] == 3  # record 0's prompt fills it: dropped
    with pytest.raises(InputError, match="no response is left"):
        _objective(lm, prompt_template=TEMPLATE, max_seq_length=3).load_dataset(lm["instructions"], "--data_file")
    bad = write_jsonl(str(tmp_path / "bad.jsonl"), [{"prompt": "the movie"}])  # neither instruction nor text records
    with pytest.raises(InputError, match="--eval_file: .* line 1: no 'instruction' and 'output' fields .* text records"):
        _objective(lm).load_dataset(bad, "--eval_file")
    with pytest.raises(InputError, match="--data_file: no such file"):
        _objective(lm).load_dataset(str(tmp_path / "missing.txt"), "--data_file")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(InputError, match="fewer than 2 tokens"):
        _objective(lm).load_dataset(str(tmp_path / "empty.txt"), "--data_file")


def test_text_file_becomes_blocks_of_max_seq_length(lm):
    objective = _objective(lm, max_seq_length=16)
    dataset = objective.load_dataset(lm["train"], "--data_file")
    with open(lm["train"]) as f:
        ids = lm["tokenizer"](f.read().split("\n"), add_special_tokens=False)["input_ids"]
    flat = [i for line in ids for i in line]
    assert sum(dataset.lengths) == len(flat) and set(dataset.lengths[:-1]) == {16}
    assert [i for k in range(len(dataset)) for i in dataset[k]["input_ids"]] == flat
    with open(lm["train"]) as f:
        n_lines = len(f.readlines())
    assert (dataset.unit, dataset.read) == ("blocks of 16 tokens", f"{n_lines:,} lines, {len(flat):,} tokens")  # for the header
    batch = objective.collate([dataset[0], dataset[len(dataset) - 1]])
    assert objective.counts(batch)["task"] == 15 + dataset.lengths[-1] - 1


def test_cache_teacher_logits_is_refused(lm, tmp_path):
    cfg = config(objective="clm", student_config="x", tokenizer_name=lm["tok"], teacher_name="unused", alpha_ce=1.0,
                 cache_teacher_logits=True, dump_path=str(tmp_path / "run"))
    with pytest.raises(InputError, match="--cache_teacher_logits: clm .* too large to cache"):
        run(cfg)


def _llama(hidden, layers, vocab_size=len(CAUSAL_VOCAB), **kw):
    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1,
                       eos_token_id=2, pad_token_id=3, **kw)


def test_clm_distillation_lowers_heldout_loss(lm, capsys):
    """Teacher: a Llama trained here on the text file. Student: a smaller Llama distilled from it
    on the same text binarized (both data paths), compared on held-out text before and after."""
    root = lm["root"]
    teacher_cfg = root / "teacher.json"
    teacher_cfg.write_text(json.dumps({"model_type": "llama", **_llama(64, 2).to_diff_dict()}))
    common = {"objective": "clm", "eval_file": lm["eval"], "batch_size": 16, "gradient_accumulation_steps": 1,
              "log_interval": 5, "learning_rate": 3e-3, "max_seq_length": 32}
    run(config(**common, data_file=lm["train"], student_config=str(teacher_cfg), tokenizer_name=lm["tok"],
               dump_path=str(root / "teacher"), max_steps=40, warmup_prop=0.0))
    assert re.search(rf"data: \d+ training blocks of 32 tokens \({re.escape(lm['train'])}: \d+ lines, [\d,]+ tokens\), "
                     r"\d+ evaluation blocks of 32 tokens", capsys.readouterr().out)
    binarized = write_binarized(root / "train.pickle", lm["tokenizer"], sentences(200, seed=1))
    torch.manual_seed(0)
    init = save_model(LlamaForCausalLM(_llama(32, 1)), lm["tokenizer"], str(root / "student_init"))
    dump = root / "student"
    summary = run(config(**common, data_file=binarized, teacher_name=str(root / "teacher" / "final"), student_name=init,
                         dump_path=str(dump), alpha_ce=1.0, alpha_task=1.0, max_steps=30))
    train = [r for r in read_metrics(dump) if "loss" in r]
    assert {"loss_ce", "loss_clm"} <= set(train[-1]) and train[-1]["loss"] < train[0]["loss"]
    assert summary["eval_teacher_perplexity"] < summary["eval_perplexity"]
    objective = _objective(lm, max_seq_length=32)
    before = heldout_loss(AutoModelForCausalLM.from_pretrained(init), objective, lm["eval"])
    after = heldout_loss(AutoModelForCausalLM.from_pretrained(dump / "final"), objective, lm["eval"])
    assert after < before - 0.3, (before, after)

    # The same student under GKD's symmetric JSD: its soft-target term falls and it learns.
    jsd = root / "student_jsd"
    run(config(**common, data_file=binarized, teacher_name=str(root / "teacher" / "final"), student_name=init,
               dump_path=str(jsd), alpha_ce=1.0, alpha_task=1.0, max_steps=30, divergence="jsd", divergence_beta=0.5))
    train = [r for r in read_metrics(jsd) if "loss" in r]
    assert train[-1]["loss_ce"] < 0.7 * train[0]["loss_ce"], (train[0], train[-1])
    after_jsd = heldout_loss(AutoModelForCausalLM.from_pretrained(jsd / "final"), objective, lm["eval"])
    assert after_jsd < before - 0.3, (before, after_jsd)


def test_convert_gguf_bad_input(tmp_path, capsys):
    code, err = call_script(capsys, "convert_gguf.py", "--gguf_file", tmp_path / "none.gguf", "--output_dir", tmp_path / "out")
    assert code == 2 and len(err) == 1 and "--gguf_file: no such file" in err[0] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("position", [0, -1], ids=["first", "last"])
@pytest.mark.parametrize("change,expect", [
    ({"output": None}, "output field 'output' is null, not a string"),
    ({"output": 7}, "output field 'output' is 7, not a string"),
    ({"instruction": ["say"]}, "instruction field 'instruction' is [\"say\"], not a string"),
    ({"input": 3}, "input field 'input' is 3, not a string"),
], ids=["null output", "number output", "list instruction", "number input"])
def test_a_bad_instruction_record_is_refused_with_its_line(lm, tmp_path, change, expect, position):
    records = [dict(r) for r in RECORDS * 3]
    records[position].update(change)
    path = write_jsonl(str(tmp_path / "inst.jsonl"), records)
    line = 1 if position == 0 else len(records)
    with pytest.raises(InputError) as err:
        _objective(lm, prompt_template=TEMPLATE).load_dataset(path, "--data_file")
    assert str(err.value).startswith(f"--data_file: '{path}' line {line}: ") and expect in str(err.value)


def test_clm_accuracy_leaves_out_special_targets_and_exact_match_scores_responses(lm):
    """Targets every model predicts alike (EOS here) do not count in the accuracy; a response is
    an exact match when all its targets, EOS included, are predicted."""
    objective = _objective(lm, prompt_template=TEMPLATE)
    dataset = objective.load_dataset(lm["instructions"], "--data_file")
    batch = objective.collate([dataset[0], dataset[1]])
    positions, targets = objective.token_rows(batch)
    logits = torch.zeros(*batch["input_ids"].shape, len(CAUSAL_VOCAB))
    flat = logits.view(-1, len(CAUSAL_VOCAB))
    flat[positions, targets] = 5.0  # every target right...
    eos = lm["tokenizer"].eos_token_id
    wrong = positions[(targets != eos).nonzero()[0]]  # ...but the first content target of response 0
    flat[wrong] = 0.0
    flat[wrong, eos] = 5.0
    metrics = objective.eval_metrics(objective.eval_batch(logits, None, batch))
    content = int((targets != eos).sum())
    assert metrics["accuracy"] == pytest.approx((content - 1) / content)  # EOS targets neither help nor count
    assert metrics["exact_match"] == 0.5


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd", "skew_kl", "tvd"])
def test_chunked_token_losses_equal_the_dense_path(lm, tmp_path, divergence):
    """--loss_chunk_rows 7 (not a divisor of the rows) against full logits: the same loss terms and
    gradients, with a tied LM head (as SmolLM2's) and the logits MSE in play."""
    tok = lm["tokenizer"]
    torch.manual_seed(0)
    teacher = save_model(LlamaForCausalLM(_llama(48, 2)), tok, str(tmp_path / "teacher"))
    student = save_model(LlamaForCausalLM(_llama(32, 1, tie_word_embeddings=True)), tok, str(tmp_path / "student"))
    common = dict(objective="clm", data_file=lm["train"], teacher_name=teacher, student_name=student, alpha_ce=1.0,
                  alpha_task=0.5, alpha_mse=0.1, batch_size=4, gradient_accumulation_steps=2, max_seq_length=32,
                  divergence=divergence, group_by_size=False)
    dense_values, dense_grads = first_step(config(**common, dump_path=str(tmp_path / "dense")))
    chunk_values, chunk_grads = first_step(config(**common, dump_path=str(tmp_path / "chunked"), loss_chunk_rows=7))
    for term in ("task", "ce", "mse"):
        assert chunk_values[term] == pytest.approx(dense_values[term], rel=1e-5), term
    assert dense_grads.keys() == chunk_grads.keys() and "student.lm_head.weight" not in dense_grads  # tied
    for name, grad in dense_grads.items():
        assert torch.allclose(chunk_grads[name], grad, rtol=1e-5, atol=1e-6), name


def test_chunked_losses_refuse_a_head_that_changes_logits_after_the_matmul(lm, tmp_path):
    """Gemma 2 soft-caps its logits after the LM head: chunking would silently drop that."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from distillation.distributed import DistEnv
    from distillation.errors import InputError
    from distillation.pipeline import build

    gemma = Gemma2Config(vocab_size=len(CAUSAL_VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                         final_logit_softcapping=0.5, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    student = save_model(Gemma2ForCausalLM(gemma), lm["tokenizer"], str(tmp_path / "gemma"))
    cfg = config(objective="clm", data_file=lm["train"], student_name=student, dump_path=str(tmp_path / "run"), loss_chunk_rows=8)
    with pytest.raises(InputError, match=r"--loss_chunk_rows: the student's logits are not its output embeddings.*--loss_chunk_rows 0"):
        build(cfg, DistEnv())
    assert not (tmp_path / "run").exists()


def test_padded_vocabularies_of_other_sizes_distil_over_the_tokenizers_ids(lm, tmp_path):
    """Qwen2.5-7B pads to 152,064 rows and Qwen2.5-1.5B to 151,936 over one 151,665-token tokenizer.
    Here: a teacher of 160 rows and a student of 144 over a 140-token tokenizer train, and their
    first step (loss terms and gradients) is that of the same models cut to 140 rows."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = CAUSAL_VOCAB + [f"w{i}" for i in range(140 - len(CAUSAL_VOCAB))]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    assert len(tok) == 140
    torch.manual_seed(0)
    folders = {}
    for role, rows, hidden, layers in (("teacher", 160, 48, 2), ("student", 144, 32, 1)):
        padded = LlamaForCausalLM(_llama(hidden, layers, vocab_size=rows))
        cut = LlamaForCausalLM(_llama(hidden, layers, vocab_size=140))
        cut.load_state_dict({k: v[:140] if k in ("model.embed_tokens.weight", "lm_head.weight") else v
                             for k, v in padded.state_dict().items()})
        folders[role] = save_model(padded, tok, str(tmp_path / f"{role}-padded"))
        folders[f"{role}-cut"] = save_model(cut, tok, str(tmp_path / f"{role}-cut"))
    common = dict(objective="clm", data_file=lm["train"], alpha_ce=1.0, alpha_task=0.5, batch_size=4, max_seq_length=32,
                  group_by_size=False)
    padded_values, padded_grads = first_step(config(**common, teacher_name=folders["teacher"], student_name=folders["student"],
                                                    dump_path=str(tmp_path / "padded")))
    cut_values, cut_grads = first_step(config(**common, teacher_name=folders["teacher-cut"], student_name=folders["student-cut"],
                                              dump_path=str(tmp_path / "cut")))
    for term in ("task", "ce"):
        assert padded_values[term] == pytest.approx(cut_values[term], rel=1e-6), term
    assert padded_grads.keys() == cut_grads.keys()
    for name, grad in cut_grads.items():
        assert torch.allclose(padded_grads[name][: len(grad)], grad, rtol=1e-5, atol=1e-7), name
        assert not padded_grads[name][len(grad):].any(), name  # the pad rows learn nothing


def test_bits_per_byte_is_a_hand_computation(tmp_path):
    """eval_bits_per_byte (student) and eval_teacher_bits_per_byte: the NLL in bits of every
    held-out target, summed over the sequences, over the UTF-8 bytes of the text they spell."""
    import math

    from distillation.config import DistillConfig
    from distillation.distributed import DistEnv
    from distillation.evaluation import evaluate
    from distillation.pipeline import build
    from lm_helpers import llama_pair

    pair = llama_pair(tmp_path, 8, student_layers=1)
    cfg = DistillConfig.from_dict({"objective": "clm", "teacher_name": pair["teacher"], "student_name": pair["student"],
                                   "data_file": pair["train"], "eval_file": pair["eval"], "dump_path": str(tmp_path / "run"),
                                   "max_seq_length": 16})
    d, _ = build(cfg, DistEnv())
    metrics = evaluate(d.model, d.teacher, d.objective, d.eval_dataset, 3, d.env, d.autocast, 0)
    tok = d.tokenizer
    for name, key in (("student", "eval_bits_per_byte"), ("teacher", "eval_teacher_bits_per_byte")):
        model = AutoModelForCausalLM.from_pretrained(pair[name]).eval()
        nats, n_bytes = 0.0, 0
        for i in range(len(d.eval_dataset)):
            ids = torch.tensor(d.eval_dataset[i]["input_ids"])
            with torch.no_grad():
                log_p = model(input_ids=ids[None]).logits[0, :-1, : len(tok)].double().log_softmax(-1)
            nats -= log_p.gather(-1, ids[1:, None]).sum().item()
            n_bytes += len(tok.decode(ids[1:].tolist(), skip_special_tokens=True).encode("utf-8"))
        assert metrics[key] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5), name
    assert len(d.eval_dataset) > 3  # several evaluation batches, each sequence's bytes counted once
