"""On-policy distillation (GKD, Agarwal et al. 2024): on a share λ of the optimizer steps
(--on_policy_fraction) the student answers the step's prompts itself and learns from the
teacher's distribution at every token of its own answers.

Off-policy KD trains the student on prefixes it may never produce (the dataset's responses);
on its own samples it learns where its own mistakes lead. Per step:
- a draw from a generator seeded with (--seed, step) decides, the same on every process and
  after a resume, without touching the training RNG (λ = 0 is today's run, bit for bit);
- on a sampled step each micro-batch's prompts (the tokens before `prompt_len`) are answered by
  the student in eval mode (`generate`, pure sampling at --generation_temperature, at most
  --max_new_tokens and --max_seq_length), each answer kept through its first EOS;
- the batch is rebuilt from prompt + answer, so the divergence covers exactly the sampled
  tokens through EOS (the prompt and what follows EOS are not targets), and the hard-label
  loss is weighted 0 on that step: the student's own tokens are no labels.
The default --divergence is reverse KL when λ > 0 (config.py): on its own samples the student is
pushed away from what the teacher finds unlikely (mode-seeking), as GKD, MiniLLM and on-policy
distillation recipes do. Under fsdp every rank generates in step (parallel.FSDPStrategy.generation).
Limits: instruction data (prompts), a live teacher (not a logits cache), no hidden-state losses.
"""

import contextlib
import math

import torch

from distillation.distributed import all_gather_objects, item_seed
from distillation.errors import InputError


class OnPolicy:
    def __init__(self, cfg, objective, tokenizer, strategy):
        self.cfg, self.objective, self.tokenizer, self.strategy = cfg, objective, tokenizer, strategy

    def sampled(self, step: int) -> bool:
        """Is optimizer step `step` (0-based) on the student's own samples?"""
        if self.cfg.on_policy_fraction <= 0:
            return False
        generator = torch.Generator().manual_seed(item_seed(self.cfg.seed, step))
        return bool(torch.rand((), generator=generator) < self.cfg.on_policy_fraction)

    @torch.no_grad()
    def sample_metrics(self, prompts: list, model, teacher, env) -> tuple:
        """--eval_generate: the student (in `model`, the StudentWithProjection trained) answers each
        prompt (draws seeded by (--seed, prompt), the training RNG untouched). Returns the metrics
        (eval_teacher_nll: the teacher's mean NLL per answer token, eval_sample_length: the mean
        answer length, eval_sample_eos: the share ending in EOS) and the answers, one dict each, to
        read beside them. The prompts are split over the processes and gathered in order: the same
        at any count. Every rank runs as many generations and teacher forwards (a short rank repeats
        its first prompt and drops the result): fsdp's collectives."""
        mine, rounds = [], math.ceil(len(prompts) / env.world_size)
        indices = list(range(env.rank, len(prompts), env.world_size))
        with torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []), self._generating(model) as generate:
            for n, i in enumerate(indices + indices[:1] * (rounds - len(indices))):
                torch.manual_seed(item_seed(self.cfg.seed, i))
                ids = torch.tensor([prompts[i]], device=env.device)
                (answer, ended), = self._answers(generate, ids, torch.ones_like(ids))
                sequence = torch.tensor([prompts[i] + answer], device=env.device)
                log_p = teacher(input_ids=sequence).logits[0, ids.shape[1] - 1 : -1, : self.objective.columns].float().log_softmax(-1)
                nll = -log_p.gather(-1, sequence[0, ids.shape[1]:, None]).sum().item()
                if n < len(indices):
                    mine.append((i, nll, answer, ended))
        rows = sorted(row for part in all_gather_objects(mine, env) for row in part)
        tokens = sum(len(r[2]) for r in rows)
        metrics = {"eval_teacher_nll": sum(r[1] for r in rows) / max(tokens, 1), "eval_sample_length": tokens / len(rows),
                   "eval_sample_eos": sum(r[3] for r in rows) / len(rows)}
        answers = [{"prompt_index": i, "prompt": self.tokenizer.decode(prompts[i]), "answer": self.tokenizer.decode(answer),
                    "ended_with_eos": ended, "teacher_nll": nll / max(len(answer), 1)} for i, nll, answer, ended in rows]
        return metrics, answers

    @contextlib.contextmanager
    def _generating(self, model):
        """The student's `generate` (parallel.py: how the processes take part), in eval mode."""
        was_training = model.training
        model.eval()
        try:
            with self.strategy.generation(model) as generate:
                yield generate
        finally:
            model.train(was_training)

    def _answers(self, generate, input_ids, attention_mask) -> list:
        """[(answer ids through the first EOS, whether it ended with EOS)] of each left-padded prompt
        row: pure sampling at --generation_temperature, at most --max_new_tokens within
        --max_seq_length."""
        width, eos = input_ids.shape[1], self.tokenizer.eos_token_id
        out = generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True, top_k=0, top_p=1.0,
                       temperature=self.cfg.generation_temperature, pad_token_id=self.tokenizer.pad_token_id, eos_token_id=eos,
                       max_new_tokens=max(1, min(self.cfg.max_new_tokens, self.cfg.max_seq_length - width)))
        return [(new[: new.index(eos) + 1], True) if eos in new else (new, False) for new in out[:, width:].tolist()]

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
        with self._generating(model) as generate:
            answers = self._answers(generate, input_ids, attention_mask)
        examples = [{"input_ids": prompt + answer, "prompt_len": len(prompt), "index": index}
                    for prompt, (answer, _), index in zip(prompts, answers, batch["index"].tolist())]
        rebuilt = self.objective.collate(examples)
        return {k: v.to(device) for k, v in rebuilt.items()}


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
             "cache cannot; give --teacher_name")
        need(bool(cfg.teacher_name) and cfg.alpha_ce > 0, f"{flag}: needs --teacher_name and --alpha_ce > 0 (the student learns "
             "its own samples from the teacher)")
        need(not cfg.uses_hidden_states, f"{flag}: not with --alpha_hidden_mse/--alpha_cos (hidden states of sampled text)")
    if cfg.eval_generate:
        flag = f"--eval_generate {cfg.eval_generate}"
        need(cfg.eval_generate > 0 and cfg.objective == "clm" and bool(cfg.teacher_name),
             f"{flag}: needs --objective clm and a --teacher_name to score the answers (a positive count)")
        need(bool(cfg.eval_file or cfg.validation_split), f"{flag}: needs held-out prompts (--eval_file or --validation_split)")
