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
from transformers import BertConfig, BertForMaskedLM, LlamaConfig, LlamaForCausalLM

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
