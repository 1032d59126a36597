"""LoRA students (--lora_r): only the adapters train and hold AdamW state; final/ is the merged
model, checked against the adapters applied by hand and by peft itself (its merge_and_unload, on
Llama's Linear and GPT-2's Conv1D and embedding layers); a kill and --resume reproduces the
unbroken run's adapters; ddp and fsdp on 2 processes agree."""

import json
import os
import sys

import peft
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, pipeline

from conftest import TORCHRUN, TRAIN, final_weights, kill_after_step, read_metrics, run_train, save_model, train_in_process
from lm_helpers import CAUSAL_VOCAB, causal_tokenizer, config, llama_pair, single_thread  # noqa: F401 - a fixture
from distillation.distributed import DistEnv
from distillation.lora import default_targets
from distillation.pipeline import build

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return llama_pair(tmp_path_factory.mktemp("lora"), n_train=80, student_layers=2)


def _gpt2(**kw):
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(CAUSAL_VOCAB), n_embd=16, n_head=2, n_positions=64, bos_token_id=1,
                                      eos_token_id=2, pad_token_id=3, **kw))


@pytest.fixture(scope="module")
def gpt2_pair(pair, tmp_path_factory):
    """The Llama pair's data and teacher, with a GPT-2 student (Conv1D layers, untied embeddings)."""
    torch.manual_seed(1)
    folder = str(tmp_path_factory.mktemp("gpt2") / "student")
    return {**pair, "student": save_model(_gpt2(n_layer=2, tie_word_embeddings=False), causal_tokenizer(folder), folder)}


def _args(pair, dump, *extra):
    return ["--objective", "clm", "--teacher_name", pair["teacher"], "--student_name", pair["student"], "--data_file", pair["train"],
            "--eval_file", pair["eval"], "--max_seq_length", "24", "--batch_size", "4", "--no-group_by_size", "--learning_rate", "3e-3",
            "--lora_r", "4", "--dump_path", str(dump), *map(str, extra)]


def test_only_the_adapters_train_and_final_is_the_merged_model(pair, tmp_path):
    values = dict(objective="clm", teacher_name=pair["teacher"], student_name=pair["student"], data_file=pair["train"],
                  max_seq_length=24, lora_r=4, dump_path=str(tmp_path / "unused"))
    distiller, _ = build(config(**values), DistEnv())
    trained = {n for n, p in distiller.model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert len(trained) == 2 * 7 * 2  # A and B of q, k, v, o, gate, up, down in 2 blocks
    in_optimizer = sum(p.numel() for group in distiller.optimizer.param_groups for p in group["params"])
    assert in_optimizer == sum(p.numel() for n, p in distiller.model.named_parameters() if n in trained)

    dump = tmp_path / "run"
    assert train_in_process(_args(pair, dump, "--n_epoch", 2)) == 0
    initial, final = load_file(os.path.join(pair["student"], "model.safetensors")), final_weights(dump)
    adapter = load_file(dump / "final" / "adapter" / "adapter_model.safetensors")
    scaling = json.loads((dump / "final" / "adapter" / "adapter_config.json").read_text())["lora_alpha"] / 4
    assert scaling == 2.0  # the default alpha is 2 x r
    adapted = set()
    for key, weight in initial.items():
        layer = "base_model.model." + key.removesuffix(".weight")
        if f"{layer}.lora_A.weight" in adapter:
            delta = scaling * adapter[f"{layer}.lora_B.weight"] @ adapter[f"{layer}.lora_A.weight"]
            assert delta.abs().max() > 0, key  # B started at 0: it trained
            assert torch.allclose(final[key], weight + delta, atol=1e-6), key
            adapted.add(key)
        else:
            assert torch.equal(final[key], weight), key  # frozen
    assert len(adapted) == 14

    # peft itself applies the saved adapters to the initial student: the same logits as final/
    ids = torch.tensor([[1, 4, 7, 11, 15, 5, 8]])
    base = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(pair["student"]), str(dump / "final" / "adapter"))
    merged = AutoModelForCausalLM.from_pretrained(dump / "final")
    with torch.no_grad():
        assert torch.allclose(base(ids).logits, merged(ids).logits, atol=1e-5)
    assert json.loads((dump / "final" / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == pair["student"]
    assert json.loads((dump / "summary.json").read_text())["student_parameters"] == sum(v.numel() for v in initial.values())
    generate = pipeline("text-generation", model=str(dump / "final"))
    assert generate("the movie", max_new_tokens=3, do_sample=False)[0]["generated_text"].startswith("the movie")


@pytest.mark.parametrize("family, targets", [("llama", None), ("gpt2", "c_attn,c_proj,c_fc,wte")])
def test_final_is_peft_merge_and_unload_of_the_adapted_student(pair, gpt2_pair, tmp_path, family, targets):
    paths = {"llama": pair, "gpt2": gpt2_pair}[family]
    dump = tmp_path / "run"
    extra = ["--lora_target_modules", targets] if targets else []
    assert train_in_process(_args(paths, dump, "--max_steps", 3, "--learning_rate", "3e-2", *extra)) == 0
    adapter = load_file(dump / "final" / "adapter" / "adapter_model.safetensors")
    trained_b = [v for k, v in adapter.items() if ".lora_B." in k or ".lora_embedding_B" in k]
    assert trained_b and all(v.abs().max() > 0 for v in trained_b)  # B starts at 0: every adapter trained
    if targets:  # Conv1D in and out of attention and MLP, and the (untied) token embeddings
        assert {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in adapter} == {"c_attn", "c_proj", "c_fc", "wte"}

    ids = torch.tensor([[1, 4, 7, 11, 15, 5, 8]])
    final = AutoModelForCausalLM.from_pretrained(dump / "final")
    adapted = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(paths["student"]), str(dump / "final" / "adapter"))
    with torch.no_grad():
        adapted_logits = adapted(ids).logits
        unloaded = adapted.merge_and_unload()
        assert torch.allclose(final(ids).logits, adapted_logits, atol=1e-6)
        assert torch.allclose(final(ids).logits, unloaded(ids).logits, atol=1e-6)
    mine, peft_own = final.state_dict(), unloaded.state_dict()
    assert mine.keys() == peft_own.keys()
    for key, value in peft_own.items():
        assert torch.allclose(mine[key], value, atol=1e-6), key


def test_gpt2_conv1d_layers_in_blocks_are_the_default_targets():
    names = default_targets(_gpt2(n_layer=2))
    assert names == [f"transformer.h.{i}.{layer}" for i in (0, 1) for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]


def test_a_layer_the_merge_cannot_fold_is_refused_before_training():
    from types import SimpleNamespace

    from distillation.errors import InputError
    from distillation.lora import add_lora

    student = torch.nn.Sequential(torch.nn.Conv1d(4, 4, 3))
    student.base_model_prefix = ""
    cfg = SimpleNamespace(lora_r=2, lora_alpha=4.0, lora_dropout=0.0, lora_target_modules="0")
    with pytest.raises(InputError, match="--lora_target_modules: 0 is a Conv1d; LoRA students adapt linear layers"):
        add_lora(student, cfg, train_head=False)


def test_kill_and_resume_reproduce_the_adapters(pair, tmp_path):
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    common = ["--max_steps", 8, "--checkpoint_interval", 2, "--log_interval", 1]
    assert run_train(_args(pair, unbroken, *common)).returncode == 0
    killed_at = kill_after_step([sys.executable, TRAIN, *_args(pair, broken, *common)], broken, 3)
    assert killed_at < 8
    proc = run_train(_args(pair, broken, *common, "--resume"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    a = load_file(unbroken / "final" / "adapter" / "adapter_model.safetensors")
    b = load_file(broken / "final" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    proc = run_train(_args(pair, broken, *common, "--resume", "--lora_r", 8))
    assert proc.returncode == 2 and "another lora_r (4; this run: 8); resume with the same --lora_r" in proc.stderr


def test_lora_under_ddp_and_fsdp_on_two_processes_agree(pair, tmp_path):
    runs, adapters = {}, {}
    for strategy in ("ddp", "fsdp"):
        dump = tmp_path / strategy
        proc = run_train(_args(pair, dump, "--max_steps", 5, "--log_interval", 1, "--strategy", strategy), launcher=TORCHRUN)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[strategy] = [r["loss"] for r in read_metrics(dump) if "loss" in r]
        adapters[strategy] = load_file(dump / "final" / "adapter" / "adapter_model.safetensors")
    assert len(runs["ddp"]) == 5 and runs["fsdp"] == pytest.approx(runs["ddp"], rel=1e-5)
    for key, value in adapters["ddp"].items():
        assert torch.allclose(adapters["fsdp"][key], value, atol=1e-6), key


@pytest.mark.parametrize("extra, expect", [
    (["--lora_r", "0", "--lora_alpha", "8"], "--lora_alpha needs --lora_r > 0"),
    (["--lora_target_modules", "nothing_here"], "--lora_target_modules nothing_here: no layer of the student has such a name; its "
                                                "linear layers are named down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj"),
    (["--lora_target_modules", "embed_tokens"], "--lora_target_modules: model.embed_tokens's weight is tied to another layer's"),
    (["--lora_dropout", "1.5"], "--lora_dropout in [0, 1)"),
])
def test_bad_lora_options_exit_2_naming_the_flag(pair, tmp_path, capsys, extra, expect):
    dump = tmp_path / "run"
    capsys.readouterr()
    assert train_in_process(_args(pair, dump, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0], err
    assert not dump.exists()


def test_a_lora_classifier_trains_its_head_and_the_adapters_of_its_blocks(assets, tmp_path):
    from conftest import build_distiller

    distiller, _, _ = build_distiller(assets, tmp_path / "unused", lora_r=2)
    trained = {n.removeprefix("student.") for n, p in distiller.model.named_parameters() if p.requires_grad}
    head = {n for n in trained if not n.startswith("bert.")}
    assert head and all(n.startswith("classifier.") for n in head)  # the task head, beside the adapters
    adapted = {n.split(".lora_")[0] for n in trained - head}
    assert adapted and all(n.startswith("bert.encoder.layer.") for n in adapted)  # blocks only: no pooler, no embeddings
    assert {n.rsplit(".", 1)[-1] for n in adapted} == {"query", "key", "value", "dense"}
