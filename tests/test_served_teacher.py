"""The served teacher (--teacher_url) against a real vLLM server (tests/vllm_server.py): its
targets are the local teacher's top-k, its bucketed losses a hand computation from the local
teacher's logits for every divergence, its identity checked before anything is written, and a
run from it is a run from the same teacher's top-k cache, at 1 and 2 processes."""

import socket
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import TORCHRUN, final_weights, read_metrics, run_train, save_model, train_in_process
from lm_helpers import CAUSAL_VOCAB, run_script, sentences
from vllm_server import build_student, start_server, stop_server
from distillation.config import DistillConfig
from distillation.distributed import DistEnv
from distillation.losses import DIVERGENCES
from distillation.models import load_tokenizer
from distillation.objectives import build_objective
from distillation.teachers.served import served_teacher
from distillation.token_losses import SparseTokenLosses

K = 8


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    path = tmp_path_factory.mktemp("served") / "train.txt"
    path.write_text("\n".join(sentences(24, seed=3)) + "\n")
    return str(path)


def _setup(url, folder, text, tmp_path, **values):
    cfg = DistillConfig.from_dict({"objective": "clm", "teacher_url": url, "student_name": folder, "data_file": text,
                                   "dump_path": str(tmp_path / "run"), "max_seq_length": 24, "teacher_top_k": K, **values})
    tokenizer = load_tokenizer(cfg)
    objective = build_objective(cfg, tokenizer)
    dataset = objective.load_dataset(text, "--data_file")
    batch = objective.collate([dataset[i] for i in range(6)])
    return cfg, objective, batch, served_teacher(cfg, objective, tokenizer, DistEnv())


def _local_log_probs(folder, objective, batch):
    """[N, V] float64 log-probabilities of the local transformers forward at the batch's target rows."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    positions, _ = objective.token_rows(batch)
    rows = logits.reshape(-1, logits.shape[-1])[positions, : objective.columns].double()
    return rows.log_softmax(-1).numpy()


def test_served_top_k_is_the_local_teachers(vllm_teacher, text, tmp_path):
    url, folder, _ = vllm_teacher
    _, objective, batch, teacher = _setup(url, folder, text, tmp_path, temperature=1.0)
    targets, hidden = teacher.outputs(batch)
    local = _local_log_probs(folder, objective, batch)
    order = np.argsort(-local, axis=-1)[:, :K]
    top = np.take_along_axis(local, order, -1)
    served = targets.values.double().numpy()
    print(f"served vs local top-{K} log-probabilities: max |diff| {np.abs(served - top).max():.2e}")
    assert hidden is None and targets.method == "topk" and targets.ids.shape == (len(local), K)
    assert np.abs(served - top).max() < 1e-4
    # the same tokens, wherever the order is not decided by a near tie
    clear = np.abs(np.diff(top, axis=-1)).min(-1) > 1e-3
    assert clear.mean() > 0.9 and (targets.ids.numpy()[clear] == order[clear]).all()
    rest = np.log1p(-np.exp(top).sum(-1))
    assert np.abs(targets.tail.double().numpy() - rest).max() < 1e-3


def _hand_divergence(name, p, q, beta):
    """Row sums of a divergence between bucket distributions p (teacher) and q (student), float64."""
    kl = lambda a, b: (a * (np.log(a) - np.log(b))).sum(-1)  # noqa: E731
    if name == "forward_kl":
        return kl(p, q)
    if name == "reverse_kl":
        return kl(q, p)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if name == "skew_kl":
        return kl(p, beta * p + (1 - beta) * q)
    return 0.5 * np.abs(p - q).sum(-1)  # tvd


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("divergence", list(DIVERGENCES))
def test_the_bucketed_loss_is_a_hand_computation_from_the_local_teachers_logits(vllm_teacher, text, tmp_path, divergence,
                                                                                 temperature):
    """k + 1 buckets: the teacher's top k and the rest at T = 1, tempered as k + 1 tokens; the
    student's softmax at T = 1 over the same k tokens and the rest of its vocabulary, tempered
    alike."""
    url, folder, _ = vllm_teacher
    cfg, objective, batch, teacher = _setup(url, folder, text, tmp_path, temperature=temperature, divergence=divergence)
    targets, _ = teacher.outputs(batch)
    torch.manual_seed(1)
    student_logits = torch.randn(*batch["input_ids"].shape, objective.columns) * 3
    loss = SparseTokenLosses(cfg, objective)(["ce"], student_logits, targets, batch)["ce"].item()

    local = _local_log_probs(folder, objective, batch)
    ids = np.argsort(-local, axis=-1)[:, :K]
    top = np.take_along_axis(local, ids, -1)
    buckets = np.concatenate([top, np.log1p(-np.exp(top).sum(-1, keepdims=True))], -1) / temperature
    p = np.exp(buckets - np.log(np.exp(buckets).sum(-1, keepdims=True)))
    positions, _ = objective.token_rows(batch)
    s = student_logits.reshape(-1, objective.columns)[positions].double().log_softmax(-1).exp().numpy()
    s_top = np.take_along_axis(s, ids, -1)
    q = np.concatenate([s_top, 1 - s_top.sum(-1, keepdims=True)], -1) ** (1 / temperature)
    q = q / q.sum(-1, keepdims=True)
    expected = _hand_divergence(divergence, p, q, cfg.divergence_beta).sum() * temperature**2
    assert loss == pytest.approx(expected, rel=1e-4)


def _other_tokenizer_student(folder):
    """A tiny Llama student over the same words in another order: another tokenizer."""
    vocab = CAUSAL_VOCAB[:4] + CAUSAL_VOCAB[4:][::-1]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return save_model(LlamaForCausalLM(config), tok, folder)


def test_a_served_model_with_another_tokenizer_is_refused_before_anything_is_written(vllm_teacher, text, tmp_path, capsys):
    url, _, _ = vllm_teacher
    student = _other_tokenizer_student(str(tmp_path / "student"))
    dump = tmp_path / "run"
    code = train_in_process(["--objective", "clm", "--teacher_url", url, "--student_name", student, "--data_file", text,
                             "--dump_path", dump, "--max_seq_length", 24])
    err = capsys.readouterr().err
    assert code == 2 and "--teacher_url: the served model" in err and "tokenises" in err, err
    assert not dump.exists()


def test_a_server_that_is_down_exits_2_at_once_naming_the_url_and_what_to_run(vllm_teacher, text, tmp_path, capsys):
    _, folder, _ = vllm_teacher
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    dump, started = tmp_path / "run", time.time()
    code = train_in_process(["--objective", "clm", "--teacher_url", f"http://127.0.0.1:{port}", "--student_name", folder,
                             "--data_file", text, "--dump_path", dump, "--max_seq_length", 24])
    err = capsys.readouterr().err
    assert code == 2 and f"127.0.0.1:{port}" in err and "vllm.entrypoints.openai.api_server" in err, err
    assert time.time() - started < 30 and not dump.exists()


def _losses(dump):
    return [(m["step"], m["loss_ce"]) for m in read_metrics(dump) if "loss_ce" in m]


def test_a_run_from_the_served_teacher_is_a_run_from_its_top_k_cache_at_one_and_two_processes(vllm_teacher, text, tmp_path):
    """At T = 1 the served targets are the cache's top-k method (fp16 values in the cache: 1e-3);
    two processes (ddp), each asking for its own micro-batches, log the same losses as one."""
    url, folder, _ = vllm_teacher
    student = build_student(folder, str(tmp_path / "student"))
    common = ["--objective", "clm", "--student_name", student, "--data_file", text, "--max_seq_length", 24, "--temperature", 1,
              "--no-group_by_size", "--max_steps", 3, "--log_interval", 1, "--alpha_ce", 1, "--alpha_task", 0.5, "--seed", 3]
    cache = tmp_path / "cache"
    made = run_script("cache_teacher.py", "--teacher_name", folder, "--data_file", text, "--dump_path", cache, "--max_seq_length", 24,
                      "--temperature", 1, "--method", "topk", "--k", K)
    assert made.returncode == 0, made.stderr[-2000:]
    runs = {"from_cache": ["--teacher_logits", cache], "served": ["--teacher_url", url, "--teacher_top_k", K]}
    for name, extra in runs.items():
        proc = run_train([*map(str, common + extra), "--batch_size", "4", "--dump_path", str(tmp_path / name)])
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_train([*map(str, common + runs["served"]), "--batch_size", "2", "--dump_path", str(tmp_path / "served2")],
                     launcher=TORCHRUN)  # the same global batch of 4
    assert proc.returncode == 0, proc.stderr[-3000:]
    served, cached, two = (_losses(tmp_path / n) for n in ("served", "from_cache", "served2"))
    assert len(served) == 3 and [s for s, _ in served] == [s for s, _ in cached] == [s for s, _ in two]
    for (_, a), (_, b), (_, c) in zip(served, cached, two):
        assert a == pytest.approx(b, rel=1e-3) and a == pytest.approx(c, rel=1e-4)


class _KillingProxy:
    """An HTTP proxy in front of a vLLM server that kills it (SIGKILL, its whole process group)
    when the (budget + 1)-th distinct target request (prompt_logprobs of K) comes, once every
    earlier request is answered, and forwards to `upstream` again once `restart(url)` gives it a
    new server: the teacher's server killed mid-run and restarted behind the same URL. A
    client's retry resends the same body, so a passing hiccup does not spend the budget. `seen`
    records (kind, answer) for the test's messages."""

    def __init__(self, upstream, process, budget):
        self.upstream, self.process, self.budget, self.allowed, self.seen, proxy = upstream, process, budget, set(), [], self
        lock, self.in_flight = threading.Condition(), 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                target = bool(body) and b'"prompt_logprobs": %d' % K in body
                with lock:
                    if target and body not in proxy.allowed:
                        if len(proxy.allowed) < proxy.budget:
                            proxy.allowed.add(body)
                        elif proxy.process is not None:  # the server dies once the answers it owes are out
                            lock.wait_for(lambda: proxy.in_flight == 0, timeout=60)
                            stop_server(proxy.process, signal=9)
                            proxy.process = None
                    proxy.in_flight += 1
                try:
                    request = urllib.request.Request(proxy.upstream + self.path, data=body, headers={"Content-Type": "application/json"})
                    try:
                        with urllib.request.urlopen(request) as answer:
                            code, payload = answer.status, answer.read()
                    except urllib.error.HTTPError as err:
                        code, payload = err.code, err.read()
                except OSError as err:  # the killed server: the connection drops unanswered, as a dead server's would
                    proxy.seen.append(("target" if target else self.path, repr(err)))
                    self.close_connection = True
                    return
                finally:
                    with lock:
                        proxy.in_flight -= 1
                        lock.notify_all()
                proxy.seen.append(("target" if target else self.path, code))
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def restart(self, upstream):
        self.upstream, self.budget = upstream, 10**9


def test_a_server_killed_mid_run_stops_at_a_step_boundary_and_resume_ends_at_the_unbroken_weights(vllm_teacher, text, tmp_path):
    """A server of its own (started here) killed after three steps' targets; the resume asks a
    restarted server (the session's: another vLLM process on the same weights)."""
    url, folder, _ = vllm_teacher
    student = build_student(folder, str(tmp_path / "student"))
    doomed_url, doomed = start_server(folder, str(tmp_path / "doomed.log"))
    proxy = _KillingProxy(doomed_url, doomed, budget=4)  # the identity probe, then steps 1-3 (the 4th step's request fails)
    common = ["--objective", "clm", "--student_name", student, "--data_file", text, "--max_seq_length", 24, "--batch_size", 4,
              "--max_steps", 5, "--log_interval", 1, "--teacher_top_k", K, "--teacher_retries", 1, "--seed", 3]
    try:
        unbroken = run_train([*map(str, common), "--teacher_url", url, "--dump_path", str(tmp_path / "unbroken")])
        assert unbroken.returncode == 0, unbroken.stderr[-3000:]
        broken = tmp_path / "broken"
        first = run_train([*map(str, common), "--teacher_url", proxy.url, "--dump_path", str(broken)])
        assert first.returncode == 130 and "the teacher is unavailable" in first.stdout, (first.stdout[-2000:], first.stderr[-2000:])
        assert "stopped before step 4" in first.stdout and not (broken / "final").exists(), (proxy.seen, first.stdout[-2000:])
        assert doomed.poll() is not None  # it was killed, not told 503
        proxy.restart(url)
        second = run_train([*map(str, common), "--teacher_url", proxy.url, "--dump_path", str(broken), "--resume"])
        assert second.returncode == 0, second.stderr[-3000:]
        a, b = final_weights(tmp_path / "unbroken"), final_weights(broken)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    finally:
        stop_server(doomed)
        proxy.server.shutdown()
