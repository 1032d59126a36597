"""The cached teacher (--teacher_logits DIR): its outputs read back from a cache that
scripts/cache_teacher.py wrote once (offline_logits.py: the format), no model in training memory."""

import hashlib
import json
import os

import numpy as np
import torch

from distillation.data.identity import example_digests
from distillation.errors import InputError
from distillation.offline_logits import (
    SparseTargets, check_examples, check_identity, read_manifest, run_identity, shard_done, shard_stem,
)


def cached_teacher(cfg, objective, tokenizer, train_dataset, env) -> "CachedTeacher":
    """The --teacher_logits cache, once it is known to be of this run's data, tokenizer (the
    teacher's, where the student has another) and settings."""
    manifest = read_manifest(cfg.teacher_logits)
    if not os.path.isfile(cfg.data_file):
        raise InputError("--teacher_logits: --data_file must be a file (its fingerprint is checked against the cache's)")
    # A cross-tokenizer cache: the student tokenises the same records its own way, at its own length.
    cross = getattr(objective, "teacher_tokenizer", None) is not None
    check_identity(manifest, run_identity(cfg, tokenizer, len(train_dataset)), skip=("tokenizer_sha256", "max_seq_length") if cross else ())
    if not cross:
        check_examples(cfg.teacher_logits, example_digests(train_dataset), "--teacher_logits",
                       "remake the cache with this run's tokenizer and flags, or tokenise as the cache did (--tokenizer_name/--student_name)")
    if manifest["method"] != "full" and cfg.alpha_mse:
        raise InputError(f"--alpha_mse {cfg.alpha_mse}: a {manifest['method']} cache keeps no whole logits to compare; drop it")
    if manifest["method"] == "sampled" and cfg.divergence != "forward_kl":
        raise InputError(f"--divergence {cfg.divergence}: a sampled cache estimates forward KL only (drop --divergence, or "
                         "cache with --method topk)")
    return CachedTeacher(cfg.teacher_logits, manifest, objective, env.device)


class CachedTeacher:
    """Serves a cache's teacher outputs for training batches: SparseTargets (clm) or the logits
    [B, C] (classification). No model; nothing for evaluation (it reports the student only)."""

    model = None
    warning = None  # for the run's header: where this kind of cache measured worse than online KD
    members = ()  # one teacher (several.py has several)

    def __init__(self, folder: str, manifest: dict, objective, device):
        kept = {"full": "whole logits", "topk": f"top {manifest['k']} and the rest's mass",
                "sampled": f"head {manifest['head']} + {manifest['k']} draws"}[manifest["method"]]
        self.description = f"{kept} a position ({manifest['bytes_per_row']} bytes), from the cache; evaluation reports the student only"
        if manifest["method"] == "topk":  # docs/offline-logits.md: at T > 1 the rest is most of the mass
            self.warning = ("a topk cache keeps nothing of the teacher's tail but its mass, a coarse target (above T = 1 most "
                            "of the mass); --method sampled (cache_teacher.py's default) is unbiased")
        manifest_sha = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
        self.identity = f"a cache of manifest sha256 {manifest_sha[:16]}"  # the resume fingerprint's
        self.objective, self.device, self.method = objective, device, manifest["method"]
        self.rest_as_one = manifest.get("source") == "served"  # its buckets were tempered as k + 1 tokens (teachers/served.py)
        self.sparse = self.method != "full"  # what token_losses_for needs to know
        self.form = "logits" if not self.sparse else f"{kept} ({'served' if self.rest_as_one else 'local'})"
        self.rows, self.arrays = [], []
        for shard in range(manifest["shards"]):
            stem = shard_stem(folder, shard)
            if not shard_done(folder, shard):
                raise InputError(f"--teacher_logits: shard {shard} of '{folder}' is missing or incomplete; "
                                 "rerun scripts/cache_teacher.py with the same flags to finish it")
            try:
                self.arrays.append({n: np.load(f"{stem}.{n}.npy", mmap_mode="r") for n in manifest["arrays"]})
                self.rows.append(np.load(f"{stem}.rows.npy"))
            except (OSError, ValueError) as err:
                raise InputError(f"--teacher_logits: cannot read shard {shard} of '{folder}' ({err})") from None
            if any(len(a) != self.rows[-1][-1] for a in self.arrays[-1].values()):
                raise InputError(f"--teacher_logits: shard {shard} of '{folder}' is truncated")
        self.shard_size = manifest["shard_size"]

    def outputs(self, batch, with_hidden: bool = False, split: str = "train", logits: bool = True):
        """(the batch's cached teacher outputs, in the objective's row order; None) for training,
        (None, None) for evaluation."""
        if split != "train":
            return None, None
        parts = {}
        for index in batch["index"].tolist():
            shard, i = divmod(index, self.shard_size)
            start, end = self.rows[shard][i], self.rows[shard][i + 1]
            for name, array in self.arrays[shard].items():
                parts.setdefault(name, []).append(array[start:end])
        # numpy's concatenate copies (memmaps are read-only) and, unlike torch.cat, is outside
        # autocast: CPU bf16 autocast refuses to concatenate the cache's fp16 values.
        cat = {n: torch.from_numpy(np.concatenate(p)).to(self.device) for n, p in parts.items()}
        expected = self.objective.teacher_target_rows(batch) if self.sparse else len(batch["index"])
        if len(cat["values"]) != expected:
            raise InputError(f"--teacher_logits: the cache holds {len(cat['values'])} rows for this batch, the data gives "
                             f"{expected}: it was made from other data or settings")
        if not self.sparse:
            return cat["values"], None
        extra = {name: cat[name].float() for name in ("tail", "entropy") if name in cat}
        return SparseTargets(self.method, cat["ids"].long(), cat["values"].float(), **extra, rest_as_one=self.rest_as_one), None

    def prepare(self, group: list, upcoming) -> None:
        """Nothing to ask ahead: outputs computes or reads each micro-batch's when it is needed."""

    def end_epoch(self, env) -> None:
        """Nothing to do: every rank reads the whole cache."""

    def report(self, env) -> dict:
        return {}

    def parameters(self):
        return None
