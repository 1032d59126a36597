"""The checks of a whole config, across options (DistillConfig.validate): each refusal one line
naming the flag to change. The checks of one option's name and type are config_types.py's."""

import math

from distillation.errors import InputError
from distillation.losses import DIVERGENCES
from distillation.on_policy import check_config as check_on_policy

OBJECTIVE_NAMES = ("sequence_classification", "mlm", "clm")


def check_served(cfg, need) -> None:
    """--teacher_url: what a teacher that answers with top-k log-probabilities can teach."""
    need(cfg.teacher_name is None, "give --teacher_name or --teacher_url, not both (a served teacher replaces the local one)")
    need(cfg.objective == "clm", f"--teacher_url: --objective {cfg.objective} needs the teacher's logits of its own head; a "
         "served teacher returns next-token log-probabilities (clm) only")
    unsupported = [f for f in ("alpha_mse", "alpha_hidden_mse", "alpha_cos", "loss_chunk_rows")
                   if getattr(cfg, f)] + (["cache_teacher_logits"] if cfg.cache_teacher_logits else [])
    need(not unsupported, f"--teacher_url: --{unsupported[0] if unsupported else ''} is not available with a served teacher "
         "(it needs the teacher's full logits or hidden states); drop it")
    need(cfg.teacher_top_k >= 1 and cfg.teacher_timeout > 0 and cfg.teacher_retries >= 0,
         f"--teacher_top_k must be >= 1, --teacher_timeout > 0 and --teacher_retries >= 0 (got {cfg.teacher_top_k}, "
         f"{cfg.teacher_timeout:g}, {cfg.teacher_retries})")


def check_several(cfg, need) -> None:
    """--teachers: what several teachers can teach (teachers/several.py)."""
    need(cfg.teacher_name is None and cfg.teacher_logits is None and cfg.teacher_url is None,
         "give --teachers or one of --teacher_name, --teacher_logits and --teacher_url (the file lists every teacher)")
    unsupported = [f for f in ("alpha_mse", "alpha_hidden_mse", "alpha_cos", "eval_generate") if getattr(cfg, f)]
    need(not unsupported, f"--teachers: --{unsupported[0] if unsupported else ''} is not available with several teachers (no one "
         "teacher's logits, hidden states or answers to compare with); drop it")


def check_cross(cfg, need=None) -> None:
    """A teacher with another tokenizer (--teacher_tokenizer, or a --student_name with its own):
    what it can teach (objectives/clm_cross.py). `need` as validate's; None: raise directly."""
    def raise_unless(cond, msg):
        if not cond:
            raise InputError(msg)

    need = need or raise_unless
    why = "a teacher with another tokenizer (--teacher_tokenizer, or a --student_name with a tokenizer of its own)"
    need(cfg.objective == "clm", f"{why}: --objective {cfg.objective} is not supported; it is for clm")
    if cfg.teacher_tokenizer is not None:
        need(cfg.teacher_logits is None, "--teacher_tokenizer: a cache (--teacher_logits) holds its teacher's tokenizer; drop it")
    need(cfg.teachers is None, f"{why}: --teachers is not supported with it yet; give one teacher (--teacher_name, --teacher_url "
         "or --teacher_logits)")
    need(cfg.teacher_url is None or cfg.teacher_tokenizer is not None,
         f"{why}: --teacher_url needs --teacher_tokenizer, the served model's tokenizer (hub name or folder), to read the text as it does")
    need(any(getattr(cfg, f) is not None for f in ("teacher_name", "teacher_url", "teacher_logits")),
         f"{why}: give the teacher (--teacher_name, --teacher_url or --teacher_logits)")
    unsupported = [f for f in ("alpha_mse", "alpha_hidden_mse", "alpha_cos", "loss_chunk_rows", "eval_generate") if getattr(cfg, f)]
    need(not unsupported, f"{why}: --{unsupported[0] if unsupported else ''} is not supported with it (the two models' "
         "positions and vocabularies differ); drop it")


def validate(cfg) -> None:
    """Raise InputError on the first option that does not fit the others."""
    def need(cond, msg):
        if not cond:
            raise InputError(msg)

    need(cfg.objective in OBJECTIVE_NAMES, f"--objective: unknown objective '{cfg.objective}' (choose from {', '.join(OBJECTIVE_NAMES)})")
    need(cfg.dump_path, "--dump_path is required")
    need(cfg.data_file, "--data_file is required")
    for name in ("temperature", "learning_rate", "adam_epsilon", "max_grad_norm", "ddp_timeout_minutes", "initializer_range"):
        value = getattr(cfg, name)
        need(math.isfinite(value) and value > 0, f"--{name} must be a finite number > 0 (got {value})")
    need(cfg.divergence in DIVERGENCES, f"--divergence: unknown '{cfg.divergence}' (choose from {', '.join(DIVERGENCES)})")
    if cfg.divergence_beta is not None:
        need(DIVERGENCES[cfg.divergence][1] is not None,
             f"--divergence_beta {cfg.divergence_beta}: --divergence {cfg.divergence} has no β (jsd and skew_kl do)")
        beta, jsd = cfg.divergence_beta, cfg.divergence == "jsd"
        # skew_kl at β = 1 compares the teacher with itself: identically 0.
        need(0 <= beta <= 1 if jsd else 0 <= beta < 1,
             f"--divergence_beta must be in {'[0, 1]' if jsd else '[0, 1)'} for --divergence {cfg.divergence} (got {beta})")
    check_on_policy(cfg, need)
    need(cfg.loss_chunk_rows >= 0, f"--loss_chunk_rows must be >= 0 (got {cfg.loss_chunk_rows})")
    need(not cfg.loss_chunk_rows or cfg.objective == "clm",
         f"--loss_chunk_rows {cfg.loss_chunk_rows}: chunked losses are implemented for clm only (mlm distils other rows than "
         f"it labels; classification logits are small); use --loss_chunk_rows 0")
    if cfg.strategy == "fsdp":
        need(cfg.precision != "fp16", "--precision fp16: not with --strategy fsdp (its loss scaling would have to agree on "
             "overflow across the shards); use --precision bf16")
    else:
        need(not cfg.replicate_teacher, "--replicate_teacher: only with --strategy fsdp (ddp always replicates the teacher)")
    alphas = {n: getattr(cfg, n) for n in ("alpha_ce", "alpha_task", "alpha_mse", "alpha_hidden_mse", "alpha_cos")}
    for name, a in alphas.items():
        need(math.isfinite(a) and a >= 0, f"--{name} must be a finite number >= 0 (got {a})")
    need(sum(alphas.values()) > 0, f"--{', --'.join(alphas)} are all 0: nothing to train")
    need(cfg.teacher_column is None or cfg.teachers is not None, "--teacher_column routes examples to the teachers of --teachers: give it")
    if cfg.teacher_tokenizer is not None:
        check_cross(cfg, need)
    if cfg.teachers is not None:
        check_several(cfg, need)
    elif cfg.teacher_logits is not None:
        need(cfg.teacher_name is None and cfg.teacher_url is None,
             "give one of --teacher_name, --teacher_logits and --teacher_url (a cache replaces the teacher)")
        need(cfg.objective != "mlm", "--teacher_logits: mlm re-masks every step, so its teacher logits cannot be cached")
        unsupported = [f for f in ("alpha_hidden_mse", "alpha_cos", "loss_chunk_rows", "validation_split")
                       if getattr(cfg, f)] + (["cache_teacher_logits"] if cfg.cache_teacher_logits else [])
        need(not unsupported, f"--teacher_logits: --{unsupported[0] if unsupported else ''} needs the teacher's full logits "
             "or hidden states (or, for --validation_split, the cache's example order): drop it")
    elif cfg.teacher_url is not None:
        check_served(cfg, need)
    elif cfg.teacher_name is None:
        used = [n for n in ("alpha_ce", "alpha_mse", "alpha_hidden_mse", "alpha_cos") if alphas[n] > 0]
        need(not used, f"--{used[0] if used else ''} {alphas.get(used[0]) if used else ''} needs a teacher: give --teacher_name, "
                       f"or drop {' '.join('--' + n for n in used)} to train on the labels only")
    need(cfg.teacher_dtype is None or cfg.teacher_name is not None or cfg.teachers is not None,
         f"--teacher_dtype {cfg.teacher_dtype} needs --teacher_name (a --teacher_logits cache holds the values it was made with)")
    need(cfg.lora_r >= 0, f"--lora_r must be >= 0 (got {cfg.lora_r})")
    if cfg.lora_r:
        need(cfg.student_name is not None, "--lora_r adapts a pretrained student: give --student_name (not --student_config)")
        need(cfg.lora_alpha > 0 and 0 <= cfg.lora_dropout < 1,
             f"--lora_alpha must be > 0 and --lora_dropout in [0, 1) (got {cfg.lora_alpha}, {cfg.lora_dropout})")
    else:
        given = [f for f in ("lora_alpha", "lora_target_modules") if getattr(cfg, f) is not None] + (["lora_dropout"] if cfg.lora_dropout else [])
        need(not given, f"--{given[0] if given else ''} needs --lora_r > 0")
    need((cfg.student_name is None) != (cfg.student_config is None), "give exactly one of --student_name and --student_config")
    need(cfg.student_pretrained_weights is None or cfg.student_config is not None,
         "--student_pretrained_weights loads into a --student_config student (with --student_name the weights are the folder's)")
    need(cfg.max_seq_length is None or cfg.max_seq_length >= 3, f"--max_seq_length must be >= 3 (got {cfg.max_seq_length})")
    for name in ("batch_size", "n_epoch", "log_interval", "checkpoint_interval", "gradient_accumulation_steps",
                 "eval_batch_size", "save_steps"):
        need(getattr(cfg, name) >= 1, f"--{name} must be >= 1 (got {getattr(cfg, name)})")
    for name in ("max_steps", "eval_interval", "num_workers", "early_stopping_patience", "save_total_limit"):
        need(getattr(cfg, name) >= 0, f"--{name} must be >= 0 (got {getattr(cfg, name)})")
    for name in ("warmup_prop", "weight_decay"):
        value = getattr(cfg, name)
        need(0 <= value <= 1, f"--{name} must be in [0, 1] (got {value})")
    need(0 <= cfg.validation_split < 1, f"--validation_split must be in [0, 1) (got {cfg.validation_split})")
    need(not (cfg.validation_split and cfg.eval_file), "give --eval_file or --validation_split, not both")
    if cfg.unlabelled_ok or cfg.unlabelled_file:
        flag = "--unlabelled_ok" if cfg.unlabelled_ok else f"--unlabelled_file {cfg.unlabelled_file}"
        need(cfg.objective == "sequence_classification", f"{flag}: only for --objective sequence_classification")
        need(cfg.has_teacher and cfg.alpha_ce + cfg.alpha_mse > 0,
             f"{flag}: rows without labels learn only from the teacher: give --teacher_name and --alpha_ce > 0")
        need(not cfg.validation_split, f"--validation_split: with {flag} give an --eval_file (held-out rows need labels)")
    if cfg.fp16:
        need(cfg.fp16_opt_level == "O1", f"--fp16_opt_level {cfg.fp16_opt_level}: torch.amp's fp16 autocast is apex's O1 "
             "(fp32 weights, fp16 where safe); O0 is plain fp32 (drop --fp16), O2/O3 have no torch.amp counterpart")
    need(cfg.n_gpu is None or cfg.n_gpu >= 0, f"--n_gpu must be >= 0 (got {cfg.n_gpu})")
    if cfg.objective == "mlm":
        need(0 < cfg.mlm_mask_prop <= 1, f"--mlm_mask_prop must be in (0, 1] (got {cfg.mlm_mask_prop})")
        probs = (cfg.word_mask, cfg.word_keep, cfg.word_rand)
        need(all(0 <= p <= 1 for p in probs) and abs(sum(probs) - 1) < 1e-6,
             f"--word_mask, --word_keep and --word_rand must be in [0, 1] and sum to 1 (got {', '.join(map(str, probs))})")
        need(math.isfinite(cfg.mlm_smoothing) and cfg.mlm_smoothing >= 0, f"--mlm_smoothing must be >= 0 (got {cfg.mlm_smoothing})")
        need(cfg.token_counts is not None, "--token_counts is required for --objective mlm (make it with scripts/token_counts.py)")
    need(cfg.layer_map == "last" or cfg.uses_hidden_states,
         f"--layer_map {cfg.layer_map} needs --alpha_cos or --alpha_hidden_mse > 0")
    if cfg.cache_teacher_logits:
        need(cfg.teacher_name is not None or cfg.teachers is not None, "--cache_teacher_logits needs --teacher_name")
        need(not cfg.uses_hidden_states,
             "--cache_teacher_logits caches logits only: it cannot serve --alpha_cos/--alpha_hidden_mse")
    need(cfg.save_best_metric is not None or not cfg.early_stopping_patience,
         "--early_stopping_patience needs --save_best_metric (the metric that must improve)")
    need(cfg.save_best_metric is None or bool(cfg.eval_file or cfg.validation_split),
         f"--save_best_metric {cfg.save_best_metric} needs evaluation data: --eval_file or --validation_split")
