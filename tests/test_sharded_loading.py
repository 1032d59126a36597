"""Sharded loading under --strategy fsdp (distillation/sharded_loading.py): no process brings a
whole weight matrix of the teacher or the student into memory while loading, and the run starts
where a whole load starts: the same first-step losses, for a Llama pair (the student's head tied
to its embeddings, a hidden-state loss through a projection) and a BERT MLM pair (both heads
tied). The model sizes are chosen so that no matrix's half equals another matrix's full shape:
the recorder matches shapes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

from conftest import ROOT, SUBPROCESS_ENV, VOCAB, save_model
from lm_helpers import CAUSAL_VOCAB, bert_tokenizer, causal_tokenizer, sentences, write_binarized, write_counts
from distillation.models import model_identity

WORKER = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", os.path.join(ROOT, "tests", "sharded_loading_worker.py")]


def _llama(root):
    tok = causal_tokenizer(str(root / "tok"))
    (root / "train.txt").write_text("\n".join(sentences(24, seed=1)) + "\n")
    torch.manual_seed(0)
    folders = {}
    for role, hidden, inner, layers, tied in (("teacher", 48, 80, 2, False), ("student", 32, 56, 1, True)):
        cfg = LlamaConfig(vocab_size=len(CAUSAL_VOCAB) + 5, hidden_size=hidden, intermediate_size=inner, num_hidden_layers=layers,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                          pad_token_id=3, tie_word_embeddings=tied)
        folders[role] = save_model(LlamaForCausalLM(cfg), tok, str(root / role))
    return {"objective": "clm", "teacher_name": folders["teacher"], "student_name": folders["student"],
            "data_file": str(root / "train.txt"), "alpha_ce": 1.0, "alpha_task": 0.5, "alpha_hidden_mse": 1.0}


def _bert(root):
    tok = bert_tokenizer(str(root / "tok"))
    train = write_binarized(root / "train.pickle", tok, sentences(24, seed=1))
    torch.manual_seed(0)
    folders = {}
    for role, hidden, inner, layers in (("teacher", 48, 80, 2), ("student", 32, 56, 1)):
        cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=inner, num_hidden_layers=layers,
                         num_attention_heads=2, max_position_embeddings=36)
        folders[role] = save_model(BertForMaskedLM(cfg), tok, str(root / role))
    return {"objective": "mlm", "teacher_name": folders["teacher"], "student_name": folders["student"], "data_file": train,
            "token_counts": write_counts(root / "counts.pickle", train, len(VOCAB)), "alpha_ce": 1.0, "alpha_task": 0.5}


def test_sharded_loading_materialises_no_whole_matrix_and_starts_where_a_whole_load_starts(tmp_path):
    configs = {}
    for family, make in (("llama", _llama), ("bert", _bert)):
        (tmp_path / family).mkdir()
        base = {**make(tmp_path / family), "strategy": "fsdp", "batch_size": 4, "max_seq_length": 24, "group_by_size": False, "gradient_accumulation_steps": 1,
                "dump_path": str(tmp_path / "unused")}
        configs[f"{family} sharded"] = base
        configs[f"{family} whole"] = {**base, "sharded_loading": False}
    (tmp_path / "configs.json").write_text(json.dumps(configs))
    proc = subprocess.run([*WORKER, str(tmp_path / "configs.json"), str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=600, env={**SUBPROCESS_ENV, "CUDA_VISIBLE_DEVICES": ""}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    identities = {family: model_identity(cls.from_pretrained(configs[f"{family} whole"]["teacher_name"]))
                  for family, cls in (("llama", LlamaForCausalLM), ("bert", BertForMaskedLM))}
    for rank in (0, 1):
        results = json.loads((tmp_path / f"out.{rank}").read_text())
        for family in ("llama", "bert"):
            sharded, whole = results[f"{family} sharded"], results[f"{family} whole"]
            # The recorder sees loading: a whole load brings every matrix into memory whole.
            assert whole["materialised"] and len(whole["materialised"]) == whole["matrices"], whole
            assert sharded["materialised"] == [], (family, rank)
            assert sharded["sharded"] == sharded["matrices"] > 10
            assert set(sharded["loaded"].values()) == {"read shard by shard from its safetensors files"}
            assert sharded["tied"] and whole["tied"]  # the student's head is its embedding matrix
            assert sharded["teacher_root_gathered"] and whole["teacher_root_gathered"]
            # What a resume compares, equal to the identity of the teacher loaded whole in one process.
            assert sharded["teacher_identity"] == whole["teacher_identity"] == identities[family]
            assert set(sharded["terms"]) == set(whole["terms"]) and len(sharded["terms"]) >= 2
            for term, value in whole["terms"].items():
                assert sharded["terms"][term] == pytest.approx(value, rel=1e-6, abs=1e-7), (family, term)


def _checkpoint_and_decoy(folder, shard_size):
    """A tiny Llama saved as from_pretrained reads it (`shard_size` None: one model.safetensors), beside a
    consolidated.safetensors (Mistral ships one) holding the same tensor names with other values."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder, **({"max_shard_size": shard_size} if shard_size else {}))
    save_file({k: v + 1 for k, v in model.state_dict().items()}, os.path.join(folder, "consolidated.safetensors"))
    return cfg, model.state_dict()


@pytest.mark.parametrize("shard_size", ["20KB", None])
def test_only_the_checkpoint_from_pretrained_reads_is_read_never_a_decoy_beside_it(tmp_path, shard_size):
    from distillation.sharded_loading import build_on_meta, fill

    cfg, saved = _checkpoint_and_decoy(str(tmp_path), shard_size)
    index = tmp_path / "model.safetensors.index.json"
    if shard_size:
        assert len(set(json.loads(index.read_text())["weight_map"].values())) > 2
    else:
        assert not index.exists()
    model = build_on_meta(AutoModelForCausalLM, str(tmp_path), cfg, torch.float32)
    fill(model, {}, torch.device("cpu"))  # one process, no process group: dcp reads without collectives
    loaded = model.state_dict()
    assert loaded.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key


def test_a_hub_snapshot_fetches_the_indexed_shards_and_no_decoy(tmp_path, monkeypatch):
    import fnmatch
    import shutil

    import huggingface_hub

    from distillation.sharded_loading import safetensors_folder

    source, cache = tmp_path / "hub", tmp_path / "cache"
    source.mkdir()
    _checkpoint_and_decoy(str(source), "20KB")

    def snapshot_download(name, allow_patterns):
        assert name == "org/model"
        cache.mkdir(exist_ok=True)
        for path in source.iterdir():
            if any(fnmatch.fnmatch(path.name, p) for p in allow_patterns):
                shutil.copy(path, cache / path.name)
        return str(cache)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert safetensors_folder("org/model") == str(cache)
    assert {p.name for p in cache.iterdir()} == {p.name for p in source.iterdir()} - {"consolidated.safetensors"}


def test_several_safetensors_and_no_index_load_whole_as_from_pretrained_would_refuse(tmp_path):
    from distillation.sharded_loading import build_on_meta

    cfg, _ = _checkpoint_and_decoy(str(tmp_path), None)
    os.rename(tmp_path / "model.safetensors", tmp_path / "weights.safetensors")
    assert build_on_meta(AutoModelForCausalLM, str(tmp_path), cfg, torch.float32) is None
