"""On-policy distillation (GKD, Agarwal et al. 2024): on a share λ of the optimizer steps
(--on_policy_fraction) the student answers the step's prompts itself and learns from the
teacher's distribution at every token of its own answers.

Off-policy KD trains the student on prefixes it may never produce (the dataset's responses);
on its own samples it learns where its own mistakes lead. Per step:
- a draw from a generator seeded with (--seed, step) decides, the same on every process and
  after a resume, without touching the training RNG (λ = 0 is today's run, bit for bit);
- on a sampled step each micro-batch's prompts (the tokens before `prompt_len`) are answered by
  the student in eval mode (`generate`, pure sampling at --generation_temperature, at most
  --max_new_tokens and --max_seq_length, by generation.sampling_config alone: the student
  folder's generation_config.json but for its EOS ids is not read), each answer kept through
  its first stop id (generation.stop_ids);
- the batch is rebuilt from prompt + answer, so the divergence covers exactly the sampled
  tokens through EOS (the prompt and what follows EOS are not targets), and the hard-label
  loss is weighted 0 on that step: the student's own tokens are no labels.
The default --divergence is reverse KL when λ > 0 (config.py): on its own samples the student is
pushed away from what the teacher finds unlikely (mode-seeking), as GKD, MiniLLM and on-policy
distillation recipes do. Under fsdp every rank generates in step (parallel.FSDPStrategy.generation).
--eval_generate compares the student's answers with the teacher's own to the same prompts and
warns (`collapse`) when they stop ending. The rebuilt batches reach the teacher through its
`outputs`, whatever its kind (a served one asks its server for them). Limits: instruction data
(prompts), a live teacher (local or served, not a logits cache), no hidden-state losses.
"""

import contextlib
import math

import torch

from distillation.distributed import all_gather_objects, item_seed
from distillation.errors import InputError
from distillation.generation import drawn_by, ends, sampling_config


class OnPolicy:
    def __init__(self, cfg, objective, tokenizer, strategy):
        self.cfg, self.objective, self.tokenizer, self.strategy = cfg, objective, tokenizer, strategy
        self.teacher_own = None  # --eval_generate: the teacher's own answers' length and EOS share (sample_metrics)

    def sampled(self, step: int) -> bool:
        """Is optimizer step `step` (0-based) on the student's own samples?"""
        if self.cfg.on_policy_fraction <= 0:
            return False
        generator = torch.Generator().manual_seed(item_seed(self.cfg.seed, step))
        return bool(torch.rand((), generator=generator) < self.cfg.on_policy_fraction)

    @torch.no_grad()
    def sample_metrics(self, prompts: list, model, teacher, env) -> tuple:
        """--eval_generate: the student (in `model`, the StudentWithProjection trained) answers each
        prompt (draws seeded by (--seed, prompt), the training RNG untouched), which `teacher` (the
        run's, teachers/: local or served) scores and answers itself. Returns the metrics
        (eval_teacher_nll: the teacher's mean NLL per answer token, eval_sample_length: the mean
        answer length, eval_sample_eos: the share ending in EOS; eval_teacher_sample_length and
        _eos: the same of the teacher's own answers, drawn alike once, at the first call: what
        `collapse` compares with) and the student's answers, one dict each, to read beside them."""
        rows = self._answer_and_score(prompts, self._generating(model), teacher, env)
        if self.teacher_own is None:
            own = self._answer_and_score(prompts, teacher.drawing(self), teacher, env)
            self.teacher_own = {f"eval_teacher_{k}": v for k, v in _summary(own).items()}
        metrics = {"eval_teacher_nll": sum(r[1] for r in rows) / max(sum(len(r[2]) for r in rows), 1),
                   **{f"eval_{k}": v for k, v in _summary(rows).items()}, **self.teacher_own}
        answers = [{"prompt_index": i, "prompt": self.tokenizer.decode(prompts[i]), "answer": self.tokenizer.decode(answer),
                    "ended_with_eos": ended, "teacher_nll": nll / max(len(answer), 1)} for i, nll, answer, ended in rows]
        return metrics, answers

    def _answer_and_score(self, prompts: list, drawing, teacher, env) -> list:
        """[(prompt index, the teacher's NLL of the answer, answer, ended with EOS)] of every
        prompt, in order. The prompts are split over the processes and gathered:
        the same at any count. Every rank runs as many generations and teacher forwards (fsdp's
        collectives): a short rank repeats its first prompt, or prompt 0 when it has none (fewer
        prompts than processes), and drops the result."""
        mine, rounds = [], math.ceil(len(prompts) / env.world_size)
        indices = list(range(env.rank, len(prompts), env.world_size))
        with torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []), drawing as draw:
            for n, i in enumerate(indices + (indices or [0])[:1] * (rounds - len(indices))):
                torch.manual_seed(item_seed(self.cfg.seed, i))
                ids = torch.tensor([prompts[i]], device=env.device)
                (answer, ended), = draw(ids, torch.ones_like(ids))
                nll = -teacher.next_token_logprobs(prompts[i] + answer)[len(prompts[i]) - 1 :].sum().item()
                if n < len(indices):
                    mine.append((i, nll, answer, ended))
        return sorted(row for part in all_gather_objects(mine, env) for row in part)

    def budget(self, prompt_len: int) -> int:
        """The most tokens an answer to a prompt this long may have: --max_new_tokens within --max_seq_length."""
        return max(1, min(self.cfg.max_new_tokens, self.cfg.max_seq_length - prompt_len))

    def _generating(self, model):
        """The student's answers (parallel.py: how the processes take part) in eval mode."""
        return self.drawing(model.student, self.strategy.generation(model), model)

    @contextlib.contextmanager
    def drawing(self, module, generation, trained=None):
        """`draw(input_ids, attention_mask)` -> [(answer ids through the first stop id, whether it
        has one)] of each left-padded prompt row, at most `budget` tokens, drawn by
        generation.sampling_config alone: pure sampling at --generation_temperature (no top-k/top-p,
        no repetition penalty, whatever the folder's generation_config.json says), never an id past
        the tokenizer. `module`: the model that generates (`generation`: its `generate`, as a
        parallel.Strategy gives it); `trained`: what to put in eval mode."""
        was_training = trained is not None and trained.training
        if trained is not None:
            trained.eval()
        config = sampling_config(self.tokenizer, module, self.cfg.max_new_tokens, self.cfg.generation_temperature)

        def draw(input_ids, attention_mask):
            config.max_new_tokens = self.budget(input_ids.shape[1])
            out = generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config)
            return [ends(new, config.eos_token_id) for new in out[:, input_ids.shape[1]:].tolist()]

        try:
            with generation as generate, drawn_by(module, config):
                yield draw
        finally:
            if was_training:
                trained.train()

    @torch.no_grad()
    def sample(self, batch: dict, model) -> dict:
        """`batch` (collated, on the device) with each response replaced by the student's own."""
        device = batch["input_ids"].device
        prompts = [ids[:n].tolist() for ids, n in zip(batch["input_ids"], batch["prompt_len"].tolist())]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        # Left-padded, as decoder-only generation wants.
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        with self._generating(model) as draw:
            answers = draw(input_ids, attention_mask)
        examples = [{"input_ids": prompt + answer, "prompt_len": len(prompt), "index": index, "ended": ended}
                    for prompt, (answer, ended), index in zip(prompts, answers, batch["index"].tolist())]
        rebuilt = self.objective.with_answers(batch, examples)
        return {k: v.to(device) for k, v in rebuilt.items()}


def _summary(rows: list) -> dict:
    """sample_length and sample_eos of `_answer_and_score` rows."""
    return {"sample_length": sum(len(r[2]) for r in rows) / len(rows), "sample_eos": sum(r[3] for r in rows) / len(rows)}


def collapse(metrics: dict) -> str:
    """A warning ('' if none) when the student's answers end with EOS under half as often as the
    teacher's own to the same prompts: on-policy reverse KL's collapse, whose answers run on to
    --max_new_tokens (an answer without EOS fills it, so pinned lengths show here too) while
    their teacher NLL looks best."""
    own, student = metrics.get("eval_teacher_sample_eos"), metrics.get("eval_sample_eos")
    if own is None or student is None or not student < own / 2:
        return ""
    return (f"the student's answers end with EOS {100 * student:.0f}% of the time, the teacher's own {100 * own:.0f}% (mean length "
            f"{metrics['eval_sample_length']:.1f} tokens, the teacher's {metrics['eval_teacher_sample_length']:.1f}): they run on to "
            "--max_new_tokens, however good their teacher NLL looks; try a warmed-up (fine-tuned) student first, --divergence "
            "forward_kl, or a lower --on_policy_fraction")


def check_data(cfg, train_dataset) -> None:
    """With λ > 0 the training data must hold prompts (instruction records) for the student to answer."""
    if cfg.on_policy_fraction > 0 and not any(getattr(train_dataset, "prompt_lens", None) or ()):
        raise InputError(f"--on_policy_fraction {cfg.on_policy_fraction:g}: --data_file holds no prompts for the student to answer "
                         "(give instruction records: instruction, input, output)")


def held_out_prompts(cfg, eval_dataset) -> list:
    """The first --eval_generate prompts of the held-out data (token ids), for sample_metrics."""
    if not cfg.eval_generate:
        return []
    prompts = [item["input_ids"][: item["prompt_len"]] for item in (eval_dataset[i] for i in range(len(eval_dataset)))
               if item.get("prompt_len")][: cfg.eval_generate]
    if not prompts:
        raise InputError(f"--eval_generate {cfg.eval_generate}: the held-out data holds no prompts (instruction records)")
    return prompts


def check_config(cfg, need) -> None:
    """config.validate's checks of --on_policy_fraction and its companions (`need(cond, message)`)."""
    need(0 <= cfg.on_policy_fraction <= 1, f"--on_policy_fraction must be in [0, 1] (got {cfg.on_policy_fraction})")
    need(cfg.generation_temperature > 0 and cfg.max_new_tokens >= 1,
         f"--generation_temperature must be > 0 and --max_new_tokens >= 1 (got {cfg.generation_temperature}, {cfg.max_new_tokens})")
    if cfg.on_policy_fraction > 0:
        flag = f"--on_policy_fraction {cfg.on_policy_fraction:g}"
        need(cfg.objective == "clm", f"{flag}: only for --objective clm (instruction data: the student answers its prompts)")
        need(cfg.teacher_logits is None, f"{flag}: the teacher must score the student's new samples, which a --teacher_logits "
             "cache cannot; give --teacher_name or --teacher_url")
        need(bool(cfg.teacher_name or cfg.teacher_url or cfg.teachers) and cfg.alpha_ce > 0,
             f"{flag}: needs --teacher_name (or --teacher_url, --teachers) and --alpha_ce > 0 (the student learns its own "
             "samples from the teacher)")
        need(not cfg.uses_hidden_states, f"{flag}: not with --alpha_hidden_mse/--alpha_cos (hidden states of sampled text)")
    if cfg.eval_generate:
        flag = f"--eval_generate {cfg.eval_generate}"
        need(cfg.eval_generate > 0 and cfg.objective == "clm" and bool(cfg.teacher_name or cfg.teacher_url),
             f"{flag}: needs --objective clm and a --teacher_name (or --teacher_url) to score the answers (a positive count)")
        need(bool(cfg.eval_file or cfg.validation_split), f"{flag}: needs held-out prompts (--eval_file or --validation_split)")
