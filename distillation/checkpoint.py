"""Checkpoints for --resume: sharded, written atomically, readable at another world size.

`checkpoint/` holds the student (and projection) and AdamW state through
torch.distributed.checkpoint (DCP: every rank writes its own shards, `__<rank>_0.distcp`, and
rank 0 the `.metadata` that maps each parameter's pieces), plus `trainer.pt` (scheduler, grad
scaler, data position, every rank's RNG states, best/ bookkeeping, the run's fingerprint)
and `complete.json` (each file's size), written last. A checkpoint is written to
`checkpoint.tmp/` and swapped in by renames, so a kill at any point leaves a complete
checkpoint (`checkpoint/`, else a complete `.tmp/` or `.old/` when the kill fell between renames).

DCP reads the shards of any world size into any other and either strategy's layout into
either: with the data position counted in global examples, a run moves between 1 and N
processes as long as its global batch (batch x processes x accumulation) is the same. The
fingerprint refuses a resume that would train on anything else: another model, teacher
(its config and a sample of its weights, or the cache's manifest), data (the files, and the
token ids of every tokenised example), loss (temperature, divergence, every weight), global
batch, schedule or precision. Loading uses `weights_only=True`: the files hold only tensors
and plain containers.
"""

import contextlib
import json
import os
import pickle
import random
import shutil
import warnings
from typing import Dict, Optional

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from distillation.distributed import barrier
from distillation.errors import InputError
from distillation.data.identity import digests_sha256, example_digests, file_sha256
from distillation.data.lm_seqs_dataset import OFFSETS_SUFFIX, TOKENS_SUFFIX

DIR, TRAINER, COMPLETE = "checkpoint", "trainer.pt", "complete.json"
# Options a resume must keep: each changes the data, the loss or the optimisation (--option).
SETTINGS = ("batch_size", "learning_rate", "warmup_prop", "weight_decay", "max_grad_norm", "adam_epsilon", "seed", "group_by_size",
            "precision", "temperature", "divergence", "divergence_beta", "alpha_ce", "alpha_task", "alpha_mse", "alpha_hidden_mse",
            "alpha_cos", "layer_map", "max_seq_length", "prompt_template", "text_column", "text_pair_column", "label_column",
            "label_names", "validation_split", "restrict_ce_to_mask", "mlm_mask_prop", "word_mask", "word_keep", "word_rand",
            "mlm_smoothing", "freeze_pos_embs", "freeze_token_type_embds", "teacher_dtype", "unlabelled_ok", "on_policy_fraction",
            "generation_temperature", "max_new_tokens",
            "lora_r", "lora_alpha", "lora_dropout", "lora_target_modules")
# Fingerprint keys computed from the run -> the flags that set them (objective and shapes have their own lines).
# (--unlabelled_file before --data_file, whose count includes its rows: the one that changed is named)
DERIVED = {"teacher": "--teacher_name/--teacher_logits/--teacher_url/--teachers (and --teacher_column)", "unlabelled_data": "--unlabelled_file", "data": "--data_file",
           "token_ids": "tokenizer (--tokenizer_name/--student_name and its chat template)", "eval_data": "--eval_file",
           "token_counts": "--token_counts", "global_batch": "--batch_size x processes x --gradient_accumulation_steps",
           "total_steps": "--n_epoch/--max_steps"}


def checkpoint_dir(dump_path: str) -> str:
    return os.path.join(dump_path, DIR)


def find_checkpoint(dump_path: str) -> Optional[str]:
    """The complete checkpoint folder of `dump_path`, or None."""
    # killed inside a save: .tmp is complete once its complete.json exists (newer than .old)
    for name in (DIR, DIR + ".tmp", DIR + ".old"):
        folder = os.path.join(dump_path, name)
        if os.path.isfile(os.path.join(folder, COMPLETE)):
            return folder
    return None


def fingerprint(cfg, model: torch.nn.Module, world_size: int, total_steps: int, inputs: Dict) -> Dict:
    """What a resume must share with the run that wrote the checkpoint; `inputs` from
    inputs_fingerprint."""
    return {
        "objective": cfg.objective,
        "shapes": {name: list(p.shape) for name, p in model.state_dict().items()},
        **inputs,
        "global_batch": cfg.batch_size * world_size * cfg.gradient_accumulation_steps,
        "total_steps": total_steps,
        **{k: getattr(cfg, k) for k in SETTINGS},
    }


def inputs_fingerprint(cfg, train_dataset, eval_dataset, teacher) -> Dict:
    """The fingerprint's digests of what the run reads: data files, the token ids of every
    tokenised example, the evaluation data, the token counts and the teacher (`teacher.identity`)."""
    return {
        "teacher": teacher.identity,
        "unlabelled_data": data_fingerprint(cfg.unlabelled_file, None) if cfg.unlabelled_file else None,
        "data": data_fingerprint(cfg.data_file, len(train_dataset)),
        "token_ids": digests_sha256(example_digests(train_dataset)),
        "eval_data": data_fingerprint(cfg.eval_file, len(eval_dataset)) if cfg.eval_file else None,
        "token_counts": data_fingerprint(cfg.token_counts, None) if cfg.token_counts else None,
    }


def data_fingerprint(data_file: str, n_examples: Optional[int]) -> str:
    """`N examples of name sha256 ...`: a binarized .tokens.npy counts with its .offsets.npy,
    which says where each sequence starts."""
    files = [data_file]
    if data_file.endswith(TOKENS_SUFFIX):
        files.append(data_file[: -len(TOKENS_SUFFIX)] + OFFSETS_SUFFIX)
    digests = [f"{os.path.basename(f)} sha256 {file_sha256(f)[:16] if os.path.isfile(f) else 'a folder'}" for f in files]
    return (f"{n_examples} examples of " if n_examples is not None else "") + ", ".join(digests)


@contextlib.contextmanager
def _one_process_is_meant():
    """Without a process group DCP warns that it assumes one process: that is what is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


def save_checkpoint(dump_path: str, model, optimizer, trainer_state: Dict, env) -> None:
    """Every rank: its shards of `model` and `optimizer`; rank 0: trainer_state, then the swap."""
    tmp, final, old = (os.path.join(dump_path, DIR + suffix) for suffix in (".tmp", "", ".old"))
    if env.is_main:
        if not os.path.isdir(final) and find_checkpoint(dump_path) == tmp:
            os.replace(tmp, final)  # the last save was killed between renames: its .tmp is the checkpoint
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    barrier(env)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    with _one_process_is_meant():
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=tmp)
    barrier(env)  # every rank's shards are on disk
    if env.is_main:
        torch.save(trainer_state, os.path.join(tmp, TRAINER))
        sizes = {name: os.path.getsize(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
        with open(os.path.join(tmp, COMPLETE), "w") as f:
            json.dump({"files": sizes}, f, indent=1)
        shutil.rmtree(old, ignore_errors=True)
        if os.path.isdir(final):
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    barrier(env)


def load_checkpoint(dump_path: str, model, optimizer, expected: Dict) -> Dict:
    """Load the shards into `model` and `optimizer` (at this run's world size and strategy);
    returns the trainer state. Refused (InputError) when absent, incomplete, corrupt or foreign."""
    folder = find_checkpoint(dump_path)
    if folder is None:
        raise InputError(f"--resume: no complete checkpoint in '{checkpoint_dir(dump_path)}'")
    with open(os.path.join(folder, COMPLETE)) as f:
        sizes = json.load(f)["files"]
    for name, size in sizes.items():
        path = os.path.join(folder, name)
        found = os.path.getsize(path) if os.path.isfile(path) else None
        if found != size:
            raise InputError(f"--resume: checkpoint file '{path}' is " + ("missing" if found is None else
                             f"truncated or changed ({found} bytes, {size} written)"))
    try:
        state = torch.load(os.path.join(folder, TRAINER), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise InputError(f"--resume: '{os.path.join(folder, TRAINER)}' is corrupt ({type(err).__name__})") from None
    check_fingerprint(state.get("fingerprint", {}), expected, folder)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    shards = {"model": model_state, "optimizer": optimizer_state}
    try:
        with _one_process_is_meant():
            dcp.load(shards, checkpoint_id=folder)
    except Exception as err:  # DCP wraps every rank's failure in CheckpointException
        raise InputError(f"--resume: cannot read the shards of '{folder}' ({type(err).__name__}: {str(err)[:200]})") from None
    set_state_dict(model, optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"])
    return state


def check_fingerprint(found: Dict, expected: Dict, folder: str) -> None:
    """Exit 2 naming the first thing the resume changes."""
    if found.get("objective") != expected["objective"]:
        raise InputError(f"--resume: checkpoint '{folder}' was written for objective '{found.get('objective')}', "
                         f"not '{expected['objective']}'")
    # Flags first: a --teacher_dtype or --lora_r change is named as such, not as another
    # teacher's weights or the student's shapes.
    for key, flag in [*((k, f"--{k}") for k in SETTINGS), ("shapes", None), *DERIVED.items()]:
        if key not in found:
            raise InputError(f"--resume: checkpoint '{folder}' was written by an older version that did not record its {key}, "
                             "so this run cannot be checked against it; start a new run")
        if found[key] != expected[key]:
            if flag is None:
                raise InputError(f"--resume: checkpoint '{folder}' holds a model of other shapes than this run's student")
            raise InputError(f"--resume: the checkpoint was written with another {key} ({found[key]!r}; this run: "
                             f"{expected[key]!r}); resume with the same {flag}")


# --- random number generators ------------------------------------------------------------------
def rng_state() -> Dict:
    """This process's RNG states (numpy's as tensors so that weights_only loading accepts it)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: Dict) -> None:
    random.setstate(_as_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def reseed(seed: int, step: int, rank: int) -> None:
    """Fresh, distinct generators for a rank that has no saved state (another world size)."""
    mixed = (seed * 1_000_003 + step * 1_009 + rank) % 2**32
    random.seed(mixed)
    np.random.seed(mixed)
    torch.manual_seed(mixed)


def _as_tuples(value):
    """random.setstate wants the nested tuples that serialisation may have turned to lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value

