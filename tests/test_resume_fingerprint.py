"""--resume continues only the run the checkpoint belongs to: another teacher, loss, data layout or
tokenisation exits 2 naming the flag, and nothing in the run folder changes."""

import json
import os

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from conftest import save_model, train_args, train_in_process
from lm_helpers import CAUSAL_VOCAB, causal_tokenizer, sentences

pytestmark = pytest.mark.filterwarnings("ignore")


def _refused(capsys, args, expect, dump):
    before = {name: (dump / name).stat().st_mtime_ns for name in os.listdir(dump)}
    capsys.readouterr()
    assert train_in_process(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert {name: (dump / name).stat().st_mtime_ns for name in os.listdir(dump)} == before


def _with(args, flag, value):
    args = list(args)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    return args


def test_resume_refuses_another_teacher_or_loss(assets, tmp_path, capsys):
    dump = tmp_path / "run"
    args = train_args(assets, dump, "--max_steps", 4, "--checkpoint_interval", 2)
    assert train_in_process(args) == 0
    resume = args + ["--resume"]
    # the same architecture and config, other weights: the teacher a second fine-tuning would give
    other = AutoModelForSequenceClassification.from_pretrained(assets["teacher"])
    with torch.no_grad():
        other.classifier.weight.mul_(1.5)
    retrained = save_model(other, AutoTokenizer.from_pretrained(assets["teacher"]), str(tmp_path / "teacher2"))
    _refused(capsys, _with(resume, "--teacher_name", retrained), "another teacher (", dump)
    _refused(capsys, _with(resume, "--teacher_name", retrained), "resume with the same --teacher_name/--teacher_logits", dump)
    for flag, value, expect in (("--temperature", "3", "another temperature (2.0; this run: 3.0); resume with the same --temperature"),
                                ("--divergence", "jsd", "another divergence ('forward_kl'; this run: 'jsd')"),
                                ("--alpha_ce", "0.9", "another alpha_ce (0.5; this run: 0.9); resume with the same --alpha_ce"),
                                ("--alpha_task", "0.1", "another alpha_task (0.5; this run: 0.1)"),
                                ("--precision", "bf16", "another precision ('fp32'; this run: 'bf16')"),
                                ("--teacher_dtype", "bf16", "another teacher_dtype ('fp32'; this run: 'bf16')"),
                                ("--max_seq_length", "32", "another max_seq_length (64; this run: 32)")):
        _refused(capsys, _with(resume, flag, value), expect, dump)
    # a checkpoint of an older version records none of this: it cannot be checked, so it is refused
    folder = dump / "checkpoint"
    state = torch.load(folder / "trainer.pt", weights_only=True)
    del state["fingerprint"]["temperature"]
    torch.save(state, folder / "trainer.pt")
    sizes = json.load(open(folder / "complete.json"))
    sizes["files"]["trainer.pt"] = (folder / "trainer.pt").stat().st_size
    (folder / "complete.json").write_text(json.dumps(sizes))
    _refused(capsys, resume, "was written by an older version that did not record its temperature", dump)


def _llama_folder(tok, folder, hidden, layers):
    config = LlamaConfig(vocab_size=len(CAUSAL_VOCAB), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1,
                         eos_token_id=2, pad_token_id=3)
    return save_model(LlamaForCausalLM(config), tok, folder)


def test_resume_refuses_another_offsets_file_or_tokenisation(tmp_path, capsys):
    """A binarized .tokens.npy is read through the .offsets.npy beside it: merging a sequence with
    the too-short one after it (dropped either way) keeps the tokens file and the number of
    sequences, yet the examples differ. Instruction data read with another chat template gives
    other prompts from the same file."""
    tok = causal_tokenizer(str(tmp_path / "tok"))
    torch.manual_seed(0)
    teacher, student = _llama_folder(tok, str(tmp_path / "teacher"), 32, 2), _llama_folder(tok, str(tmp_path / "student"), 16, 1)
    seqs = [[1, *tok(line, add_special_tokens=False)["input_ids"], 2] for line in sentences(40, seed=1)]
    seqs.insert(1, [1, 4, 2])  # 3 tokens: the dataset drops it
    tokens = np.concatenate([np.array(s, dtype=np.uint16) for s in seqs])
    offsets = np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64)
    np.save(tmp_path / "data.tokens.npy", tokens)
    np.save(tmp_path / "data.offsets.npy", offsets)
    dump = tmp_path / "run"
    args = ["--objective", "clm", "--teacher_name", teacher, "--student_name", student, "--data_file", tmp_path / "data.tokens.npy",
            "--dump_path", dump, "--max_steps", 2, "--batch_size", 8, "--checkpoint_interval", 1, "--max_seq_length", 32]
    args = list(map(str, args))
    assert train_in_process(args) == 0
    np.save(tmp_path / "data.offsets.npy", np.delete(offsets, 1))  # the first sequence swallows the short one
    _refused(capsys, args + ["--resume"], "another data ('40 examples of data.tokens.npy sha256", dump)
    _refused(capsys, args + ["--resume"], "this run: '40 examples of data.tokens.npy sha256", dump)  # the same tokens and count

    records = [{"instruction": "say why", "input": "the movie", "output": "it is good"}] * 16
    data = tmp_path / "inst.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    tok.chat_template = "{% for m in messages %}Q: {{ m['content'] }} A:{% endfor %}"
    chat_a = _llama_folder(tok, str(tmp_path / "student_a"), 16, 1)
    tok.chat_template = "{% for m in messages %}say {{ m['content'] }} A:{% endfor %}"
    chat_b = _llama_folder(tok, str(tmp_path / "student_b"), 16, 1)
    dump = tmp_path / "chat"
    args = ["--objective", "clm", "--student_name", chat_a, "--data_file", data, "--dump_path", dump, "--max_steps", 2,
            "--batch_size", 8, "--max_seq_length", 32, "--checkpoint_interval", 1]
    args = list(map(str, args))
    assert train_in_process(args) == 0
    # chat_b's weights equal chat_a's shapes: only the prompts it renders differ
    _refused(capsys, _with(args, "--tokenizer_name", chat_b) + ["--resume"], "another token_ids (", dump)
