"""--teacher_logits: a cache made once by scripts/cache_teacher.py, read back per example in
training without the teacher; against the teacher run on each example alone and online KD."""

import json
import math
import os

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import save_model
from distillation.losses import forward_kl, sampled_kl, topk_buckets
from distillation.objectives.lm import gather_rows
from distillation.offline_logits import read_manifest, sparse_targets
from distillation.teachers import CachedTeacher
from lm_helpers import (  # noqa: F401 - single_thread is a fixture
    CAUSAL_VOCAB, call_script, causal_tokenizer, config, first_step, objective_for, sentences, single_thread,
)

pytestmark = pytest.mark.usefixtures("single_thread")
T = 2.0


def _llama(hidden, layers):
    return LlamaConfig(vocab_size=len(CAUSAL_VOCAB), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1,
                       eos_token_id=2, pad_token_id=3)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    tok = causal_tokenizer(str(root / "tok"))
    torch.manual_seed(0)  # random models: their logits depend on the input, so misplaced rows show
    (root / "train.txt").write_text("\n".join(sentences(60, seed=1)) + "\n")
    (root / "other.txt").write_text("\n".join(sentences(60, seed=3)) + "\n")
    return {"root": root, "tokenizer": tok, "train": str(root / "train.txt"), "other": str(root / "other.txt"),
            "teacher": save_model(LlamaForCausalLM(_llama(48, 2)), tok, str(root / "teacher")),
            "student": save_model(LlamaForCausalLM(_llama(32, 1)), tok, str(root / "student"))}


def _cache(capsys, lm, dump, *extra):
    code, err = call_script(capsys, "cache_teacher", "--teacher_name", lm["teacher"], "--data_file", lm["train"],
                            "--max_seq_length", 24, "--dump_path", dump, "--temperature", T, "--shard_size", 5,
                            "--batch_size", 3, *extra)
    assert code == 0, err
    return dump


def _read_back(lm, dump, indices):
    """(index, the cache's targets for that example alone, the teacher's log-probs at T on it)."""
    cfg = config(objective="clm", data_file=lm["train"], student_name=lm["student"], max_seq_length=24)
    objective = objective_for(cfg)
    dataset = objective.load_dataset(lm["train"], "--data_file")
    manifest = read_manifest(str(dump))
    assert manifest["n_examples"] == len(dataset)
    reader = CachedTeacher(str(dump), manifest, objective, torch.device("cpu"))
    teacher = LlamaForCausalLM.from_pretrained(lm["teacher"]).eval()
    for index in indices(len(dataset)):
        batch = objective.collate([dataset[index]])
        positions, _ = objective.token_rows(batch)
        with torch.no_grad():
            logp = torch.log_softmax(gather_rows(teacher(input_ids=batch["input_ids"]).logits, positions) / T, -1)
        yield index, reader.outputs(batch)[0], logp


def test_each_example_gets_its_own_teacher_topk(lm, tmp_path, capsys):
    """Shards of 5, batches of 3 (padding, shards cut across batches): read back per example, the
    cache equals the teacher run on that example alone."""
    dump = _cache(capsys, lm, tmp_path / "cache", "--method", "topk", "--k", 6)
    manifest = read_manifest(str(dump))
    n = manifest["n_examples"]
    assert n > 10 and manifest["shards"] == -(-n // 5) and manifest["bytes_per_row"] == 6 * (2 + 2) + 2
    for index, got, logp in _read_back(lm, dump, lambda n: (0, 4, 5, 7, n - 1)):
        values, ids = logp.topk(6, dim=-1)
        assert torch.equal(got.ids, ids), index
        assert torch.allclose(got.values, values, atol=2e-2, rtol=1e-3), index
        assert torch.allclose(got.tail.exp(), 1 - values.exp().sum(-1), atol=2e-3), index


def test_each_example_gets_its_own_teacher_head_and_entropy(lm, tmp_path, capsys):
    """The sampled cache read back per example: the head is the teacher's top ids on that example
    alone, the entropy its entropy, the draws come from outside the head."""
    dump = _cache(capsys, lm, tmp_path / "cache", "--head", 3, "--k", 5)
    manifest = read_manifest(str(dump))
    assert (manifest["method"], manifest["head"], manifest["k"], manifest["bytes_per_row"]) == ("sampled", 3, 5, 3 * 4 + 5 * 2 + 2)
    for index, got, logp in _read_back(lm, dump, lambda n: (0, 4, 5, n - 1)):
        values, ids = logp.topk(3, dim=-1)
        assert torch.equal(got.ids[:, :3], ids), index
        assert torch.allclose(got.values, values, atol=2e-2, rtol=1e-3), index
        assert torch.allclose(got.entropy, -(logp.exp() * logp).sum(-1), atol=1e-2), index
        assert not (got.ids[:, 3:, None] == ids[:, None, :]).any(), index


def test_a_whole_vocabulary_topk_cache_trains_as_online_kd(lm, tmp_path, capsys):
    """k = vocabulary: the cached distribution is the teacher's (to fp16), so the first step's loss
    terms and gradients are online KD's, with no teacher loaded."""
    dump = _cache(capsys, lm, tmp_path / "cache", "--method", "topk", "--k", len(CAUSAL_VOCAB))
    common = dict(objective="clm", data_file=lm["train"], student_name=lm["student"], max_seq_length=24, alpha_ce=1.0,
                  alpha_task=0.5, batch_size=4, gradient_accumulation_steps=2, temperature=T)
    online, online_grads = first_step(config(**common, teacher_name=lm["teacher"], dump_path=str(tmp_path / "online")))
    offline, offline_grads = first_step(config(**common, teacher_logits=str(dump), dump_path=str(tmp_path / "offline")))
    assert offline["task"] == pytest.approx(online["task"], rel=1e-6)
    assert offline["ce"] == pytest.approx(online["ce"], rel=2e-3)
    for name, grad in online_grads.items():
        assert torch.allclose(offline_grads[name], grad, rtol=2e-2, atol=2e-4), name


def test_topk_buckets_and_sampled_kl_against_hand_formulas():
    torch.manual_seed(0)
    s, t = torch.randn(5, 9), torch.randn(5, 9) * 2
    ids = torch.tensor([[0, 3], [8, 1], [2, 2 + 1], [5, 6], [4, 0]])
    q = torch.softmax(s / T, -1)
    buckets = topk_buckets(s, ids, T).exp()
    for r in range(5):
        kept = [q[r, i].item() for i in ids[r]]
        assert buckets[r].tolist() == pytest.approx(kept + [1 - sum(kept)], rel=1e-5)
    # Sampled: head exact + draws from the rest, less the entropy; many draws approach the KL.
    logp_t, log_q = torch.log_softmax(t / T, -1), torch.log_softmax(s / T, -1)
    for head in (0, 3):
        targets = sparse_targets(t, "sampled", 20000, T, torch.Generator().manual_seed(1), head)
        p = logp_t.exp()
        by_hand = 0.0
        for r in range(5):
            top = p[r].argsort(descending=True)[:head]
            assert targets.ids[r, :head].tolist() == top.tolist()
            draws = targets.ids[r, head:]
            assert not set(draws.tolist()) & set(top.tolist())  # drawn from the rest only
            rest = 1 - p[r, top].sum()
            by_hand += (-(p[r, top] * log_q[r, top]).sum() - rest * log_q[r, draws].mean() + (p[r] * logp_t[r]).sum()).item()
        estimate = sampled_kl(s, targets.ids, targets.values, targets.entropy, T).item()
        assert estimate == pytest.approx(by_hand * T * T, rel=1e-4)
        assert estimate == pytest.approx(forward_kl(s, t, T).item(), rel=0.03)
    # The head holding all the mass: the draws weigh nothing, the estimate is the exact KL.
    four = torch.tensor([[0.0, 1.0, -1.0, 2.0] + [-1e9] * 5])
    targets = sparse_targets(four, "sampled", 3, 1.0, torch.Generator().manual_seed(1), 4)
    assert sampled_kl(s[:1], targets.ids, targets.values, targets.entropy, 1.0).item() == pytest.approx(
        forward_kl(s[:1], four, 1.0).item(), rel=1e-5)


def test_a_sampled_cache_trains_and_its_loss_falls(lm, tmp_path, capsys):
    dump = _cache(capsys, lm, tmp_path / "cache")  # the default at T = 2: sampled, head 0 + 31 draws
    manifest = read_manifest(str(dump))
    assert (manifest["head"], manifest["k"], manifest["bytes_per_row"]) == (0, 31, 31 * 2 + 2)
    at_one = _cache(capsys, lm, tmp_path / "cache-t1", "--temperature", 1)  # at T = 1: head 4 + 23, the same 64 bytes
    assert [read_manifest(str(at_one))[key] for key in ("head", "k", "bytes_per_row")] == [4, 23, 4 * (2 + 2) + 23 * 2 + 2]
    run = tmp_path / "run"
    code, err = call_script(capsys, "train", "--objective", "clm", "--teacher_logits", dump, "--student_name", lm["student"],
                            "--data_file", lm["train"], "--max_seq_length", 24, "--temperature", T, "--dump_path", run,
                            "--alpha_ce", 1, "--alpha_task", 0, "--learning_rate", 3e-3, "--max_steps", 30, "--log_interval", 5,
                            "--batch_size", 4)
    assert code == 0, err
    losses = [r["loss_ce"] for r in map(json.loads, open(run / "metrics.jsonl")) if "loss_ce" in r]
    assert len(losses) >= 5 and np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    code, err = call_script(capsys, "train", "--objective", "clm", "--teacher_logits", dump, "--student_name", lm["student"],
                            "--data_file", lm["train"], "--max_seq_length", 24, "--temperature", T, "--dump_path", tmp_path / "bf16",
                            "--precision", "bf16", "--max_steps", 2)  # the cache's fp16 arrays are read outside autocast
    assert code == 0, err
    code, err = call_script(capsys, "train", "--objective", "clm", "--teacher_logits", dump, "--student_name", lm["student"],
                            "--data_file", lm["train"], "--max_seq_length", 24, "--temperature", T, "--dump_path", tmp_path / "jsd",
                            "--divergence", "jsd")
    assert code == 2 and err == ["error: --divergence jsd: a sampled cache estimates forward KL only (drop --divergence, or "
                                 "cache with --method topk)"]


@pytest.mark.parametrize("change,expect", [
    (["--data_file", "other"], "another data_sha256"),
    (["--temperature", "1.0"], "another temperature (2.0; this run: 1.0)"),
    (["--max_seq_length", "16"], "another max_seq_length (24; this run: 16)"),
    (["--student_name", "retokenized"], "another tokenizer_sha256"),
])
def test_a_cache_of_other_data_tokenizer_or_settings_is_refused(lm, tmp_path, capsys, change, expect):
    dump = _cache(capsys, lm, tmp_path / "cache", "--method", "topk", "--k", 4)
    values = {"--student_name": lm["student"], "--data_file": lm["train"], "--max_seq_length": "24", "--temperature": str(T)}
    if change[1] == "other":
        change = [change[0], lm["other"]]
    if change[1] == "retokenized":
        # The same words and size, two of them swapped: other ids for the same text.
        tok = AutoTokenizer.from_pretrained(lm["student"])
        vocab = json.loads(tok.backend_tokenizer.to_str())
        table = vocab["model"]["vocab"]
        a, b = CAUSAL_VOCAB[5], CAUSAL_VOCAB[6]
        table[a], table[b] = table[b], table[a]
        tok.backend_tokenizer.from_str(json.dumps(vocab)).save(str(tmp_path / "tokenizer.json"))
        tok = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"), bos_token="<s>", eos_token="</s>",
                                      unk_token="<unk>", pad_token="<pad>")
        folder = save_model(LlamaForCausalLM(_llama(32, 1)), tok, str(tmp_path / "retokenized"))
        change = [change[0], folder]
    values[change[0]] = change[1]
    argv = ["--objective", "clm", "--teacher_logits", dump, "--dump_path", tmp_path / "run"] + [x for kv in values.items() for x in kv]
    code, err = call_script(capsys, "train", *argv)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --teacher_logits: the cache was made with " + expect), err
    assert not (tmp_path / "run").exists()


def test_an_interrupted_cache_pass_resumes_and_a_truncated_shard_is_refused(lm, tmp_path, capsys):
    dump = _cache(capsys, lm, tmp_path / "cache", "--method", "sampled", "--k", 5)
    before = {name: np.load(dump / name) for name in sorted(os.listdir(dump)) if name.endswith(".npy")}
    for name in ("shard-00001.rows.npy", "shard-00001.ids.npy", "shard-00002.rows.npy"):
        os.remove(dump / name)
    written = (dump / "manifest.json").stat().st_mtime_ns
    _cache(capsys, lm, dump, "--method", "sampled", "--k", 5)
    # the header is written once: a resumed pass (under torchrun, ranks read it meanwhile) leaves it be
    assert (dump / "manifest.json").stat().st_mtime_ns == written and not list(dump.glob("*.tmp"))
    for name, array in before.items():
        assert np.array_equal(np.load(dump / name), array), name  # the same draws: seeded per shard
    code, err = call_script(capsys, "cache_teacher", "--teacher_name", lm["teacher"], "--data_file", lm["train"],
                            "--max_seq_length", 24, "--dump_path", dump, "--temperature", T, "--shard_size", 5, "--method", "topk")
    assert code == 2 and err == ["error: --dump_path: '" + str(dump) + "' holds a cache made with another method ('sampled'; "
                                 "now 'topk'); add --force to replace it"]
    values = np.load(dump / "shard-00000.values.npy")
    np.save(dump / "shard-00000.values.npy", values[:-1])
    code, err = call_script(capsys, "train", "--objective", "clm", "--teacher_logits", dump, "--student_name", lm["student"],
                            "--data_file", lm["train"], "--max_seq_length", 24, "--temperature", T, "--dump_path", tmp_path / "run")
    assert code == 2 and err == [f"error: --teacher_logits: shard 0 of '{dump}' is truncated"]
    assert not (tmp_path / "run").exists()


def test_topk_loss_is_the_kl_over_k_tokens_and_the_rest(lm):
    """SparseTokenLosses on a k=4 support, by hand: buckets = the 4 ids and the tail mass."""
    from distillation.token_losses import SparseTokenLosses

    cfg = config(objective="clm", data_file=lm["train"], student_name=lm["student"], max_seq_length=24, teacher_logits="unused",
                 alpha_ce=1.0, temperature=T)
    objective = objective_for(cfg)
    dataset = objective.load_dataset(lm["train"], "--data_file")
    batch = objective.collate([dataset[0], dataset[1]])
    positions, _ = objective.token_rows(batch)
    torch.manual_seed(0)
    s_logits, t_logits = torch.randn(*batch["input_ids"].shape, len(CAUSAL_VOCAB)) * 2, torch.randn(len(positions), len(CAUSAL_VOCAB)) * 3
    targets = sparse_targets(t_logits, "topk", 4, T, None)
    got = SparseTokenLosses(cfg, objective)(["ce"], s_logits, targets, batch)["ce"].item()
    p, q = torch.softmax(t_logits.double() / T, -1), torch.softmax(gather_rows(s_logits, positions).double() / T, -1)
    expected = 0.0
    for r in range(len(positions)):
        top = p[r].topk(4).indices
        pb = torch.cat([p[r, top], (1 - p[r, top].sum()).unsqueeze(0)])
        qb = torch.cat([q[r, top], (1 - q[r, top].sum()).unsqueeze(0)])
        expected += (pb * (pb.log() - qb.log())).sum().item() * T * T
    assert got == pytest.approx(expected, rel=1e-4)


def test_classification_cache_trains_as_the_online_teacher(assets, tmp_path, capsys):
    """Whole logits per example (shards of 7, batches of 5): each row is the teacher's on that
    example alone, and the first step's loss terms and gradients are online KD's."""
    from transformers import AutoModelForSequenceClassification

    from conftest import build_distiller, first_step_grads

    dump = tmp_path / "cache"
    code, err = call_script(capsys, "cache_teacher", "--objective", "sequence_classification", "--teacher_name", assets["teacher"],
                            "--data_file", assets["train"], "--dump_path", dump, "--shard_size", 7, "--batch_size", 5)
    assert code == 0, err
    manifest = read_manifest(str(dump))
    assert manifest["method"] == "full" and manifest["bytes_per_row"] == 2 * 4
    offline, dataset, tokenizer = build_distiller(assets, tmp_path / "off", teacher_name=None, teacher_logits=str(dump), alpha_mse=0.2)
    teacher = AutoModelForSequenceClassification.from_pretrained(assets["teacher"]).eval()
    for index in (0, 6, 7, 50, len(dataset) - 1):
        batch = offline.objective.collate([dataset[index]])
        with torch.no_grad():
            expected = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got, _ = offline.teacher.outputs(batch)
        assert torch.allclose(got, expected, atol=1e-5), index
    online, _, _ = build_distiller(assets, tmp_path / "on", alpha_mse=0.2, cache_teacher_logits=False)
    grads_online, grads_offline = first_step_grads(online), first_step_grads(offline)
    for name, grad in grads_online.items():
        assert torch.allclose(grads_offline[name], grad, rtol=1e-4, atol=1e-6), name
    assert offline.teacher.model is None


def test_a_classification_cache_of_another_text_column_is_refused(assets, tmp_path, capsys):
    from conftest import make_examples, write_jsonl

    rows = [{**r, "other": r["text"][::-1]} for r in make_examples(30, seed=5)]
    data = write_jsonl(str(tmp_path / "two_columns.jsonl"), rows)
    dump = tmp_path / "cache"
    code, err = call_script(capsys, "cache_teacher", "--objective", "sequence_classification", "--teacher_name", assets["teacher"],
                            "--data_file", data, "--dump_path", dump)
    assert code == 0, err
    code, err = call_script(capsys, "train", "--teacher_logits", dump, "--student_name", assets["student"], "--data_file", data,
                            "--text_column", "other", "--dump_path", tmp_path / "run")
    assert code == 2 and err == ["error: --teacher_logits: the cache was made with another text_column ('text'; this run: "
                                 "'other'): remake it for this run, or change --text_column to the cache's"]
    assert not (tmp_path / "run").exists()


CHAT_A = "{% for m in messages %}Q: {{ m['content'] }} A:{% endfor %}"
CHAT_B = "{% for m in messages %}say {{ m['content'] }} A:{% endfor %}"


@pytest.mark.parametrize("difference", ["chat_template", "bos"])
def test_a_cache_of_other_token_ids_for_the_same_records_is_refused(lm, tmp_path, capsys, difference):
    """The same vocabulary (tokenizer_sha256 equal) and the same file, but the student's tokenizer
    renders the prompt with another chat template, or adds a BOS token: the cache's rows would
    pair the teacher's targets with other prompts. Refused before anything is written."""
    from tokenizers.processors import TemplateProcessing

    from conftest import write_jsonl
    from distillation.offline_logits import tokenizer_sha256

    records = [{"instruction": "say why", "input": "the movie", "output": "it is good"},
               {"instruction": "say", "input": "", "output": "the plot was dull the actor was bad"}] * 4
    data = write_jsonl(str(tmp_path / "inst.jsonl"), records)
    folders = {}
    for role, chat, bos in (("teacher", CHAT_A, False), ("student", CHAT_B, False)) if difference == "chat_template" else \
            (("teacher", None, False), ("student", None, True)):
        tok = causal_tokenizer(str(tmp_path / f"{role}-tok"))
        tok.chat_template = chat
        if bos:
            tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
        folders[role] = save_model(LlamaForCausalLM(_llama(32, 1)), tok, str(tmp_path / role))
    assert tokenizer_sha256(AutoTokenizer.from_pretrained(folders["teacher"])) == \
        tokenizer_sha256(AutoTokenizer.from_pretrained(folders["student"]))
    template = [] if difference == "chat_template" else ["--prompt_template", "Q: {instruction} {input} A:"]
    code, err = call_script(capsys, "cache_teacher", "--teacher_name", folders["teacher"], "--data_file", data, "--max_seq_length",
                            24, "--dump_path", tmp_path / "cache", "--temperature", T, *template)
    assert code == 0, err
    run = tmp_path / "run"
    code, err = call_script(capsys, "train", "--objective", "clm", "--teacher_logits", tmp_path / "cache", "--student_name",
                            folders["student"], "--data_file", data, "--max_seq_length", 24, "--temperature", T, "--dump_path", run,
                            *template)
    prompt = "6 tokens here, 6 in the cache" if difference == "chat_template" else "7 tokens here, 6 in the cache"
    assert code == 2 and err == [f"error: --teacher_logits: example 0 tokenises differently: its prompt differs ({prompt}: another chat "
                                 "template, --prompt_template or BOS token?); 8 of 8 examples differ; remake the cache with this run's "
                                 "tokenizer and flags, or tokenise as the cache did (--tokenizer_name/--student_name)"], err
    assert not run.exists()
    # the cache's own tokenizer reads it
    code, err = call_script(capsys, "train", "--objective", "clm", "--teacher_logits", tmp_path / "cache", "--student_name",
                            folders["teacher"], "--data_file", data, "--max_seq_length", 24, "--temperature", T, "--dump_path", run,
                            "--max_steps", 1, *template)
    assert code == 0, err


def test_systematic_draws_are_unbiased_and_give_each_large_token_its_share():
    """Token x is drawn k·w_x times on average (as independent draws would), and a token over 1/k
    of the mass floor(k·w) or ceil(k·w) times in every row: that is where the variance goes."""
    from distillation.offline_logits import systematic_draws

    w = torch.tensor([0.30, 0.05, 0.0, 0.22, 0.01, 0.02, 0.15, 0.0, 0.25])
    k, rows = 7, 20000
    draws = systematic_draws(w.repeat(rows, 1), k, torch.Generator().manual_seed(0), sorted_prefix=3)
    counts = torch.nn.functional.one_hot(draws, len(w)).sum(1).float()  # [rows, V]
    assert torch.allclose(counts.mean(0), k * w, atol=0.03)
    assert not counts[:, [2, 7]].any()  # zero weight: never drawn
    for x in (0, 3, 8):  # 2.1, 1.54 and 1.75 expected draws: never 0 and never more than ceil
        assert counts[:, x].min() == math.floor(k * w[x]) and counts[:, x].max() == math.ceil(k * w[x]), x
    # the cache's draws are these: after a head of 1, tail shares 0.5, 0.3, 0.2 and 7 draws
    p = torch.tensor([0.4, 0.3, 0.18, 0.12]).repeat(50, 1)
    tail = sparse_targets(p.log(), "sampled", 7, 1.0, torch.Generator().manual_seed(0), head=1).ids[:, 1:]
    counts = torch.nn.functional.one_hot(tail, 4).sum(1)
    assert ((counts[:, 1] == 3) | (counts[:, 1] == 4)).all() and ((counts[:, 2] == 2) | (counts[:, 2] == 3)).all()


def test_masked_teacher_columns_are_never_cached_and_keep_the_sampled_loss_finite():
    """-inf teacher logits (a padded or banned column): never drawn, a finite entropy, and with a
    head that holds every unmasked token the sampled loss is the exact forward KL."""
    torch.manual_seed(0)
    t = torch.randn(6, 9) * 2
    t[:, [0, 5]] = float("-inf")
    s = torch.randn(6, 9)
    targets = sparse_targets(t, "sampled", 5, T, torch.Generator().manual_seed(1), head=4)
    assert torch.isfinite(targets.entropy).all() and torch.isfinite(targets.values).all()
    assert not torch.isin(targets.ids, torch.tensor([0, 5])).any()
    assert torch.isfinite(sampled_kl(s, targets.ids, targets.values, targets.entropy, T))
    whole = sparse_targets(t, "sampled", 5, T, torch.Generator().manual_seed(1), head=7)  # the 7 unmasked tokens
    assert sampled_kl(s, whole.ids, whole.values, whole.entropy, T).item() == pytest.approx(forward_kl(s, t, T).item(), rel=1e-5)
    topk = sparse_targets(t, "topk", 8, T, None)
    assert torch.isfinite(topk.values).all() and torch.isfinite(topk.tail).all()


def test_the_header_says_what_the_cache_holds_and_warns_of_topk(lm, tmp_path, capsys):
    dump = _cache(capsys, lm, tmp_path / "cache", "--method", "topk", "--k", 4)
    capsys.readouterr()
    from distillation.cli.train import main

    assert main(["--objective", "clm", "--teacher_logits", str(dump), "--student_name", lm["student"], "--data_file", lm["train"],
                 "--max_seq_length", "24", "--temperature", str(T), "--dump_path", str(tmp_path / "run"), "--max_steps", "1"]) == 0
    out = capsys.readouterr().out
    assert "teacher logits: top 4 and the rest's mass a position (18 bytes), from the cache; evaluation reports the student only" in out
    assert "warning: a topk cache keeps nothing of the teacher's tail but its mass, a coarse target" in out
