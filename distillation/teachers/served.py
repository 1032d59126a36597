"""The served teacher (--teacher_url): a teacher on its own inference server (vLLM's
OpenAI-compatible server), never in training memory.

For each training micro-batch the server gets every row's token ids (never text) and returns,
at every position, the teacher's --teacher_top_k most likely next tokens with their
log-probabilities (vLLM's `prompt_logprobs`). Training compares k + 1 buckets: those k tokens
and "the rest", whose teacher mass is what the k leave; the student's distribution is taken
over the same buckets. This is the cache's top-k method (offline_logits.SparseTargets, one loss
path in token_losses.SparseTokenLosses), so every --divergence applies.

Temperature: the server's log-probabilities are at T = 1, and the tempered mass of the rest
cannot be recovered from its total alone (it depends on how the rest is spread). At T ≠ 1 the
rest is tempered as if it were one token: the k + 1 log-probabilities are divided by T and
renormalised (`tempered_buckets`). At T > 1 this gives the rest less mass than the full
tempered distribution would (Σ p_i^(1/T) ≥ (Σ p_i)^(1/T)); at T = 1 it is exact. The student's
buckets are tempered the same way (SparseTargets.rest_as_one): tempered over its whole
vocabulary, its rest would hold far more mass than the teacher's, and the loss would push every
tail token down (measured at T = 2: held-out perplexity 4,927 against the dense teacher's 1,149).

Identity, before anything is written: the served model's tokenizer must be the run's (the same
ids for probe strings, the chat template's special tokens among them), and the resume
fingerprint holds the served model's name, its vocabulary and a digest of its top-k on a
fixed probe (a URL is no identity: another model may answer there after a restart).
Evaluation: the server's answers for each held-out batch stand for the teacher's logits
(`ServedRows`): the teacher's loss, perplexity, accuracy and exact match are the local teacher's
(vLLM returns the actual next token's log-probability beside the top k: its NLL is exact).
On-policy steps (--on_policy_fraction): the micro-batches rebuilt from the student's samples
are asked for when their loss needs them (they exist only then), as token ids like any other,
and learn from the same k + 1 buckets; the dataset rows' targets asked for that step go unused.
--eval_generate: the teacher's NLL of the student's answers is the server's log-probability of
each answer token (`next_token_logprobs`), and its own answers are drawn by the server
(`drawing`), seeded per prompt. Limits: clm; no hidden-state or logit-MSE losses.
"""

import contextlib
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional

import numpy as np
import torch

from distillation.errors import InputError, TeacherUnavailable
from distillation.losses import log_rest, tempered_as_buckets
from distillation.objectives.lm import HeadRows
from distillation.offline_logits import SparseTargets
from distillation.teachers.served_client import ServedModel, ServerError

# Strings whose ids must agree between the server's tokenizer and ours (the chat template's
# special tokens are added by `probe_texts`).
PROBES = ("Hello, world!", "  two spaces, a tab\tand 3.14159", "The quick brown fox jumps over the lazy dog.")


def tempered_buckets(logp: torch.Tensor, temperature: float) -> tuple:
    """The teacher's k + 1 buckets at T from its top-k log-probabilities at T = 1.

    Args:
        logp: [N, K] log-probabilities at T = 1 of K distinct tokens per row.
    Returns:
        (values [N, K], tail [N]): log-probabilities at T of the K tokens and of the rest, the
        rest tempered as one token (losses.tempered_as_buckets; exact at T = 1).
    """
    buckets = tempered_as_buckets(torch.cat([logp, log_rest(logp).unsqueeze(-1)], dim=-1), temperature)
    return buckets[:, :-1], buckets[:, -1]


def probe_texts(tokenizer) -> List[str]:
    """PROBES, the chat template's rendering of a short exchange (its special tokens) if it has
    one, and ~100 of its tokens spread over its vocabulary (what tells a vocabulary in another
    order apart, where the probe strings are all unknown words)."""
    texts = list(PROBES)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
    texts.append(tokenizer.decode(list(range(0, len(tokenizer), max(1, len(tokenizer) // 97))), skip_special_tokens=False))
    return texts


def check_tokenizer(client: ServedModel, tokenizer, flag: str, ours_name: str) -> None:
    """InputError (`flag`: ...) unless the served model tokenises the probe texts as `tokenizer`
    (`ours_name` in the message) does and its vocabulary covers it. ServerError passes through."""
    for text in probe_texts(tokenizer):
        ours, theirs = tokenizer(text, add_special_tokens=False)["input_ids"], client.tokenize(text)
        if ours != theirs:
            at = next((n for n, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            raise InputError(f"{flag}: the served model {client.model!r} tokenises {text[:60]!r} otherwise than {ours_name} (from "
                             f"token {at}: {theirs[at:at + 6]} vs {ours[at:at + 6]}): give the served model's tokenizer")
    if client.vocab_size < len(tokenizer):
        raise InputError(f"{flag}: the served model {client.model!r} has {client.vocab_size} tokens, {ours_name} {len(tokenizer)}: "
                         "give the served model's tokenizer")


def served_client(cfg) -> ServedModel:
    """The client of the --teacher_url server, by the run's --teacher_* options."""
    return ServedModel(cfg.teacher_url, cfg.teacher_served_model, timeout=cfg.teacher_timeout, retries=cfg.teacher_retries)


def served_teacher(cfg, objective, tokenizer, env, client: Optional[ServedModel] = None) -> "ServedTeacher":
    """The --teacher_url teacher (through `client`, if one was made already), once its server
    answers and its tokenizer is the run's; InputError (exit 2, nothing written) otherwise."""
    try:
        client = client or served_client(cfg)
        check_tokenizer(client, tokenizer, "--teacher_url", "the run's tokenizer (--tokenizer_name, else the student's)")
        if client.max_model_len is not None and cfg.max_seq_length > client.max_model_len:
            raise InputError(f"--max_seq_length {cfg.max_seq_length}: the served model takes at most {client.max_model_len} tokens "
                             "(the server's --max-model-len)")
        probe = tokenizer(PROBES[-1], add_special_tokens=False)["input_ids"]
        answer, = client.prompt_logprobs([probe], cfg.teacher_top_k)
    except ServerError as err:
        raise InputError(f"--teacher_url: {err}") from None
    ids, values = answer.ids, answer.logprobs
    if int(ids.max()) >= len(tokenizer):
        raise InputError(f"--teacher_url: the served model {client.model!r} proposes token id {int(ids.max())}, past the run's "
                         f"tokenizer ({len(tokenizer)} tokens): another tokenizer")
    # Top-k ids and log-probabilities to 2 decimals: the same model answers alike after a restart.
    digest = hashlib.sha256(json.dumps([ids.tolist(), torch.as_tensor(values).round(decimals=2).tolist()]).encode()).hexdigest()
    identity = f"served {client.model!r} of {client.vocab_size} tokens, probe {digest[:16]}"
    return ServedTeacher(client, objective, cfg, env.device, identity, len(tokenizer))


def _at(answers: list, batch, positions: torch.Tensor) -> tuple:
    """The server's answers for `batch`'s rows at its flat `positions` (each predicting the next
    token): (ids [N, K] int64, log-probabilities [N, K], the actual next token's [N]), on the CPU."""
    starts = batch["attention_mask"].int().argmax(dim=1).tolist()  # where each row's tokens begin
    width = batch["input_ids"].shape[1]
    picks = []
    for position in positions.cpu().tolist():
        row, column = divmod(position, width)
        picks.append((answers[row], column - starts[row]))  # entry j of a row predicts its token j + 1
    return (torch.from_numpy(np.stack([a.ids[j] for a, j in picks])), torch.from_numpy(np.stack([a.logprobs[j] for a, j in picks])),
            torch.from_numpy(np.stack([a.actual[j] for a, j in picks])))


class ServedRows(HeadRows):
    """A batch's server answers standing for the teacher's logits at evaluation, a chunk of rows at
    a time (objectives/lm.token_stats reads only each row's NLL of its target and its argmax).
    Each row is a distribution over the tokenizer's tokens: the top k and the actual next token
    at the server's log-probabilities, what they leave spread evenly over the other tokens. Its
    NLL of the target is the server's, exactly; its argmax the server's top 1 (an even share of
    the rest is at most the k-th's: every token outside the top k has at most its mass)."""

    elements = 2**22  # values a chunk: 32 MB in float64 at any vocabulary

    def __init__(self, answers: list, batch, device, check):
        self.answers, self.batch, self.device, self.check = answers, batch, device, check

    def chunks(self, positions: torch.Tensor, columns: int):
        """Yields (slice of `positions`, [n, columns] log-probabilities of those positions), n
        rows of at most `elements` values together."""
        flat, rows = self.batch["input_ids"].reshape(-1), max(1, self.elements // columns)
        for start in range(0, len(positions), rows):
            part = slice(start, start + rows)
            ids, top, actual = _at(self.answers, self.batch, positions[part])
            self.check(ids)
            target = flat[positions[part] + 1].cpu()
            outside = (ids != target[:, None]).all(-1)  # vLLM's k + 1st entry: the target, outside the top k
            listed = top.double().exp().sum(-1) + torch.where(outside, actual.double().exp(), 0.0)
            others = (columns - ids.shape[1] - outside.long()).clamp(min=1)
            dense = torch.log(torch.clamp(1 - listed, min=1e-30) / others).unsqueeze(-1).repeat(1, columns)
            dense.scatter_(1, ids, top.double()).scatter_(1, target[:, None], actual.double()[:, None])
            yield part, dense.float().to(self.device)


class ServedTeacher:
    """SparseTargets (top-k and the rest) of training batches from the server; at evaluation
    ServedRows, which evaluation scores as the teacher's logits. `prepare` sends a step's requests
    (and, with --teacher_prefetch, the next step's) before the student computes: the student waits only for
    what the server has not answered by then, and a server that fails does so before the step
    starts, so the run can stop at a step boundary."""

    model = None
    sparse = True
    members = ()  # one teacher (several.py has several)
    warning = None

    def __init__(self, client: ServedModel, objective, cfg, device, identity: str, columns: int):
        self.client, self.objective, self.device, self.identity = client, objective, device, identity
        self.columns = columns  # the served tokenizer's tokens: the ids its answers may hold
        self.k, self.temperature, self.prefetch = cfg.teacher_top_k, cfg.temperature, cfg.teacher_prefetch
        self.form = f"top {self.k} and the rest's mass (served)"  # as a --teacher_url cache's: several routed teachers may mix them
        self.description = (f"served at {client.url} ({client.model!r}): its top {self.k} and the rest's mass a position, "
                            f"asked for each micro-batch{', the next step ahead' if self.prefetch else ''}; evaluation scores "
                            "the teacher from them too")
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="teacher")
        self.pending = {}  # micro-batch key -> Future of the server's answers for its rows
        self.waited, self.requests = 0.0, 0

    def _sequences(self, batch) -> list:
        """Each row's tokens as the teacher reads them, without its padding."""
        view = self.objective.teacher_batch(batch)
        return [row[m].tolist() for row, m in zip(view["input_ids"], view["attention_mask"].bool())]

    def _key(self, batch) -> tuple:
        # By the tokens, not the examples' indices: an on-policy step rebuilds its micro-batches
        # from the student's samples under the same indices, and those must be asked anew.
        return tuple(map(tuple, self._sequences(batch)))

    def _ask(self, batch) -> None:
        if self._key(batch) not in self.pending:
            self.pending[self._key(batch)] = self.pool.submit(self.client.prompt_logprobs, self._sequences(batch), self.k)
            self.requests += 1

    def prepare(self, group: list, upcoming: Optional[list]) -> None:
        """Ask for `group`'s targets (the step about to run), and `upcoming`'s with prefetch;
        wait for `group`'s. TeacherUnavailable when the server fails within --teacher_retries."""
        batches = group + ((upcoming or []) if self.prefetch else [])
        wanted = {self._key(batch) for batch in batches}
        for key in [key for key in self.pending if key not in wanted]:  # an on-policy step's dataset rows, never used
            self.pending.pop(key).cancel()
        for batch in batches:
            self._ask(batch)
        started = time.time()
        try:
            for batch in group:
                self.pending[self._key(batch)].result()
        except ServerError as err:
            self.pending.clear()  # a resumed run asks again
            raise TeacherUnavailable(str(err)) from None
        finally:
            self.waited += time.time() - started

    def outputs(self, batch, with_hidden: bool = False, split: str = "train", logits: bool = True):
        """(SparseTargets of the batch's target rows (the teacher's, where it reads other tokens), in
        token_rows' order; None) for training,
        (ServedRows of the batch; None) for evaluation."""
        try:
            view = self.objective.teacher_batch(batch)
            if split != "train":  # asked now, outside `pending`: a prefetched training batch may hold the same indices
                return ServedRows(self.client.prompt_logprobs(self._sequences(batch), self.k), view, self.device, self.check_ids), None
            self._ask(batch)  # asked by prepare in a run; here for an on-policy step's samples, or a caller without one
            started = time.time()
            answers = self.pending.pop(self._key(batch)).result()
            self.waited += time.time() - started
        except ServerError as err:
            raise TeacherUnavailable(str(err)) from None
        positions, _ = self.objective.token_rows(view)
        ids, values, _ = _at(answers, view, positions)
        self.check_ids(ids)
        values, tail = tempered_buckets(values.float(), self.temperature)
        return SparseTargets("topk", ids.to(self.device), values.to(self.device), tail=tail.to(self.device), rest_as_one=True), None

    def next_token_logprobs(self, sequence: list) -> torch.Tensor:
        """[L - 1] the log-probability of each next token of `sequence` (token ids), from the server."""
        try:
            answer, = self.client.prompt_logprobs([sequence], 1)
        except ServerError as err:
            raise TeacherUnavailable(str(err)) from None
        return torch.from_numpy(answer.actual)

    @contextlib.contextmanager
    def drawing(self, on_policy):
        """The teacher's own answers (--eval_generate) drawn by the server, as on_policy.drawing
        draws the student's: `draw(input_ids, attention_mask)` -> [(answer through its stop id,
        whether it has one)] of each left-padded prompt row; pure sampling at
        --generation_temperature, at most on_policy.budget tokens, never an id past the tokenizer.
        vLLM stops on the tokenizer's EOS and on its model's own EOS ids (finish_reason "stop").
        Each request's seed is drawn from torch's RNG, which the caller seeds per prompt."""
        # served_generation imports this module (check_tokenizer): imported here, not at the top
        from distillation.served_generation import completions, request_fields

        tokenizer = on_policy.tokenizer
        stop = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        allowed = list(range(len(tokenizer))) if self.client.vocab_size > len(tokenizer) else None

        def draw(input_ids, attention_mask):
            answers = []
            for row, mask in zip(input_ids.tolist(), attention_mask.bool().tolist()):
                fields = request_fields(on_policy.budget(len(row)), on_policy.cfg.generation_temperature, 1.0, 0, 1.0, stop, allowed)
                (ids, finish), = completions(self.client, [t for t, m in zip(row, mask) if m], 1, fields,
                                             int(torch.randint(2**31 - 1, ())))
                answers.append((ids, finish == "stop"))
            return answers

        try:
            yield draw
        except ServerError as err:
            raise TeacherUnavailable(str(err)) from None

    def check_ids(self, ids: torch.Tensor) -> None:
        """TeacherUnavailable if the server proposed an id in `ids` past the run's tokenizer."""
        if int(ids.max()) >= self.columns:
            raise TeacherUnavailable(f"the server at {self.client.url} proposed token id {int(ids.max())}, past the run's "
                                     f"tokenizer ({self.columns} tokens)")

    def end_epoch(self, env) -> None:
        """Nothing to share: every rank asks for its own batches."""

    def report(self, env) -> dict:
        """The time this process's student waited for the server, and the requests it sent."""
        return {"teacher_wait_s": self.waited, "teacher_requests": self.requests}

    def parameters(self):
        return None
