"""scripts/cache_teacher.py --teacher_url: a topk cache made from a real vLLM server
(tests/vllm_server.py) is the cache the local teacher makes (--teacher_name, the same folder),
a run from it logs the local cache's losses, it resumes as the local pass does, and the methods
that need the whole distribution are refused."""

import os

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from conftest import read_metrics, train_in_process
from lm_helpers import CAUSAL_VOCAB, call_script, config, objective_for, sentences
from distillation.cli.cache_teacher import main as cache_main
from distillation.offline_logits import read_manifest
from distillation.teachers.served import tempered_buckets
from vllm_server import build_student

K = 8
SHARD = 7  # 18 blocks of 24 tokens: shards of 7, 7 and 4, which batches of 3 and 4 do not fill evenly


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache_served") / "train.txt"
    path.write_text("\n".join(sentences(24, seed=5)) + "\n")
    return str(path)


def _cache(capsys, source, text, dump, *extra, temperature=1, expect=0):
    """scripts/cache_teacher.py in this process: the folder, or (expect != 0) its stderr lines;
    capsys None: stderr not captured (a module fixture's)."""
    args = [*source, "--data_file", text, "--dump_path", dump, "--max_seq_length", 24, "--temperature", temperature,
            "--method", "topk", "--k", K, "--shard_size", SHARD, *extra]
    code, err = call_script(capsys, "cache_teacher", *args) if capsys else (cache_main([str(a) for a in args]), None)
    assert code == expect, err
    return dump if expect == 0 else err


def _served(vllm_teacher):
    return ["--teacher_url", vllm_teacher.url, "--tokenizer_name", vllm_teacher.folder]


def _arrays(dump):
    shards = read_manifest(str(dump))["shards"]
    assert shards == 3
    names = ("ids", "values", "tail", "rows")
    return [{n: np.load(os.path.join(dump, f"shard-{s:05d}.{n}.npy")) for n in names} for s in range(shards)]


def _local_log_probs(folder, text):
    """[P, V] float64 log-probabilities of the local fp32 forward at every cached position, example by example."""
    dataset = objective_for(config(objective="clm", data_file=text, student_name=folder, max_seq_length=24)).load_dataset(text, "t")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        for i in range(len(dataset)):
            ids = torch.tensor([dataset[i]["input_ids"]])
            rows.append(model(input_ids=ids).logits[0, :-1].double().log_softmax(-1))
    return torch.cat(rows).numpy()


@pytest.fixture(scope="module")
def caches(vllm_teacher, text, tmp_path_factory):
    """The local teacher's topk cache and the server's, at T = 1 (batches of 3: padded, cut by shards)."""
    root = tmp_path_factory.mktemp("caches")
    local = _cache(None, ["--teacher_name", vllm_teacher.folder], text, root / "local", "--batch_size", 3)
    served = _cache(None, _served(vllm_teacher), text, root / "served", "--batch_size", 3)
    return {"local": local, "served": served, "root": root}


def test_a_served_topk_cache_is_the_local_teachers(vllm_teacher, text, caches):
    local, served = read_manifest(str(caches["local"])), read_manifest(str(caches["served"]))
    # the same cache but for who made it: the served model's name, vocabulary and probe digest
    assert served["source"] == "served" and served["teacher"].startswith(f"served {vllm_teacher.folder!r} of 26 tokens, probe ")
    assert local["teacher"] == vllm_teacher.folder and "source" not in local
    same = {key for key in local if key not in ("teacher", "seed", "precision", "teacher_dtype")}
    assert {key: served[key] for key in same} == {key: local[key] for key in same}
    config = AutoConfig.from_pretrained(os.path.join(caches["served"], "teacher_config"))
    assert (config.vocab_size, config.max_position_embeddings) == (26, 256)  # the server's --max-model-len

    exact = _local_log_probs(vllm_teacher.folder, text)
    order = np.argsort(-exact, axis=-1)
    top = np.take_along_axis(exact, order[:, : K + 1], -1)
    clear = np.abs(np.diff(top, axis=-1)).min(-1) > 1e-3  # no near tie within the top k, nor at its edge
    for a, b in zip(_arrays(caches["served"]), _arrays(caches["local"])):
        assert (a["rows"] == b["rows"]).all() and a["ids"].dtype == b["ids"].dtype == np.uint16
    served_arrays, local_arrays = (
        {n: np.concatenate([a[n] for a in _arrays(caches[who])]) for n in ("ids", "values", "tail")} for who in ("served", "local"))
    assert len(served_arrays["ids"]) == len(exact) and clear.mean() > 0.9
    assert (served_arrays["ids"][clear] == local_arrays["ids"][clear]).all()
    assert (local_arrays["ids"][clear] == order[clear, :K]).all()
    for name in ("values", "tail"):  # fp16 both: one rounding step apart at most
        a, b = served_arrays[name].astype(np.float64), local_arrays[name].astype(np.float64)
        assert np.abs(a - b).max() <= 2 ** -10 * np.maximum(np.abs(b), 1).max(), name


def test_a_run_from_the_served_cache_logs_the_local_caches_losses(vllm_teacher, text, caches, tmp_path):
    student = build_student(vllm_teacher.folder, str(tmp_path / "student"))
    losses = {}
    for name in ("local", "served"):
        code = train_in_process(["--objective", "clm", "--teacher_logits", caches[name], "--student_name", student,
                                 "--data_file", text, "--max_seq_length", 24, "--temperature", 1, "--no-group_by_size",
                                 "--max_steps", 4, "--log_interval", 1, "--batch_size", 4, "--alpha_ce", 1, "--alpha_task", 0.5,
                                 "--seed", 3, "--dump_path", tmp_path / name])
        assert code == 0
        losses[name] = [(m["step"], m["loss_ce"]) for m in read_metrics(tmp_path / name) if "loss_ce" in m]
    print("loss_ce from the served cache / the local one:", [(a, b) for (_, a), (_, b) in zip(losses["served"], losses["local"])])
    assert [s for s, _ in losses["served"]] == [s for s, _ in losses["local"]] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(losses["served"], losses["local"]):
        assert a == pytest.approx(b, rel=1e-3)


def test_at_another_temperature_the_values_are_the_tempered_buckets(vllm_teacher, text, caches, capsys, tmp_path):
    """T = 2: the top k and the rest of the server's T = 1 log-probabilities, tempered as k + 1
    buckets (what a --teacher_url run trains on), not the T = 1 values."""
    hot = _cache(capsys, _served(vllm_teacher), text, tmp_path / "t2", "--batch_size", 5, temperature=2)
    assert read_manifest(str(hot))["temperature"] == 2
    for cold, warm in zip(_arrays(caches["served"]), _arrays(hot)):
        values, tail = tempered_buckets(torch.from_numpy(cold["values"].astype(np.float32)), 2.0)
        assert (cold["ids"] == warm["ids"]).all() and (cold["rows"] == warm["rows"]).all()
        assert np.abs(values.numpy() - warm["values"]).max() < 5e-3 and np.abs(tail.numpy() - warm["tail"]).max() < 5e-3
        assert np.abs(cold["values"].astype(np.float32) - warm["values"]).max() > 0.1


def test_an_interrupted_served_pass_resumes_and_keeps_its_complete_shards(vllm_teacher, text, caches, capsys, tmp_path):
    dump = tmp_path / "cache"
    _cache(capsys, _served(vllm_teacher), text, dump, "--batch_size", 4)
    kept = os.stat(dump / "shard-00000.values.npy").st_mtime_ns
    os.remove(dump / "shard-00001.rows.npy")  # shard 1 unfinished: its other arrays may be anything
    np.save(dump / "shard-00001.values.npy", np.zeros((3, K), np.float16))  # (its rows file is what says it is done)
    _cache(capsys, _served(vllm_teacher), text, dump, "--batch_size", 4)
    assert os.stat(dump / "shard-00000.values.npy").st_mtime_ns == kept
    for a, b in zip(_arrays(dump), _arrays(caches["served"])):
        assert (a["rows"] == b["rows"]).all() and np.abs(a["values"].astype(np.float64) - b["values"]).max() <= 8e-3
    # another served teacher (here: another top-k, so another probe digest) is not this cache's
    err = _cache(capsys, _served(vllm_teacher), text, dump, "--batch_size", 4, "--k", K + 1, expect=2)
    assert "holds a cache made with another teacher" in err[-1] and "probe" in err[-1], err


@pytest.mark.parametrize("extra, expect", [
    (["--method", "sampled"], "error: --method sampled: needs the teacher's whole distribution"),
    (["--objective", "sequence_classification"], "error: --teacher_url: a served teacher returns next-token log-probabilities"),
    (["--precision", "bf16"], "error: --precision: the served teacher runs in the server's dtype"),
])
def test_what_a_served_teacher_cannot_cache_exits_2(vllm_teacher, text, capsys, tmp_path, extra, expect):
    code, err = call_script(capsys, "cache_teacher", *_served(vllm_teacher), "--data_file", text, "--dump_path", tmp_path / "c",
                            *extra)
    assert code == 2 and len(err) == 1 and err[0].startswith(expect), err
    assert not (tmp_path / "c").exists()


def test_a_served_model_with_another_tokenizer_writes_nothing(vllm_teacher, text, capsys, tmp_path):
    other = tmp_path / "tok"  # the same words in another order
    vocab = CAUSAL_VOCAB[:4] + CAUSAL_VOCAB[4:][::-1]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                            pad_token="<pad>").save_pretrained(str(other))
    code, err = call_script(capsys, "cache_teacher", "--teacher_url", vllm_teacher.url, "--tokenizer_name", other,
                            "--data_file", text,
                            "--dump_path", tmp_path / "c", "--method", "topk")
    assert code == 2 and "--teacher_url: the served model" in err[-1] and "tokenises" in err[-1], err
    assert not (tmp_path / "c").exists()


def test_at_another_temperature_a_run_from_the_served_cache_is_the_served_run(vllm_teacher, text, tmp_path, capsys):
    """T = 2: the cache's buckets were tempered as k + 1 tokens, and a run from it tempers the
    student's buckets alike (its manifest says the cache is served): the losses of a
    --teacher_url run, to the cache's fp16 rounding."""
    cache = _cache(capsys, _served(vllm_teacher), text, tmp_path / "cache", "--batch_size", 4, temperature=2)
    student = build_student(vllm_teacher.folder, str(tmp_path / "student"))
    losses = {}
    for name, source in (("cache", ["--teacher_logits", cache]), ("served", ["--teacher_url", vllm_teacher.url, "--teacher_top_k", K])):
        code = train_in_process([*source, "--objective", "clm", "--student_name", student, "--data_file", text, "--max_seq_length", 24,
                                 "--temperature", 2, "--no-group_by_size", "--max_steps", 3, "--log_interval", 1, "--batch_size", 4,
                                 "--seed", 3, "--dump_path", tmp_path / f"run-{name}"])
        assert code == 0
        losses[name] = [m["loss_ce"] for m in read_metrics(tmp_path / f"run-{name}") if "loss_ce" in m]
    assert len(losses["cache"]) == len(losses["served"]) == 3
    assert losses["cache"] == pytest.approx(losses["served"], rel=1e-3)
