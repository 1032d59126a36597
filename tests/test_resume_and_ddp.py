"""Scale and survive: exact resume after SIGKILL, torchrun DDP parity, failures on one rank."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, SUBPROCESS_ENV, TRAIN, read_metrics, run_train, train_args, train_in_process

# Two CPU processes (gloo) on any machine: with CUDA visible they would each want a GPU, and a
# 1-GPU machine refuses the second (test_more_processes_than_visible_gpus_is_refused).
TORCHRUN = ["env", "CUDA_VISIBLE_DEVICES=", sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
pytestmark = pytest.mark.filterwarnings("ignore")


def _resume_args(assets, dump, max_steps, accumulation=2, hidden=False):
    """24 optimizer steps per epoch (with accumulation 1 on 2 ranks too): a checkpoint every 8
    steps (intervals count micro-batches, as the reference's) is mid-epoch. `hidden`: a narrower
    student with hidden-state losses, so the projection and its optimizer state must resume too."""
    args = train_args(assets, dump, "--max_steps", max_steps, "--checkpoint_interval", 8 * accumulation, "--log_interval", 1,
                      "--batch_size", 2, "--gradient_accumulation_steps", accumulation, "--eval_interval", 10 * accumulation)
    # dropout: the RNG restore matters; narrow: a projection between widths
    args[args.index("--student_name") + 1] = assets["student_narrow_dropout" if hidden else "student_dropout"]
    if hidden:
        args += ["--alpha_hidden_mse", "1", "--alpha_cos", "1", "--layer_map", "uniform"]
    return args


def _kill_after_step(cmd, dump, step, timeout=240):
    """Start `cmd`, SIGKILL its whole process group once metrics.jsonl reaches `step`."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    metrics, deadline = os.path.join(dump, "metrics.jsonl"), time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and any(r.get("step", 0) >= step for r in read_metrics(dump)):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return read_metrics(dump)[-1]["step"]
        time.sleep(0.01)
    proc.kill()
    pytest.fail(f"run ended before step {step}: {proc.stderr.read().decode()[-2000:]}")


def _weights(dump):
    return load_file(os.path.join(dump, "final", "model.safetensors"))


def _assert_identical(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("launcher,accumulation,hidden", [([sys.executable], 2, False), (TORCHRUN, 1, False), ([sys.executable], 2, True)],
                         ids=["1-process", "2-process", "1-process-projection"])
def test_sigkill_then_resume_is_bit_identical(assets, tmp_path, launcher, accumulation, hidden):
    steps = 40
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    proc = run_train(_resume_args(assets, unbroken, steps, accumulation, hidden), launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    killed_at = _kill_after_step(launcher + [TRAIN] + _resume_args(assets, broken, steps, accumulation, hidden), str(broken), 10)
    assert killed_at < steps and not (broken / "final").exists()
    state = torch.load(broken / "checkpoint" / "state.pt", weights_only=True)
    assert state["progress"]["step"] % 8 == 0 and 8 <= state["progress"]["step"] <= killed_at
    proc = run_train(_resume_args(assets, broken, steps, accumulation, hidden) + ["--resume"], launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_identical(unbroken, broken)
    if hidden:
        a, b = (load_file(os.path.join(d, "final", "projection.safetensors")) for d in (unbroken, broken))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the loss trajectory after the checkpoint is the unbroken one, step for step
    after = {r["step"]: r["loss"] for r in read_metrics(broken) if "loss" in r and r["step"] > state["progress"]["step"]}
    ref = {r["step"]: r["loss"] for r in read_metrics(unbroken) if "loss" in r}
    assert after and all(ref[s] == loss for s, loss in after.items())


def test_two_processes_match_one_with_the_same_global_batch(assets, tmp_path):
    common = ["--no-group_by_size", "--log_interval", 1, "--n_epoch", 2, "--alpha_ce", 0.5, "--alpha_task", 0.5]
    one = run_train(train_args(assets, tmp_path / "one", "--batch_size", 8, *common))
    two = run_train(train_args(assets, tmp_path / "two", "--batch_size", 4, *common), launcher=TORCHRUN)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    l1 = [(r["step"], r["loss"], r["examples_per_s"] > 0) for r in read_metrics(tmp_path / "one") if "loss" in r]
    l2 = [(r["step"], r["loss"], r["examples_per_s"] > 0) for r in read_metrics(tmp_path / "two") if "loss" in r]
    assert [s for s, _, _ in l1] == [s for s, _, _ in l2] and len(l1) == 24
    for (_, a, _), (_, b, _) in zip(l1, l2):
        assert a == pytest.approx(b, rel=1e-4)
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k
    e1 = [r for r in read_metrics(tmp_path / "one") if "eval_accuracy" in r][-1]
    e2 = [r for r in read_metrics(tmp_path / "two") if "eval_accuracy" in r][-1]
    # eval sharded over ranks, each example scored exactly once: counted twice, the loss would
    # not move but the count would
    assert e1["eval_examples"] == e2["eval_examples"] == 40
    assert e1["eval_accuracy"] == e2["eval_accuracy"] and e1["eval_loss"] == pytest.approx(e2["eval_loss"], rel=1e-4)
    assert os.listdir(tmp_path / "two" / "final")  # one final/, written by rank 0


NAN_ON_RANK_1 = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    import torch
    from distillation import objectives
    from distillation.cli import main_guard
    from distillation.config import DistillConfig
    from distillation.pipeline import run

    class NanOnRank1(objectives.OBJECTIVES["sequence_classification"]):
        calls = 0
        def task_loss(self, student_logits, batch):
            NanOnRank1.calls += 1
            loss = super().task_loss(student_logits, batch)
            return loss * float("nan") if os.environ["RANK"] == "1" and NanOnRank1.calls > 3 else loss

    objectives.OBJECTIVES["sequence_classification"] = NanOnRank1
    sys.exit(main_guard(lambda: run(DistillConfig.from_cli(sys.argv[1:])) and 0))
    """
)


def test_nan_on_one_rank_stops_both(assets, tmp_path):
    script = tmp_path / "nan_run.py"
    script.write_text(NAN_ON_RANK_1.format(root=ROOT))
    cmd = TORCHRUN + [str(script)] + train_args(assets, tmp_path / "run", "--checkpoint_interval", 2, "--n_epoch", 3, "--batch_size", 8)
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode != 0 and time.time() - start < 120
    # rank 0 had finite losses and still stops, at the same step, with the reason
    assert "error: rank 0: non-finite loss at step 4" in proc.stderr
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)
    assert state["progress"]["step"] == 2  # the last good checkpoint is kept
    assert not (tmp_path / "run" / "final").exists()


def test_sigterm_saves_a_checkpoint_and_exits(assets, tmp_path):
    dump = tmp_path / "run"
    args = _resume_args(assets, dump, 100000)
    proc = subprocess.Popen([sys.executable, TRAIN] + args, cwd=ROOT, env=SUBPROCESS_ENV, stderr=subprocess.PIPE)
    while not (dump / "metrics.jsonl").exists() or not read_metrics(dump):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    state = torch.load(dump / "checkpoint" / "state.pt", weights_only=True)
    assert state["progress"]["step"] == max(r["step"] for r in read_metrics(dump))
    assert json.load(open(dump / "summary.json"))["interrupted"] is True


def test_resume_refuses_missing_corrupt_and_foreign_checkpoints(assets, tmp_path, capsys):
    def refused(args, expect):
        capsys.readouterr()
        assert train_in_process(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0], err

    dump = tmp_path / "run"
    refused(_resume_args(assets, dump, 8) + ["--resume"], "--resume: no checkpoint")
    assert train_in_process(_resume_args(assets, dump, 8)) == 0
    foreign = _resume_args(assets, dump, 16) + ["--resume"]
    foreign[foreign.index("--student_name") + 1] = assets["teacher"]
    refused(foreign, "other shapes")
    before = {name: (dump / name).stat().st_mtime_ns for name in os.listdir(dump)}
    path = dump / "checkpoint" / "state.pt"
    state = torch.load(path, weights_only=True)
    state["fingerprint"]["objective"] = "mlm"
    torch.save(state, path)
    refused(_resume_args(assets, dump, 16) + ["--resume"], "objective 'mlm'")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    refused(_resume_args(assets, dump, 16) + ["--resume"], "truncated or corrupt")
    assert {name: (dump / name).stat().st_mtime_ns for name in os.listdir(dump)} == before


def test_more_processes_than_visible_gpus_is_refused(monkeypatch):
    """torchrun --nproc_per_node=2 on a 1-GPU machine: a clear line, not `invalid device ordinal`."""
    from distillation.distributed import init_distributed
    from distillation.errors import InputError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("set_device reached"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(InputError, match=r"2 processes on this node but 1 GPU\(s\) are visible.*--n_gpu 0"):
        init_distributed()
