"""distillation/teachers/served_client.py against a real vLLM server (the session's
`vllm_teacher`), and against a tiny fake server for answers a real one does not give."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from vllm_server import free_port
from distillation.teachers.served_client import ServedModel, ServerError

K = 20
# fp32 on both sides; vLLM's CPU kernels sum in another order than transformers': measured
# 2.3e-5 at most on these sequences.
TOLERANCE = 1e-4
# Neighbours in the teacher's ranking closer than this may come back in either order.
NEAR_TIE = 1e-3


def sequences(n, seed, low=2, high=60):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 26, (int(length),), generator=g).tolist() for length in torch.randint(low, high, (n,), generator=g)]


@pytest.fixture(scope="module")
def local_logprobs(vllm_teacher):
    model = AutoModelForCausalLM.from_pretrained(vllm_teacher.folder, dtype=torch.float32).eval()

    def logprobs(seq):
        with torch.no_grad():
            return torch.log_softmax(model(torch.tensor([seq])).logits[0, :-1].float(), dim=-1)
    return logprobs


def test_topk_equals_the_local_forward(vllm_teacher, local_logprobs):
    client = ServedModel(vllm_teacher.url)
    seqs = sequences(6, seed=1)
    answers = client.prompt_logprobs(seqs, K)
    checked = 0
    for seq, answer in zip(seqs, answers):
        local = local_logprobs(seq)
        assert answer.ids.shape == answer.logprobs.shape == (len(seq) - 1, K)
        assert answer.ids.dtype == np.int64 and answer.logprobs.dtype == np.float32
        assert (np.diff(answer.logprobs, axis=1) <= 0).all()  # descending
        ranked = local.topk(K + 1, dim=-1)
        # the served values are the local log-probabilities of the served ids, and the local top K
        assert (local.gather(1, torch.from_numpy(answer.ids)) - torch.from_numpy(answer.logprobs)).abs().max() < TOLERANCE
        assert (ranked.values[:, :K] - torch.from_numpy(answer.logprobs)).abs().max() < TOLERANCE
        # the same id at every rank whose neighbours are not near-tied
        gaps = ranked.values.diff(dim=-1).abs()  # [L-1, K]: gap to the next rank
        clear = torch.ones_like(gaps, dtype=torch.bool)
        clear[:, :] &= gaps > NEAR_TIE
        clear[:, 1:] &= gaps[:, :-1] > NEAR_TIE
        assert (torch.from_numpy(answer.ids)[clear] == ranked.indices[:, :K][clear]).all()
        checked += int(clear.sum())
    assert checked > 0.9 * sum(len(s) - 1 for s in seqs) * K  # near ties are rare: the test compares almost all


def test_a_batch_keeps_its_order(vllm_teacher):
    client = ServedModel(vllm_teacher.url)
    seqs = sequences(8, seed=2)
    together = client.prompt_logprobs(seqs, K)
    for seq, answer in zip(seqs, together):
        (alone,) = client.prompt_logprobs([seq], K)
        np.testing.assert_array_equal(answer.ids, alone.ids)
        np.testing.assert_allclose(answer.logprobs, alone.logprobs, atol=1e-5, rtol=0)


def test_the_server_describes_itself(vllm_teacher):
    client = ServedModel(vllm_teacher.url + "/v1")
    assert client.models() == [vllm_teacher.folder] and client.model == vllm_teacher.folder
    assert client.vocab_size == 26 and client.max_logprobs == 64 and client.max_model_len == 256
    assert client.tokenize("the movie is good") == [4, 7, 11, 13]


def test_more_logprobs_than_the_server_allows_names_its_flag(vllm_teacher):
    client = ServedModel(vllm_teacher.url)
    with pytest.raises(ServerError, match=r"--max-logprobs 65"):
        client.prompt_logprobs([[1, 4, 7]], 65)
    # K ≤ --max-logprobs but past the vocabulary: refused here (vLLM 0.32's engine dies on it)
    with pytest.raises(ServerError, match="26 tokens"):
        client.prompt_logprobs([[1, 4, 7]], 27)
    assert client.prompt_logprobs([[1, 4, 7]], 26)[0].ids.shape == (2, 26)  # the server lives


def test_a_dead_url_fails_at_once_with_the_command():
    client = ServedModel(f"http://127.0.0.1:{free_port()}", retries=5, backoff=10)
    start = time.time()
    with pytest.raises(ServerError, match=r"python -m vllm\.entrypoints\.openai\.api_server .*--max-logprobs") as err:
        client.prompt_logprobs([[1, 2]], 3)
    assert time.time() - start < 5 and "\n" not in str(err.value)


class FakeVllm(BaseHTTPRequestHandler):
    """Answers like vLLM but with `self.server.answer(body)`: (status, JSON) for completions."""

    def do_GET(self):
        self._send(200, {"data": [{"id": "fake", "max_model_len": 64}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body["prompt_logprobs"] == -1:
            return self._send(400, {"error": {"message": "Requested prompt logprobs of 26, which is greater than max allowed: 8"}})
        if body["prompt_logprobs"] == 2 ** 30:
            return self._send(400, {"error": {"message": f"Requested prompt logprobs of {2 ** 30}, which is greater than max allowed: 8"}})
        self._send(*self.server.answer(body))

    def _send(self, status, payload):
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server():
    server = HTTPServer(("127.0.0.1", 0), FakeVllm)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def choice(index, seq, k, drop_position=None):
    """vLLM's answer for `seq`: the top k (ids 0..k-1) and the actual token, at every position."""
    entries = [None] + [{**{str(j): {"logprob": -1.0 - j, "rank": j + 1} for j in range(k)}, str(t): {"logprob": -9.0, "rank": 20}}
                        for t in seq[1:]]
    if drop_position is not None:
        entries[drop_position] = dict(list(entries[drop_position].items())[: k - 1])
    return {"index": index, "prompt_token_ids": seq, "prompt_logprobs": entries}


def test_a_short_or_malformed_answer_names_the_sequence_and_position(fake_server):
    client = ServedModel(f"http://127.0.0.1:{fake_server.server_port}", retries=0)
    seqs = [[1, 20, 21, 22], [1, 23, 24, 25, 20]]
    fake_server.answer = lambda body: (200, {"choices": [choice(1, seqs[1], 3), choice(0, seqs[0], 3)]})
    first, second = client.prompt_logprobs(seqs, 3)  # answered out of order: sorted by index
    assert second.ids.shape == (4, 3) and (first.ids == [0, 1, 2]).all() and (first.logprobs == [-1, -2, -3]).all()
    fake_server.answer = lambda body: (200, {"choices": [choice(0, seqs[0], 3), choice(1, seqs[1], 3, drop_position=3)]})
    with pytest.raises(ServerError, match="sequence 1 of the request, position 3: 2 log-probabilities for a top 3"):
        client.prompt_logprobs(seqs, 3)
    short = choice(1, seqs[1], 3)
    short["prompt_logprobs"] = short["prompt_logprobs"][:-1]
    fake_server.answer = lambda body: (200, {"choices": [choice(0, seqs[0], 3), short]})
    with pytest.raises(ServerError, match="sequence 1 of the request: prompt_logprobs for 4 positions, 5 expected"):
        client.prompt_logprobs(seqs, 3)
    other = choice(0, seqs[0], 3)
    other["prompt_token_ids"] = [1, 20, 5, 22]
    fake_server.answer = lambda body: (200, {"choices": [other, choice(1, seqs[1], 3)]})
    with pytest.raises(ServerError, match="sequence 0 of the request: the server scored other token ids than sent .first at position 2"):
        client.prompt_logprobs(seqs, 3)
    fake_server.answer = lambda body: (200, {"choices": [choice(0, seqs[0], 3)]})
    with pytest.raises(ServerError, match="sequence 1 of the request: no answer"):
        client.prompt_logprobs(seqs, 3)


def test_the_servers_400_for_too_many_logprobs_names_the_flag(fake_server):
    client = ServedModel(f"http://127.0.0.1:{fake_server.server_port}", retries=0)
    client._max_logprobs = client._vocab_size = 100  # a server that says one thing and does another: its 400 decides
    fake_server.answer = lambda body: (400, {"error": {"message": "Requested prompt logprobs of 9, which is greater than max allowed: 8 "
                                                       "(parameter=prompt_logprobs, value=9)", "code": 400}})
    with pytest.raises(ServerError, match="restart it with a larger `--max-logprobs`"):
        client.prompt_logprobs([[1, 2]], 9)


def test_5xx_is_retried_with_backoff_then_raised(fake_server):
    client = ServedModel(f"http://127.0.0.1:{fake_server.server_port}", retries=2, backoff=0.05)
    calls = []
    seq = [1, 20, 21]

    def answer(body):
        calls.append(time.time())
        return (500, {"error": {"message": "EngineCore encountered an issue"}}) if len(calls) < 3 else \
            (200, {"choices": [choice(0, seq, 3)]})
    fake_server.answer = answer
    assert client.prompt_logprobs([seq], 3)[0].ids.shape == (2, 3)  # third try answers
    assert len(calls) == 3 and calls[2] - calls[1] >= 0.09  # waits 0.05, then 0.1
    calls.clear()
    fake_server.answer = lambda body: (calls.append(1), (503, {"error": {"message": "overloaded"}}))[1]
    with pytest.raises(ServerError, match="failed 3 times .*HTTP 503: overloaded"):
        client.prompt_logprobs([seq], 3)
    assert len(calls) == 3


def test_a_teacher_lost_outside_a_step_boundary_is_one_line_and_exit_1(capsys):
    """Evaluation's or a sampled step's request failing past its retries: the CLI says so in one
    line (the last checkpoint is kept), no traceback."""
    from distillation.cli import main_guard
    from distillation.errors import TeacherUnavailable

    def evaluation():
        raise TeacherUnavailable("the teacher server at http://h:1 failed 6 times on /v1/completions")

    assert main_guard(evaluation) == 1
    assert capsys.readouterr().err == "error: the teacher server at http://h:1 failed 6 times on /v1/completions\n"
