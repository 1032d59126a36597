"""Student initialisation: layer extraction for every supported family, BERT → DistilBERT,
and the two extraction scripts. Tiny models built from configs; no downloads."""

import copy
import importlib
import os
import subprocess
import sys

import pytest
import torch
import transformers
from torch import nn

from distillation.errors import InputError
from distillation.students import (
    bert_to_distilbert,
    default_layers,
    extract_student,
    find_layer_list,
    parse_layers,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 100
BERT_KW = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=6, num_attention_heads=4,
               intermediate_size=48, max_position_embeddings=64)


def _tiny(family):
    torch.manual_seed(0)
    T = transformers
    if family == "bert_cls":
        return T.BertForSequenceClassification(T.BertConfig(**BERT_KW, num_labels=3))
    if family == "bert_mlm":
        return T.BertForMaskedLM(T.BertConfig(**BERT_KW))
    if family == "roberta":
        return T.RobertaForMaskedLM(T.RobertaConfig(**BERT_KW, pad_token_id=1))
    if family == "distilbert":
        return T.DistilBertForSequenceClassification(T.DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=5, n_heads=4, hidden_dim=48, max_position_embeddings=64))
    if family == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=5, n_head=4, n_positions=64,
                                              bos_token_id=0, eos_token_id=0))
    if family == "llama":
        return T.LlamaForCausalLM(T.LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4,
                                                num_attention_heads=4, num_key_value_heads=2, intermediate_size=48,
                                                max_position_embeddings=64))
    raise ValueError(family)


def _truncated_by_hand(teacher, path, layers):
    """Independent reference: the teacher with its block list cut by attribute path."""
    model = copy.deepcopy(teacher)
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path)
    setattr(parent, attr, nn.ModuleList([getattr(parent, attr)[i] for i in layers]))
    model.config.num_hidden_layers = len(layers)
    return model.eval()


def _inputs(causal=False):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask} | ({"use_cache": False} if causal else {})


PATHS = {"bert_cls": "bert.encoder.layer", "bert_mlm": "bert.encoder.layer", "roberta": "roberta.encoder.layer",
         "distilbert": "distilbert.transformer.layer", "gpt2": "transformer.h", "llama": "model.layers"}


@pytest.mark.parametrize("family", list(PATHS))
def test_extract_matches_hand_truncated_teacher(family):
    teacher = _tiny(family).eval()
    layers = [0, 2, 3]
    student = extract_student(teacher, layers).eval()
    assert type(student) is type(teacher)
    assert student.config.num_hidden_layers == 3 and len(find_layer_list(student)[2]) == 3
    assert teacher.config.num_hidden_layers != 3 and len(find_layer_list(teacher)[2]) > 3  # teacher untouched
    causal = family in ("gpt2", "llama")
    with torch.no_grad():
        expected = _truncated_by_hand(teacher, PATHS[family], layers)(**_inputs(causal)).logits
        got = student(**_inputs(causal)).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # Weights are copies, not shared with the teacher; tied weights stay tied.
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(student.parameters(), teacher.parameters()))
    out_emb = student.get_output_embeddings()
    if out_emb is not None and student.config.tie_word_embeddings:
        assert out_emb.weight is student.get_input_embeddings().weight


def test_per_layer_config_and_gpt2_inverse_layer_scale_survive_save(tmp_path):
    llama = _tiny("llama")
    llama.config.layer_types = ["full_attention", "sliding_attention"] * 2
    assert extract_student(llama, [1, 2]).config.layer_types == ["sliding_attention", "full_attention"]

    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, scale_attn_by_inverse_layer_idx=True))
    student = extract_student(gpt2, [1, 3]).eval()
    student.save_pretrained(tmp_path)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(student(**_inputs()).logits, reloaded(**_inputs()).logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_causal_student_generates_with_renumbered_kv_cache(family):
    student = extract_student(_tiny(family).eval(), [1, 3]).eval()
    idx = [m.layer_idx for m in student.modules() if getattr(m, "layer_idx", None) is not None]
    assert idx == [0, 1]
    ids = _inputs()["input_ids"][:1]
    with torch.no_grad():
        cached = student.generate(ids, max_new_tokens=4, do_sample=False, use_cache=True, pad_token_id=0)
        uncached = student.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, uncached)


def test_default_layers():
    assert default_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # the reference's DistilBERT choice
    assert default_layers(6, 3) == [0, 3, 5]
    assert default_layers(5, 5) == [0, 1, 2, 3, 4]
    assert default_layers(4, 1) == [0]
    for n_t in range(2, 30):
        for n_s in range(2, n_t + 1):
            chosen = default_layers(n_t, n_s)
            assert chosen[0] == 0 and chosen[-1] == n_t - 1 and len(set(chosen)) == n_s == len(chosen)
            assert chosen == sorted(chosen)
    with pytest.raises(InputError, match="--layers"):
        default_layers(3, 4)


def test_parse_layers_and_bad_layers():
    assert parse_layers("0,2,4") == [0, 2, 4]
    assert parse_layers(" 1, 3") == [1, 3]
    for text in ("", "0,,2", "a,b", "1.5"):
        with pytest.raises(InputError, match="--layers"):
            parse_layers(text)
    teacher = _tiny("gpt2")
    for layers in ([0, 5], [-1, 2], [2, 2], [3, 1], []):
        with pytest.raises(InputError, match="--layers"):
            extract_student(teacher, layers)


def test_unsupported_architecture():
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=VOCAB, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2))
    with pytest.raises(InputError, match=r"--teacher.*'t5'"):
        extract_student(t5, [0])


def _bert_mlm_without_token_types():
    bert = _tiny("bert_mlm").eval()
    with torch.no_grad():
        # DistilBERT has no token type embeddings; BERT adds row 0 to every token. Zeroing it
        # makes the two models compute the same function.
        bert.bert.embeddings.token_type_embeddings.weight[0].zero_()
    return bert


def test_bert_to_distilbert_all_layers_is_exact():
    bert = _bert_mlm_without_token_types()
    student = bert_to_distilbert(bert, layers=range(6)).eval()
    assert isinstance(student, transformers.DistilBertForMaskedLM) and student.config.n_layers == 6
    with torch.no_grad():
        torch.testing.assert_close(student(**_inputs()).logits, bert(**_inputs()).logits, atol=1e-4, rtol=0)


def test_bert_to_distilbert_layer_choice_and_head():
    bert = _bert_mlm_without_token_types()
    student = bert_to_distilbert(bert, layers=[0, 2, 5], vocab_transform=False)
    assert student.config.n_layers == 3
    teacher_q = bert.bert.encoder.layer[5].attention.self.query.weight
    assert torch.equal(student.distilbert.transformer.layer[2].attention.q_lin.weight, teacher_q)
    assert torch.equal(student.vocab_projector.bias, bert.cls.predictions.bias)
    assert not torch.equal(student.vocab_transform.weight, bert.cls.predictions.transform.dense.weight)
    assert bert_to_distilbert(bert).config.n_layers == 3  # default: half, first and last kept
    with pytest.raises(InputError, match="--teacher"):
        bert_to_distilbert(_tiny("gpt2"))


def _save_teacher_with_tokenizer(model, folder):
    model.save_pretrained(folder)
    vocab = os.path.join(folder, "vocab.txt")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
    with open(vocab, "w") as f:
        f.write("\n".join(words) + "\n")
    transformers.BertTokenizerFast(vocab=vocab).save_pretrained(folder)


def _script(name, *args):
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *args],
                          capture_output=True, text=True, cwd=REPO)


def _in_process(capsys, name, *args):
    """A script's exit code and stderr without a new interpreter (each costs seconds)."""
    main = importlib.import_module(f"distillation.cli.{name.removesuffix('.py')}").main
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


def test_extract_script_roundtrip(tmp_path):
    # In a fresh interpreter, as users run it; the error cases below run in-process for speed.
    teacher = _tiny("bert_cls").eval()
    _save_teacher_with_tokenizer(teacher, tmp_path / "teacher")
    out = tmp_path / "student"
    proc = _script("extract.py", "--teacher", str(tmp_path / "teacher"), "--layers", "0,2,4", "--dump_path", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "model.safetensors").exists()
    student = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["w1 w2 w3", "w4 w5"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = _truncated_by_hand(teacher, PATHS["bert_cls"], [0, 2, 4])(**batch).logits
        torch.testing.assert_close(student(**batch).logits, expected, atol=1e-5, rtol=0)

@pytest.mark.parametrize("args, message", [
    (["--layers", "0,9"], "--layers: layer 9 is out of range; the teacher has layers 0-4"),
    (["--layers", "x"], "--layers"),
    (["--layers", "2,1"], "--layers"),
    (["--layers"], "--layers"),
    (["--bogus", "1"], "--bogus"),
    (["--teacher", "/nonexistent/teacher"], "--teacher"),
])
def test_extract_script_bad_input(tmp_path, capsys, args, message):
    _tiny("gpt2").save_pretrained(tmp_path / "teacher")
    argv = ["--teacher", str(tmp_path / "teacher"), "--dump_path", str(tmp_path / "out")]
    code, err = _in_process(capsys, "extract.py", *argv, *args)
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_extract_script_dump_path_and_unsupported_model(tmp_path, capsys):
    _tiny("gpt2").save_pretrained(tmp_path / "gpt2")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, err = _in_process(capsys, "extract.py", "--teacher", str(tmp_path / "gpt2"), "--dump_path", str(out))
    assert code == 2 and "--force" in err
    code, _ = _in_process(capsys, "extract.py", "--teacher", str(tmp_path / "gpt2"), "--dump_path", str(out), "--force")
    assert code == 0 and transformers.AutoConfig.from_pretrained(out).n_layer == 2  # 5 // 2 layers: 0 and 4

    transformers.BartForConditionalGeneration(transformers.BartConfig(
        vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32)).save_pretrained(tmp_path / "bart")
    code, err = _in_process(capsys, "extract.py", "--teacher", str(tmp_path / "bart"),
                            "--dump_path", str(tmp_path / "b"))
    assert code == 2 and "--teacher" in err and "'bart'" in err and err.count("\n") == 1
    assert not (tmp_path / "b").exists()


def test_extract_distilbert_script(tmp_path, capsys):
    bert = _bert_mlm_without_token_types()
    _save_teacher_with_tokenizer(bert, tmp_path / "bert")
    out = tmp_path / "distil"
    proc = _script("extract_distilbert.py", "--teacher", str(tmp_path / "bert"), "--layers", "0,1,2,3,4,5",
                   "--dump_path", str(out))
    assert proc.returncode == 0, proc.stderr
    student = transformers.DistilBertForMaskedLM.from_pretrained(out).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    batch = tokenizer(["w1 w2 [MASK] w3", "w4"], padding=True, return_tensors="pt")
    assert "token_type_ids" not in batch  # DistilBERT's forward takes none
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, bert(**batch).logits, atol=1e-4, rtol=0)

    code, err = _in_process(capsys, "extract_distilbert.py", "--teacher", str(tmp_path / "bert"), "--layers", "0,7",
                            "--dump_path", str(tmp_path / "bad"))
    assert code == 2 and err.startswith("error: --layers")
    _tiny("gpt2").save_pretrained(tmp_path / "gpt2")
    code, err = _in_process(capsys, "extract_distilbert.py", "--teacher", str(tmp_path / "gpt2"),
                            "--dump_path", str(tmp_path / "bad"))
    assert code == 2 and "'gpt2'" in err
    assert not (tmp_path / "bad").exists()
