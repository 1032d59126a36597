"""Scale and survive: exact resume after SIGKILL (ddp and fsdp), DDP/FSDP parity, resume at another world size, failures on one rank."""

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
from transformers import AutoModelForSequenceClassification

from conftest import (
    ROOT, SUBPROCESS_ENV, TORCHRUN, TRAIN, build_distiller, final_weights, kill_after_step, read_metrics, run_train, train_args, train_in_process,
)
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


def _assert_identical(a, b):
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("launcher,accumulation,hidden,strategy", [
    ([sys.executable], 2, False, "ddp"), (TORCHRUN, 1, False, "ddp"), ([sys.executable], 2, True, "ddp"), (TORCHRUN, 2, True, "fsdp"),
], ids=["1-process", "2-process", "1-process-projection", "2-process-fsdp-projection"])
def test_sigkill_then_resume_is_bit_identical(assets, tmp_path, launcher, accumulation, hidden, strategy):
    steps = 40
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    args = lambda dump: _resume_args(assets, dump, steps, accumulation, hidden) + ["--strategy", strategy]  # noqa: E731
    proc = run_train(args(unbroken), launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    killed_at = kill_after_step(launcher + [TRAIN] + args(broken), str(broken), 10)
    assert killed_at < steps and not (broken / "final").exists()
    state = torch.load(broken / "checkpoint" / "trainer.pt", weights_only=True)
    assert state["progress"]["step"] % 8 == 0 and 8 <= state["progress"]["step"] <= killed_at
    if strategy == "fsdp":  # each rank wrote its own shard
        assert sorted(n for n in os.listdir(broken / "checkpoint") if n.endswith(".distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    proc = run_train(args(broken) + ["--resume"], launcher=launcher)
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
    w1, w2 = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for k in w1:
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k
    e1 = [r for r in read_metrics(tmp_path / "one") if "eval_accuracy" in r][-1]
    e2 = [r for r in read_metrics(tmp_path / "two") if "eval_accuracy" in r][-1]
    # eval sharded over ranks, each example scored exactly once: counted twice, the loss would
    # not move but the count would
    assert e1["eval_examples"] == e2["eval_examples"] == 40
    assert e1["eval_accuracy"] == e2["eval_accuracy"] and e1["eval_loss"] == pytest.approx(e2["eval_loss"], rel=1e-4)
    assert os.listdir(tmp_path / "two" / "final")  # one final/, written by rank 0


def test_fsdp_matches_ddp_with_hidden_losses_and_a_projection(assets, tmp_path):
    """The same 2-process run sharded (FSDP2) and replicated (DDP): the same losses step for step
    and the same final student and projection, and final/ loads with from_pretrained."""
    common = ["--batch_size", 4, "--no-group_by_size", "--log_interval", 1, "--n_epoch", 2, "--alpha_ce", 0.5, "--alpha_task", 0.5,
              "--alpha_hidden_mse", 1, "--alpha_cos", 1, "--layer_map", "uniform", "--student_name", assets["student_narrow"]]
    runs = {}
    for strategy in ("ddp", "fsdp"):
        proc = run_train(train_args(assets, tmp_path / strategy, *common, "--strategy", strategy), launcher=TORCHRUN)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[strategy] = [r["loss"] for r in read_metrics(tmp_path / strategy) if "loss" in r]
    assert len(runs["ddp"]) == 24 and runs["fsdp"] == pytest.approx(runs["ddp"], rel=1e-4)
    w_ddp, w_fsdp = final_weights(tmp_path / "ddp"), final_weights(tmp_path / "fsdp")
    assert w_ddp.keys() == w_fsdp.keys()
    for k in w_ddp:
        assert torch.allclose(w_ddp[k], w_fsdp[k], atol=1e-5), k
    p_ddp, p_fsdp = (load_file(os.path.join(tmp_path / s, "final", "projection.safetensors")) for s in ("ddp", "fsdp"))
    assert p_ddp.keys() == p_fsdp.keys() == {"weight", "bias"}
    assert all(torch.allclose(p_ddp[k], p_fsdp[k], atol=1e-5) for k in p_ddp)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "fsdp" / "final").state_dict()
    assert all(torch.equal(loaded[k], w_fsdp[k]) for k in w_fsdp)
    initial = AutoModelForSequenceClassification.from_pretrained(assets["student_narrow"]).state_dict()
    assert not torch.allclose(initial["classifier.weight"], loaded["classifier.weight"])  # it trained


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_checkpoint_resumes_at_another_world_size(assets, tmp_path, strategy):
    """2 processes x batch 8 <-> 1 process x batch 8 x accumulation 2 (the same global batch of 16):
    a checkpoint of either resumes on the other and ends within fp tolerance of the unbroken run
    (no dropout: the RNG streams of ranks that did not exist cannot be restored)."""
    def args(dump, processes):
        return train_args(assets, dump, "--batch_size", 8, "--gradient_accumulation_steps", 3 - processes, "--n_epoch", 4,
                          "--checkpoint_interval", 2 * (3 - processes), "--log_interval", 1, "--strategy", strategy)

    launchers = {1: [sys.executable], 2: TORCHRUN}
    proc = run_train(args(tmp_path / "unbroken", 1))
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = final_weights(tmp_path / "unbroken")
    for before, after in ((2, 1), (1, 2)):
        dump = tmp_path / f"{before}-to-{after}"
        killed_at = kill_after_step(launchers[before] + [TRAIN] + args(dump, before), str(dump), 3)
        state = torch.load(dump / "checkpoint" / "trainer.pt", weights_only=True)
        assert 2 <= state["progress"]["step"] <= killed_at < 24 and state["progress"]["world_size"] == before
        assert state["progress"]["examples_in_epoch"] % 16 == 0 and state["progress"]["step"] % 6  # mid-epoch
        proc = run_train(args(dump, after) + ["--resume"], launcher=launchers[after])
        assert proc.returncode == 0, proc.stderr[-3000:]
        steps = [r["step"] for r in read_metrics(dump) if "loss" in r]
        assert steps[-1] == 24
        weights = final_weights(dump)
        for k in reference:
            assert torch.allclose(weights[k], reference[k], atol=1e-5), (before, after, k)
    # the same global batch is required
    other = args(tmp_path / "2-to-1", 1) + ["--resume"]
    other[other.index("--gradient_accumulation_steps") + 1] = "1"
    proc = run_train(other)
    assert proc.returncode == 2 and "another global_batch (16; this run: 8)" in proc.stderr


NAN_ON_RANK_1 = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, {root!r})
    import torch
    from distillation import objectives
    from distillation.cli import main_guard
    from distillation.cli.options import config_from_cli
    from distillation.pipeline import run

    class NanOnRank1(objectives.OBJECTIVES["sequence_classification"]):
        calls = 0
        def task_loss(self, student_logits, batch):
            NanOnRank1.calls += 1
            loss = super().task_loss(student_logits, batch)
            return loss * float("nan") if os.environ["RANK"] == "1" and NanOnRank1.calls > 3 else loss

    objectives.OBJECTIVES["sequence_classification"] = NanOnRank1
    sys.exit(main_guard(lambda: run(config_from_cli(sys.argv[1:])) and 0))
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
    state = torch.load(tmp_path / "run" / "checkpoint" / "trainer.pt", weights_only=True)
    assert state["progress"]["step"] == 2  # the last good checkpoint is kept
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize("poisoned_step,checkpoint_interval", [(3, 1), (1, 4000)])
def test_an_inf_gradient_under_a_finite_loss_never_reaches_the_weights_or_a_checkpoint(assets, tmp_path, poisoned_step,
                                                                                      checkpoint_interval):
    """fp32: the loss is finite but one step's gradient is inf. The run stops before that step's
    update, names it, and points at a checkpoint only where one exists; every weight in memory
    and in the checkpoint is finite and is the weights of the step before."""
    from distillation import checkpoint as ckpt
    from distillation.errors import TrainingStopped

    dump = tmp_path / "run"
    distiller, _, _ = build_distiller(assets, dump, checkpoint_interval=checkpoint_interval, batch_size=16)
    os.makedirs(dump)
    distiller.open_log()
    calls = []

    def poison(grad):
        calls.append(1)
        return torch.full_like(grad, float("inf")) if len(calls) == poisoned_step else grad

    distiller.model.student.classifier.weight.register_hook(poison)
    where = r"the last good checkpoint is .*checkpoint \(--resume" if poisoned_step > 1 else "no checkpoint was written yet"
    with pytest.raises(TrainingStopped, match=f"non-finite gradient norm under a finite loss at step {poisoned_step} .*{where}"):
        distiller.train()
    assert all(torch.isfinite(p).all() for p in distiller.model.parameters())
    if poisoned_step > 1:
        assert torch.load(dump / "checkpoint" / "trainer.pt", weights_only=True)["progress"]["step"] == poisoned_step - 1
        saved, _, _ = build_distiller(assets, dump, checkpoint_interval=checkpoint_interval, batch_size=16)
        ckpt.load_checkpoint(str(dump), saved.model, saved.optimizer, saved.fingerprint())
        for (name, a), b in zip(saved.model.named_parameters(), distiller.model.parameters()):
            assert torch.equal(a, b), name


def test_sigterm_saves_a_checkpoint_and_exits(assets, tmp_path):
    dump = tmp_path / "run"
    args = _resume_args(assets, dump, 100000)
    proc = subprocess.Popen([sys.executable, TRAIN] + args, cwd=ROOT, env=SUBPROCESS_ENV, stderr=subprocess.PIPE)
    while not (dump / "metrics.jsonl").exists() or not read_metrics(dump):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    state = torch.load(dump / "checkpoint" / "trainer.pt", weights_only=True)
    assert state["progress"]["step"] == max(r["step"] for r in read_metrics(dump))
    assert json.load(open(dump / "summary.json"))["interrupted"] is True


def test_resume_refuses_missing_corrupt_and_foreign_checkpoints(assets, tmp_path, capsys):
    def refused(args, expect):
        capsys.readouterr()
        assert train_in_process(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expect in err[0], err

    dump = tmp_path / "run"
    refused(_resume_args(assets, dump, 8) + ["--resume"], "--resume: no complete checkpoint")
    assert train_in_process(_resume_args(assets, dump, 8)) == 0
    before = {name: (dump / name).stat().st_mtime_ns for name in os.listdir(dump)}
    foreign = _resume_args(assets, dump, 8) + ["--resume"]
    foreign[foreign.index("--student_name") + 1] = assets["teacher"]
    refused(foreign, "other shapes")
    # the schedule, the global batch and the data must be the checkpoint's
    refused(_resume_args(assets, dump, 16) + ["--resume"], "another total_steps (8; this run: 16); resume with the same "
            "--n_epoch/--max_steps")
    refused(_resume_args(assets, dump, 8, accumulation=1) + ["--resume"], "another global_batch (4; this run: 2); resume with "
            "the same --batch_size x processes x --gradient_accumulation_steps")
    refused(_resume_args(assets, dump, 8) + ["--resume", "--learning_rate", "2e-3"], "another learning_rate")
    other = tmp_path / "other.jsonl"
    lines = open(assets["train"]).read().splitlines()
    other.write_text("\n".join(lines[1:] + lines[:1]) + "\n")  # the same examples, another order
    moved = _resume_args(assets, dump, 8) + ["--resume"]
    moved[moved.index("--data_file") + 1] = str(other)
    refused(moved, "another data")
    # a foreign objective, written consistently (complete.json updated)
    folder = dump / "checkpoint"
    state = torch.load(folder / "trainer.pt", weights_only=True)
    state["fingerprint"]["objective"] = "mlm"
    torch.save(state, folder / "trainer.pt")
    sizes = json.load(open(folder / "complete.json"))
    saved = dict(sizes["files"])
    sizes["files"]["trainer.pt"] = (folder / "trainer.pt").stat().st_size
    (folder / "complete.json").write_text(json.dumps(sizes))
    refused(_resume_args(assets, dump, 8) + ["--resume"], "objective 'mlm'")
    shard = next(name for name in saved if name.endswith(".distcp"))
    (folder / shard).write_bytes((folder / shard).read_bytes()[: saved[shard] // 2])
    refused(_resume_args(assets, dump, 8) + ["--resume"], f"checkpoint file '{folder / shard}' is truncated or changed")
    assert {name: (dump / name).stat().st_mtime_ns for name in os.listdir(dump)} == before


@pytest.mark.parametrize("left", ["checkpoint.tmp", "checkpoint.old"])
def test_a_save_killed_between_its_renames_leaves_a_checkpoint(assets, tmp_path, monkeypatch, left):
    """The swap is two renames (checkpoint -> .old, then .tmp -> checkpoint): a kill between them
    leaves no checkpoint/ but a complete .old/ and .tmp/. --resume reads either, and the next
    save puts checkpoint/ back without a moment where no complete checkpoint exists."""
    from distillation import checkpoint as ckpt

    dump = tmp_path / "run"
    distiller, _, _ = build_distiller(assets, dump)
    os.makedirs(dump)
    distiller._save_checkpoint()
    os.replace(dump / "checkpoint", dump / left)
    assert ckpt.find_checkpoint(str(dump)) == str(dump / left)
    assert ckpt.load_checkpoint(str(dump), distiller.model, distiller.optimizer, distiller.fingerprint())["progress"]["step"] == 0
    with monkeypatch.context() as patch:  # killed again while writing the shards
        patch.setattr(ckpt.dcp, "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            distiller._save_checkpoint()
    assert ckpt.find_checkpoint(str(dump)) is not None
    distiller._save_checkpoint()
    assert ckpt.find_checkpoint(str(dump)) == str(dump / "checkpoint") and not (dump / left).exists()


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


def test_a_torchrun_worker_ends_without_the_interpreters_finalization(monkeypatch):
    """gloo's worker threads may release a finished collective's tensors while Python finalizes and
    abort the process after its work is done (distributed.exit_process): every command ends a
    torchrun worker with os._exit, and a plain process returns its code."""
    from distillation import cli

    ended = []
    monkeypatch.setattr(cli, "exit_process", ended.append)
    monkeypatch.setenv("WORLD_SIZE", "2")
    cli.command(lambda argv: 3)()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert cli.command(lambda argv: 4)() == 4 and ended == [3]
