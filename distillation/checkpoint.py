"""Full-state checkpoints for exact resume, written atomically.

One file, `checkpoint/state.pt`: the student (and projection), optimizer, scheduler, grad
scaler, every rank's RNG states, the data-order position (epoch, batches done in it) and the
step, plus a fingerprint of the run (objective, parameter shapes) so `--resume` refuses a
checkpoint of another run. It is written to a temp file and renamed, so a kill mid-write
leaves the previous checkpoint whole. Loading uses `weights_only=True`: the file holds only
tensors and plain containers.
"""

import os
import pickle
import random
from typing import Dict

import numpy as np
import torch

from distillation.errors import InputError

FILE_NAME = "state.pt"


def checkpoint_file(dump_path: str) -> str:
    return os.path.join(dump_path, "checkpoint", FILE_NAME)


def fingerprint(objective_name: str, model: torch.nn.Module) -> Dict:
    return {
        "objective": objective_name,
        "shapes": {name: list(p.shape) for name, p in model.state_dict().items()},
    }


def save_checkpoint(path: str, state: Dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(dump_path: str, expected_fingerprint: Dict) -> Dict:
    """The checkpoint of `dump_path`, refused (InputError) when absent, corrupt or foreign."""
    path = checkpoint_file(dump_path)
    if not os.path.isfile(path):
        raise InputError(f"--resume: no checkpoint at '{path}'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise InputError(f"--resume: checkpoint '{path}' is truncated or corrupt ({type(err).__name__})") from None
    found = state.get("fingerprint", {})
    if found.get("objective") != expected_fingerprint["objective"]:
        raise InputError(
            f"--resume: checkpoint '{path}' was written for objective '{found.get('objective')}', "
            f"not '{expected_fingerprint['objective']}'"
        )
    if found.get("shapes") != expected_fingerprint["shapes"]:
        raise InputError(f"--resume: checkpoint '{path}' holds a model of other shapes than this run's student")
    return state


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


def _as_tuples(value):
    """random.setstate wants the nested tuples that serialisation may have turned to lists."""
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuples(v) for v in value)
    return value

