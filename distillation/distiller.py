"""The Distiller: trains a student on a teacher's soft targets, whatever the objective.

Reads top to bottom: __init__ builds the trained module, optimizer, schedule and mixed
precision; `train` runs epochs of optimizer steps; `_step` is one optimizer step over
`gradient_accumulation_steps` micro-batches; `_loss_terms` the losses of one micro-batch.
What varies lives in parts it calls: the objective (data, rows to distil, metrics), the
teacher (its forward pass or its cached logits), evaluation, the run log and the saved folders.

Features: soft-target KL + hard-label loss + logit MSE + hidden MSE/cosine; length-grouped
dynamic batches; gradient accumulation with every loss normalised by the global row/token
count of the step; DDP under torchrun (`no_sync` while accumulating, teacher never wrapped) or
FSDP2 (--strategy fsdp, distillation/parallel.py); torch.amp bf16/fp16; exact mid-epoch resume, at
another world size too (sharded checkpoints, distillation/checkpoint.py); SIGTERM/SIGINT save a checkpoint; a non-finite
loss on any rank stops every rank before the weights change; best/ and periodic folders,
early stopping. Intervals named `*_interval` count micro-batches (the reference's iterations),
`max_steps` and `save_steps` count optimizer steps.
Limits: one teacher; under ddp (or fsdp with --replicate_teacher) it must fit on each device.
"""

import functools
import json
import math
import os
import signal
import time

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from distillation import checkpoint as ckpt
from distillation.data.grouped_batch_sampler import epoch_batches
from distillation.distributed import all_gather_objects, all_reduce_sum
from distillation.errors import InputError, TeacherUnavailable, TrainingStopped
from distillation.evaluation import evaluate
from distillation.hidden import StudentWithProjection, build_projection, parse_layer_map
from distillation.lora import student_parameters
from distillation.losses import hidden_cosine, hidden_mse
from distillation.models import autocast_dtype, freeze_embeddings
from distillation.on_policy import OnPolicy, held_out_prompts
from distillation.reporting import RunLog, Window, as_logged, eval_line, memory_mb, run_header, run_summary
from distillation.saving import ModelFolders
from distillation.token_losses import token_losses_for

# loss term -> (config weight, the count it is normalised by)
TERMS = {"ce": ("alpha_ce", "rows"), "task": ("alpha_task", "task"), "mse": ("alpha_mse", "rows"),
         "hidden_mse": ("alpha_hidden_mse", "tokens"), "cos": ("alpha_cos", "tokens")}
COUNTS = ("task", "rows", "tokens")


class Distiller:
    def __init__(self, cfg, objective, student, teacher, tokenizer, train_dataset, eval_dataset, env, strategy):
        self.cfg, self.objective, self.env, self.strategy = cfg, objective, env, strategy
        self.tokenizer, self.train_dataset, self.eval_dataset = tokenizer, train_dataset, eval_dataset
        self.device = env.device
        self.terms = [t for t, (alpha, _) in TERMS.items() if getattr(cfg, alpha) > 0]
        self.teacher = teacher  # teachers/: local or cached, one interface

        # Hidden-state losses: which layers meet, and a projection when widths differ.
        self.layer_pairs, projection = [], None
        if cfg.uses_hidden_states:
            teacher_config = teacher.model.config
            self.layer_pairs = parse_layer_map(cfg.layer_map, student.config.num_hidden_layers, teacher_config.num_hidden_layers)
            projection = build_projection(student.config, teacher_config, cfg.hidden_projection)
        self.model = StudentWithProjection(student, projection, [s for s, _ in self.layer_pairs])
        freeze_embeddings(student, cfg.freeze_pos_embs, cfg.freeze_token_type_embds)
        if cfg.gradient_checkpointing:
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.train_model = strategy.wrap(self.model)  # on the device: DDP, or self.model sharded in place (fsdp)
        self.forward_model = torch.compile(self.train_model) if cfg.compile else self.train_model

        # Schedule: an optimizer step is `gradient_accumulation_steps` micro-batches.
        self.micro_per_epoch = len(self._batches(epoch=0))
        if self.micro_per_epoch < cfg.gradient_accumulation_steps:
            raise InputError(
                f"--gradient_accumulation_steps {cfg.gradient_accumulation_steps}: an epoch of --data_file has "
                f"{self.micro_per_epoch} micro-batches of --batch_size {cfg.batch_size} per process, less than one optimizer "
                f"step; lower --gradient_accumulation_steps to at most {self.micro_per_epoch}"
            )
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.gradient_accumulation_steps)
        if cfg.max_steps:
            self.total_steps = cfg.max_steps
            self.n_epoch = math.ceil(cfg.max_steps / self.steps_per_epoch)
        else:
            self.total_steps, self.n_epoch = cfg.n_epoch * self.steps_per_epoch, cfg.n_epoch
        # fused: one kernel over all parameters. torch's default on CPU is a per-tensor loop,
        # ~7x slower (64 vs 9 ms a step for a 17M-parameter MiniLM student, ~17% of the step).
        self.optimizer = torch.optim.AdamW(
            self._param_groups(), lr=cfg.learning_rate, betas=(0.9, 0.98), eps=cfg.adam_epsilon,
            fused=self.device.type in ("cpu", "cuda"),
        )
        self.scheduler = get_linear_schedule_with_warmup(
            self.optimizer, math.ceil(cfg.warmup_prop * self.total_steps), self.total_steps
        )
        # Dense, chunked or sparse. The chunked losses' check runs the wrapped student: after the
        # optimizer took its parameters (a forward leaves FSDP's root weights gathered until backward).
        self.token_losses = token_losses_for(
            cfg, objective, student, self.teacher, lambda inputs, logits: self.train_model(inputs, logits=logits)[0])
        self.model.token_losses = self.token_losses
        amp_dtype = autocast_dtype(cfg.precision)
        self.autocast = lambda: torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")

        self.on_policy = OnPolicy(cfg, objective, tokenizer, strategy)  # --on_policy_fraction: steps on the student's own samples
        self.eval_prompts = held_out_prompts(cfg, eval_dataset) if eval_dataset is not None else []
        self.folders = ModelFolders(cfg, objective, tokenizer, self.teacher.parameters(), env.is_main, strategy.full_state)
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.skipped_steps = 0  # fp16: steps the GradScaler skipped for inf/NaN gradients
        self.stop_signal = None
        self.log = None  # opened by open_log() once the run folder is ready
        self.history = []  # (examples, tokens, seconds) per log interval, for the summary
        self.last_eval, self.last_eval_step = {}, None

    # --- setup helpers ---------------------------------------------------------------------
    def _param_groups(self):
        """No weight decay on biases and norm weights (any 1-D tensor), in every family."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        return [{"params": decay, "weight_decay": self.cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def _batches(self, epoch):
        return epoch_batches(
            self.train_dataset.lengths, self.cfg.batch_size, self.cfg.seed, epoch,
            self.cfg.group_by_size, True, self.env.rank, self.env.world_size,
        )

    @property
    def iterations(self) -> int:
        """Micro-batches done per process since the start (the reference's n_total_iter)."""
        return self.epoch * self.micro_per_epoch + self.batch_in_epoch

    @property
    def epoch_progress(self) -> float:
        return self.epoch + self.batch_in_epoch / self.micro_per_epoch

    # --- training ----------------------------------------------------------------------------
    def open_log(self, fresh_weights=()) -> None:
        self.log = RunLog(self.cfg.dump_path, self.env.is_main)
        self.log.say(*run_header(self, fresh_weights))

    def train(self) -> dict:
        """Run to the end (or to a stop signal, or an early stop); returns the summary."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.env.is_main,
                   desc="distil" if "ce" in self.terms or self.layer_pairs else "train", unit="step")
        start, window, stop_early = time.time(), Window(), False
        try:
            while not stop_early and self.epoch < self.n_epoch and self.step < self.total_steps:
                batches = self._batches(self.epoch)[self.batch_in_epoch :]
                loader = DataLoader(
                    self.train_dataset, batch_sampler=batches, collate_fn=self.objective.collate,
                    num_workers=self.cfg.num_workers, generator=torch.Generator(),
                )
                micro_batches = iter(loader)
                starts = range(0, len(batches), self.cfg.gradient_accumulation_steps)
                draw = lambda first: [next(micro_batches) for _ in batches[first : first + self.cfg.gradient_accumulation_steps]]  # noqa: E731
                upcoming = draw(0) if starts else None
                for n, first in enumerate(starts):
                    # the next step's micro-batches drawn one step ahead: a teacher that asks elsewhere asks early
                    group, upcoming = upcoming, draw(starts[n + 1]) if n + 1 < len(starts) else None
                    if not self._teacher_ready(group, upcoming):
                        self._save_checkpoint()
                        return self._finish(start, interrupted=True)
                    before = self.iterations
                    window.add(as_logged(self._step(group), TERMS))
                    self.step += 1
                    self.batch_in_epoch += len(group)
                    bar.update(1)
                    bar.set_postfix(loss=f"{window.last_loss:.4f}", ex_s=f"{window.examples_per_s():.1f}")

                    def passed(every):  # did this step cross a multiple of `every` micro-batches?
                        return every > 0 and self.iterations // every > before // every

                    if passed(self.cfg.log_interval):
                        self._log_train(window)
                    if passed(self.cfg.eval_interval) and self.eval_dataset is not None:
                        stop_early = self._evaluate()
                    self.folders.periodic(self.model, self.last_eval, self.step, self.epoch_progress, epoch_end=False)
                    if self.stop_signal is not None:
                        self._save_checkpoint()
                        return self._finish(start, interrupted=True)
                    if passed(self.cfg.checkpoint_interval):
                        self._save_checkpoint()
                    if stop_early or self.step >= self.total_steps:
                        break
                epoch_end = self.batch_in_epoch >= self.micro_per_epoch
                if epoch_end:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    self.teacher.end_epoch(self.env)
                self._log_train(window)
                if self.eval_dataset is not None and self.last_eval_step != self.step:
                    stop_early = self._evaluate()
                if epoch_end:
                    self.folders.periodic(self.model, self.last_eval, self.step, self.epoch_progress, epoch_end=True)
                self._save_checkpoint()
        finally:
            bar.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        return self._finish(start, interrupted=False, stopped_early=stop_early)

    def _teacher_ready(self, group, upcoming) -> bool:
        """The teacher's part of the step is ready on every rank, or it stopped answering on one."""
        failure = None
        try:
            self.teacher.prepare(group, upcoming)
        except TeacherUnavailable as err:
            failure = str(err)
        if all_reduce_sum(torch.tensor([float(failure is not None)], device=self.device), self.env).item() == 0:
            return True
        self.log.say(f"stopped before step {self.step + 1}: the teacher is unavailable ({failure or 'on another process'}); the "
                     f"checkpoint holds step {self.step}: once the teacher answers again, rerun with --resume")
        return False

    def _on_signal(self, signum, frame):
        self.stop_signal = signum  # acted on at the end of the current step, on every rank

    def _step(self, group) -> dict:
        """One optimizer step over the micro-batches of `group`. Returns the step's loss terms."""
        group = [self.objective.prepare_batch(_to(b, self.device)) for b in group]
        sampled = self.on_policy.sampled(self.step)  # the same on every rank
        if sampled:  # the student answers the prompts itself; its own tokens are no hard labels
            group = [self.on_policy.sample(b, self.model) for b in group]
        alphas = {t: 0.0 if sampled and t == "task" else getattr(self.cfg, TERMS[t][0]) for t in self.terms}
        counts = [self.objective.counts(b) for b in group]
        counts = torch.stack([torch.stack([c[k].to(self.device).float() for k in COUNTS]) for c in counts]).sum(0)
        counts = all_reduce_sum(counts, self.env)
        norm = dict(zip(COUNTS, counts.clamp(min=1)))
        sums = torch.zeros(len(self.terms), device=self.device)
        self.model.train()
        for i, batch in enumerate(group):
            with self.strategy.gradient_sync(self.train_model, sync=i == len(group) - 1):
                terms = self._loss_terms(batch)
                loss = sum(alphas[t] * terms[t] / norm[TERMS[t][1]] for t in self.terms)
                self.scaler.scale(loss * self.env.world_size).backward()  # DDP and FSDP average grads over ranks
            sums += torch.stack([terms[t].detach() for t in self.terms])
        # One collective: the step's loss terms, its size, a non-finite flag and stop requests.
        local = [sum(b["input_ids"].shape[0] for b in group), sum(int(b["attention_mask"].sum()) for b in group),
                 float(not torch.isfinite(sums).all()), float(self.stop_signal is not None)]
        reduced = all_reduce_sum(torch.cat([sums, torch.tensor(local, device=self.device, dtype=sums.dtype)]), self.env)
        if reduced[-2] > 0:
            self._stop("non-finite loss")
        if reduced[-1] > 0 and self.stop_signal is None:
            self.stop_signal = signal.SIGTERM  # another rank was told to stop: stop together
        lr = self.scheduler.get_last_lr()[0]
        self.scaler.unscale_(self.optimizer)
        # Gradients are the same on every rank (reduced by DDP; FSDP's norm is a collective), so
        # every rank takes the same decision. fp16's GradScaler skips an overflowing step itself
        # and lowers its scale; in fp32/bf16 a NaN/inf gradient is no overflow but a fault.
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        if not self.scaler.is_enabled() and not torch.isfinite(grad_norm).item():
            self._stop("non-finite gradient norm under a finite loss")
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if scale is not None and self.scaler.get_scale() < scale:
            self.skipped_steps += 1  # the scaler found inf/NaN gradients and did not step
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        values = {t: (reduced[i] / norm[TERMS[t][1]]).item() for i, t in enumerate(self.terms)}
        values["loss"] = sum(alphas[t] * values[t] for t in self.terms)
        if counts[COUNTS.index("task")] == 0:  # a step without task targets has no task loss (not 0)
            values.pop("task", None)
        values["on_policy"] = float(sampled)
        values["examples"], values["tokens"], values["lr"] = reduced[-4].item(), reduced[-3].item(), lr
        return values

    def _stop(self, what: str):
        """Every rank stops before this step's update: the weights and checkpoints stay finite."""
        saved = ckpt.find_checkpoint(self.cfg.dump_path)
        where = f"the last good checkpoint is {saved} (--resume continues from it)" if saved else "no checkpoint was written yet"
        raise TrainingStopped(f"rank {self.env.rank}: {what} at step {self.step + 1} (epoch {self.epoch}); the weights of that "
                              f"step were not applied and {where}. Try a lower --learning_rate or --precision bf16/fp32")

    def _loss_terms(self, batch) -> dict:
        """Loss sums of one micro-batch (not yet normalised)."""
        with_hidden, logits = bool(self.layer_pairs), self.token_losses.wants_logits
        with self.autocast():
            # A teacher given for comparison only (no loss needs it) is never run in training.
            needs_teacher = with_hidden or "ce" in self.terms or "mse" in self.terms
            t_out, t_hidden = self.teacher.outputs(batch, with_hidden, logits=logits) if needs_teacher else (None, None)
            terms, s_hidden = self.forward_model(self.objective.model_inputs(batch), with_hidden, logits, self.terms, t_out, batch)
        if with_hidden:
            mask = self.objective.hidden_mask(batch)
            pairs = [(s_hidden[i], t_hidden[t]) for i, (_, t) in enumerate(self.layer_pairs)]
            # Averaged over layer pairs so the weight does not grow with the number of layers.
            for name, fn in (("hidden_mse", hidden_mse), ("cos", hidden_cosine)):
                if name in self.terms:
                    terms[name] = sum(fn(s, t, mask) for s, t in pairs) / len(pairs)
        return terms

    # --- evaluation, logging ---------------------------------------------------------------------
    def _evaluate(self) -> bool:
        """Evaluate, report, keep best/; returns whether early stopping says stop."""
        metrics = evaluate(self.model, self.teacher, self.objective, self.eval_dataset, self.cfg.eval_batch_size,
                           self.env, self.autocast, self.cfg.seed)
        if self.eval_prompts:  # --eval_generate: what the teacher thinks of the student's own answers
            with self.autocast():
                generated, answers = self.on_policy.sample_metrics(self.eval_prompts, self.model, self.teacher, self.env)
            metrics.update(generated)
            self.log.answers(self.step, answers)
        improved, stop = self.folders.after_eval(self.model, metrics, self.step, self.epoch_progress)
        self.last_eval, self.last_eval_step = metrics, self.step
        self.log.write({"step": self.step, "epoch": self.epoch_progress, **metrics}, "eval")
        self.log.say(eval_line(self.step, self.epoch_progress, metrics, improved))
        if stop:
            best = self.folders.best
            self.log.say(f"early stop: no better {self.cfg.save_best_metric} in {self.cfg.early_stopping_patience} evaluations "
                         f"(best {best['value']:.4g} at step {best['step']})")
        return stop

    def _log_train(self, window):
        record = window.flush()
        if record is None:
            return
        self.history.append((record["examples"], record["tokens"], record["seconds"]))
        record = {
            "step": self.step, "epoch": self.epoch_progress,
            "loss": record["loss"],
            **{f"loss_{self.objective.task_loss_name if t == 'task' else t}{kind}": record[t + kind]
               for kind in ("", "_on_policy") for t in self.terms if t + kind in record},
            "lr": record["lr"],
            **({"on_policy_share": record["on_policy"]} if self.cfg.on_policy_fraction else {}),
            "examples_per_s": record["examples"] / record["seconds"],
            "tokens_per_s": record["tokens"] / record["seconds"],
            "memory_mb": memory_mb(self.device),
        }
        self.log.write(record, "train")

    # --- checkpoints, the end ----------------------------------------------------------------------
    @functools.cached_property
    def inputs_fingerprint(self) -> dict:  # hashes the data: only once a checkpoint is written or read
        return ckpt.inputs_fingerprint(self.cfg, self.train_dataset, self.eval_dataset, self.teacher)

    def fingerprint(self) -> dict:
        return ckpt.fingerprint(self.cfg, self.model, self.env.world_size, self.total_steps, self.inputs_fingerprint)

    def trainer_state(self) -> dict:
        """All but the weights and AdamW moments (those are DCP shards). The data position is in
        global examples, so that another world size with the same global batch resumes it."""
        examples = self.batch_in_epoch * self.env.world_size * self.cfg.batch_size
        return {
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": {"step": self.step, "epoch": self.epoch, "examples_in_epoch": examples, "world_size": self.env.world_size,
                         "skipped_steps": self.skipped_steps},
            "folders": self.folders.state_dict(),
            "last_eval": {"step": self.last_eval_step, "metrics": self.last_eval},
            "fingerprint": self.fingerprint(),
        }

    def load_trainer_state(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        progress = state["progress"]
        self.step, self.epoch, self.skipped_steps = progress["step"], progress["epoch"], progress["skipped_steps"]
        self.batch_in_epoch = progress["examples_in_epoch"] // (self.env.world_size * self.cfg.batch_size)
        self.folders.load_state_dict(state["folders"])
        self.last_eval_step, self.last_eval = state["last_eval"]["step"], state["last_eval"]["metrics"]
        if progress["world_size"] == self.env.world_size:
            ckpt.set_rng_state(state["rng"][self.env.rank])
        else:  # other ranks, other streams: dropout and MLM masks continue from fresh seeds
            ckpt.reseed(self.cfg.seed, self.step, self.env.rank)

    def _save_checkpoint(self):
        rng = all_gather_objects(ckpt.rng_state(), self.env)  # every rank's generators
        state = {**self.trainer_state(), "rng": rng}
        ckpt.save_checkpoint(self.cfg.dump_path, self.model, self.optimizer, state, self.env)

    def _finish(self, start, interrupted, stopped_early=False) -> dict:
        examples, tokens, seconds = (sum(h[i] for h in self.history) for i in range(3))
        best = self.folders.best
        summary = {
            "step": self.step, "epoch": self.epoch_progress, "interrupted": interrupted, "stopped_early": stopped_early,
            "wall_time_s": time.time() - start, "skipped_steps": self.skipped_steps,
            "examples_per_s": examples / seconds if seconds else None,
            "tokens_per_s": tokens / seconds if seconds else None,
            "student_parameters": student_parameters(self.model.student),
            "teacher_parameters": self.teacher.parameters(),
            "final": None if interrupted else os.path.join(self.cfg.dump_path, "final"),
            "best": None if best["step"] is None else {"metric": self.cfg.save_best_metric, **best,
                                                       "folder": os.path.join(self.cfg.dump_path, "best")},
            **self.last_eval,
            **self.teacher.report(self.env),
        }
        if not interrupted:
            self.folders.save("final", self.model, self.last_eval if self.last_eval_step == self.step else {},
                              self.step, self.epoch_progress, "the weights at the end of the run")
        if self.env.is_main:
            with open(os.path.join(self.cfg.dump_path, "summary.json"), "w") as f:
                json.dump(summary, f, indent=2)
        self.log.say(*run_summary(self, summary))
        self.log.close()
        return summary


def _to(batch, device):
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
