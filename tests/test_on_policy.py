"""On-policy distillation (--on_policy_fraction, distillation/on_policy.py): the student's own
answers to the prompts, scored by the teacher at exactly the sampled tokens through EOS."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import TORCHRUN, read_metrics, run_train, save_model, write_jsonl
from conftest import first_step as step_of
from lm_helpers import CAUSAL_VOCAB, config, last_json_at_one_and_two_processes, llama_pair, single_thread  # noqa: F401 - a fixture
from distillation.distributed import DistEnv
from distillation.on_policy import OnPolicy
from distillation.pipeline import build

pytestmark = pytest.mark.usefixtures("single_thread")
TEMPLATE = "{instruction} {input} A:"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("onpolicy")
    paths = llama_pair(root, n_train=10, student_layers=1)
    rows = [{"instruction": "say why", "input": f"the {noun} {verb}", "output": f"it {verb} {adj}"}
            for noun in ("movie", "film", "plot", "actor") for verb in ("is", "was") for adj in ("good", "dull")]
    paths["instructions"] = write_jsonl(str(root / "instructions.jsonl"), rows)
    # A student that often says EOS early: answers of several lengths, so that ranks finish
    # generating at different forwards (what fsdp must keep in step).
    student = AutoModelForCausalLM.from_pretrained(paths["student"])
    with torch.no_grad():
        student.get_output_embeddings().weight[2] *= 6
    paths["eos_student"] = save_model(student, AutoTokenizer.from_pretrained(paths["student"]), str(root / "eos_student"))
    return paths


def _cfg(pair, dump, **values):
    base = dict(objective="clm", data_file=pair["instructions"], teacher_name=pair["teacher"], student_name=pair["student"],
                prompt_template=TEMPLATE, batch_size=4, max_seq_length=16, group_by_size=False, dump_path=str(dump),
                on_policy_fraction=1.0, temperature=1.0, alpha_ce=1.0, alpha_task=0.5, gradient_accumulation_steps=1)
    return config(**{**base, **values})


def test_a_sampled_step_learns_exactly_the_sampled_tokens_through_eos(pair, tmp_path, monkeypatch):
    """λ = 1: the rebuilt batch's targets are each answer through its first EOS (prompt and what
    follows EOS are not targets); the soft-target term equals a hand reverse KL at those
    positions; the hard-label term weighs 0."""
    cfg = _cfg(pair, tmp_path / "run", student_name=pair["eos_student"])  # answers of several lengths
    assert cfg.divergence == "reverse_kl"  # the on-policy default
    captured = []
    sample = OnPolicy.sample

    def spy(self, batch, model):
        rebuilt = sample(self, batch, model)
        captured.append((batch, rebuilt))
        return rebuilt

    monkeypatch.setattr(OnPolicy, "sample", spy)
    distiller, _ = build(cfg, DistEnv())
    student = copy.deepcopy(distiller.model.student).eval()
    teacher = distiller.teacher.model
    torch.manual_seed(0)
    terms, _ = step_of(distiller)
    (original, batch), = captured
    eos, targets, ended_early = 2, 0, 0
    kl = torch.zeros(())
    with torch.no_grad():
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., : len(CAUSAL_VOCAB)]
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., : len(CAUSAL_VOCAB)]
    for row in range(batch["input_ids"].shape[0]):
        n_prompt = int(original["prompt_len"][row])
        assert batch["input_ids"][row, :n_prompt].tolist() == original["input_ids"][row, :n_prompt].tolist()
        length = int(batch["attention_mask"][row].sum())
        answer = batch["input_ids"][row, n_prompt:length].tolist()
        assert eos not in answer[:-1] and (answer[-1] == eos or length == 16)  # through its first EOS, or cut at the limit
        ended_early += length < batch["input_ids"].shape[1]
        labels = batch["labels"][row]
        assert (labels[:n_prompt] == -100).all() and labels[n_prompt:length].tolist() == answer and (labels[length:] == -100).all()
        for pos in range(n_prompt - 1, length - 1):  # position pos predicts token pos + 1
            p_s, p_t = s_logits[row, pos].log_softmax(-1), t_logits[row, pos].log_softmax(-1)
            kl += (p_s.exp() * (p_s - p_t)).sum()
            targets += 1
    assert 0 < ended_early < batch["input_ids"].shape[0]
    assert terms["ce"] == pytest.approx((kl / targets).item(), rel=1e-4)
    assert terms["loss"] == pytest.approx(cfg.alpha_ce * terms["ce"], rel=1e-6)  # the student's own tokens are no labels


def test_a_student_equal_to_its_teacher_has_nothing_to_learn_on_its_own_samples(pair, tmp_path):
    distiller, _ = build(_cfg(pair, tmp_path / "run", student_name=pair["teacher"]), DistEnv())
    torch.manual_seed(0)
    terms, _ = step_of(distiller)
    assert abs(terms["ce"]) < 1e-6 and terms["task"] > 0.5  # the task term is computed, weighed 0


def test_lambda_0_is_the_off_policy_run_and_two_processes_decide_alike(pair, tmp_path):
    common = ["--objective", "clm", "--teacher_name", pair["teacher"], "--student_name", pair["eos_student"], "--data_file",
              pair["instructions"], "--prompt_template", TEMPLATE, "--max_seq_length", 16, "--batch_size", 2, "--no-group_by_size",
              "--log_interval", 1, "--max_steps", 6]
    runs = {}
    for name, extra, launcher in (("plain", [], None), ("zero", ["--on_policy_fraction", 0], None),
                                  ("half", ["--on_policy_fraction", 0.5, "--eval_file", pair["instructions"], "--eval_generate", 3], None),
                                  ("half2", ["--on_policy_fraction", 0.5], TORCHRUN),
                                  ("fsdp", ["--on_policy_fraction", 0.5, "--strategy", "fsdp"], TORCHRUN)):
        proc = run_train([*map(str, common + extra), "--dump_path", str(tmp_path / name)], launcher=launcher)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = [r for r in read_metrics(tmp_path / name) if "loss" in r]
        if name == "half":
            nll = [r for r in read_metrics(tmp_path / name) if "eval_loss" in r][-1]["eval_teacher_nll"]
            assert f"the student's answers: teacher NLL {nll:.4g}, length" in proc.stdout and f"teacher_nll {nll:.4g}" in proc.stdout
    drop = ("examples_per_s", "tokens_per_s", "memory_mb")
    assert [{k: v for k, v in r.items() if k not in drop} for r in runs["zero"]] == \
           [{k: v for k, v in r.items() if k not in drop} for r in runs["plain"]]
    decisions = [r["on_policy_share"] for r in runs["half"]]
    assert decisions == [r["on_policy_share"] for r in runs["half2"]] == [r["on_policy_share"] for r in runs["fsdp"]]
    assert 0 < sum(decisions) < 6
    answers = [json.loads(line) for line in open(tmp_path / "half" / "eval_answers.jsonl")]  # the final evaluation's
    assert [(a["step"], a["prompt_index"]) for a in answers] == [(6, 0), (6, 1), (6, 2)]
    # fsdp samples what ddp samples: the same losses (the ranks' answers end at different lengths)
    assert [r["loss"] for r in runs["fsdp"]] == pytest.approx([r["loss"] for r in runs["half2"]], rel=1e-4)


SAMPLE_METRICS = """
import json, sys
sys.path.insert(0, {root!r})
from distillation.cli.options import config_from_cli
from distillation.distributed import exit_process, init_distributed, shutdown
from distillation.pipeline import build

cfg = config_from_cli(sys.argv[1:])
env = init_distributed()
d, _ = build(cfg, env)
first = d.on_policy.sample_metrics(d.eval_prompts, d.model, d.teacher, env)
again = d.on_policy.sample_metrics(d.eval_prompts, d.model, d.teacher, env)
if env.is_main:
    print(json.dumps([first, again]))
shutdown(env)
exit_process(0)  # a torchrun worker ends without finalizing (distributed.exit_process)
"""


def test_eval_generate_is_the_same_at_one_and_two_processes(pair, tmp_path):
    """--eval_generate 5: the student's answers to 5 held-out prompts (seeded by prompt), scored
    by the teacher: the same metrics at 1 and 2 processes (the second rank answers 2 of the 5),
    under ddp and fsdp (both models sharded: every rank generates and scores in step), and the
    same at a second evaluation (the training RNG is not what draws them)."""
    args = ["--objective", "clm", "--teacher_name", pair["teacher"], "--student_name", pair["eos_student"], "--data_file",
            pair["instructions"], "--eval_file", pair["instructions"], "--prompt_template", TEMPLATE, "--max_seq_length", 16,
            "--eval_generate", 5, "--dump_path", tmp_path / "unused", "--gradient_accumulation_steps", 1]
    runs = last_json_at_one_and_two_processes(SAMPLE_METRICS, tmp_path, args, fsdp=True)
    one, two, sharded = runs[1], runs[2], runs["fsdp"]
    assert one[0] == one[1] == two[0] == two[1] == sharded[0] == sharded[1]
    metrics, answers = one[0]
    assert metrics["eval_teacher_nll"] > 0 and 1 <= metrics["eval_sample_length"] <= 16 and 0 < metrics["eval_sample_eos"] < 1
    assert [a["prompt_index"] for a in answers] == list(range(5)) and all(a["prompt"].endswith("A:") for a in answers)
    assert sum(a["ended_with_eos"] for a in answers) / 5 == metrics["eval_sample_eos"]
