"""The served teacher (--teacher_url) beyond training's targets, against a real vLLM server
(tests/vllm_server.py): its evaluation metrics, an on-policy step's loss and --eval_generate's
teacher NLL and own answers are hand computations from the local teacher (the server's folder
loaded with transformers)."""

import copy
import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import read_metrics, run_train
from distillation.config import DistillConfig
from distillation.distributed import DistEnv
from distillation.evaluation import evaluate
from distillation.on_policy import OnPolicy
from distillation.pipeline import build
from distillation.teachers.served import ServedRows
from vllm_server import build_student

K = 8
TEMPLATE = "{instruction} {input} A:"
NOUNS = ("movie", "film", "plot", "actor")


def _teacher(folder):
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _cfg(url, folder, student, data, dump, **values):
    return DistillConfig.from_dict({"objective": "clm", "teacher_url": url, "student_name": student, "data_file": data,
                                    "eval_file": data, "prompt_template": TEMPLATE, "dump_path": str(dump), "max_seq_length": 20,
                                    "teacher_top_k": K, "eval_batch_size": 3, "group_by_size": False, **values})


@pytest.fixture(scope="module")
def assets(vllm_teacher, tmp_path_factory):
    """Instruction records: half answered with the teacher's own 4 greedy tokens and no EOS (every
    target its argmax: exact matches), half with the data's words and EOS (targets outside its top k)."""
    url, folder, _ = vllm_teacher
    root = tmp_path_factory.mktemp("served_eval")
    tok, teacher = AutoTokenizer.from_pretrained(folder), _teacher(folder)
    rows = []
    for n, noun in enumerate(NOUNS * 2):
        prompt = dict(instruction="say why", input=f"the {noun} {'is' if n % 3 else 'was'}")
        ids = tok(TEMPLATE.format(**prompt), add_special_tokens=False)["input_ids"]
        if n % 2:
            rows.append({**prompt, "output": f"it was {'good' if n % 3 else 'dull'}"})
            continue
        with torch.no_grad():
            for _ in range(4):
                ids.append(int(teacher(input_ids=torch.tensor([ids])).logits[0, -1, : len(tok)].argmax()))
        rows.append({**prompt, "output": tok.decode(ids[-4:]), "ended_with_eos": False})
    data = root / "instructions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"url": url, "folder": folder, "student": build_student(folder, str(root / "student")), "data": str(data), "root": root}


def _hand_teacher_metrics(folder, dataset, special, tokenizer):
    """eval_teacher_* of the local teacher over the dataset's response targets, and how many
    targets lie outside its top K (vLLM's k + 1st entry)."""
    teacher = _teacher(folder)
    nll = count = correct = scored = outside = n_bytes = 0.0
    exact = []
    for i in range(len(dataset)):
        item = dataset[i]
        ids = torch.tensor([item["input_ids"]])
        with torch.no_grad():
            logp = teacher(input_ids=ids).logits[0].double().log_softmax(-1)
        hits = []
        for t in range(item["prompt_len"] - 1, ids.shape[1] - 1):  # position t predicts token t + 1
            target = int(ids[0, t + 1])
            nll, count = nll - logp[t, target].item(), count + 1
            hit = int(logp[t].argmax()) == target
            hits.append(hit)
            if target not in special:
                correct, scored = correct + hit, scored + 1
            outside += target not in logp[t].topk(K).indices.tolist()
        exact.append(all(hits))
        n_bytes += len(tokenizer.decode(item["input_ids"][item["prompt_len"]:], skip_special_tokens=True).encode("utf-8"))
    loss = nll / count
    return {"eval_teacher_loss": loss, "eval_teacher_perplexity": math.exp(loss), "eval_teacher_accuracy": correct / scored,
            "eval_teacher_exact_match": sum(exact) / len(exact), "eval_teacher_bits_per_byte": nll / math.log(2) / n_bytes}, outside


def test_evaluation_reports_the_served_teacher_as_the_local_one(assets, tmp_path, monkeypatch):
    """The teacher's loss (NLL of every target, also those outside the top k), perplexity,
    accuracy and exact match, from the server's answers alone, scored 5 rows at a time."""
    monkeypatch.setattr(ServedRows, "elements", 5 * 26)  # the teacher has 26 tokens
    distiller, _ = build(_cfg(assets["url"], assets["folder"], assets["student"], assets["data"], tmp_path / "run"), DistEnv())
    metrics = evaluate(distiller.model, distiller.teacher, distiller.objective, distiller.eval_dataset, 3, distiller.env,
                       distiller.autocast, 0)
    special = set(distiller.tokenizer.all_special_ids)
    expected, outside = _hand_teacher_metrics(assets["folder"], distiller.eval_dataset, special, distiller.tokenizer)
    print({k: (metrics.get(k), v) for k, v in expected.items()}, f"{outside:.0f} targets outside the top {K}")
    assert outside >= 5 and 0 < expected["eval_teacher_exact_match"] < 1 and 0 < expected["eval_teacher_accuracy"] < 1
    assert metrics["eval_teacher_accuracy"] == expected["eval_teacher_accuracy"]
    assert metrics["eval_teacher_exact_match"] == expected["eval_teacher_exact_match"]
    assert metrics["eval_teacher_loss"] == pytest.approx(expected["eval_teacher_loss"], abs=1e-4)
    assert metrics["eval_teacher_perplexity"] == pytest.approx(expected["eval_teacher_perplexity"], rel=1e-4)
    assert metrics["eval_teacher_bits_per_byte"] == pytest.approx(expected["eval_teacher_bits_per_byte"], rel=1e-4)
    assert {k for k in metrics if k.startswith("eval_teacher_")} == set(expected)  # what a local teacher reports


def _reverse_kl_of_buckets(s_logits, t_logits, temperature):
    """Σ KL(q‖p) over rows: p the teacher's top K and the rest at T = 1, tempered as K + 1
    tokens; q the student's softmax at T = 1 over the same K tokens and the rest of its
    vocabulary, tempered alike."""
    t_logp = t_logits.log_softmax(-1)
    top, ids = t_logp.topk(K, dim=-1)
    buckets = torch.cat([top, torch.log1p(-top.exp().sum(-1, keepdim=True))], -1) / temperature
    p = buckets.softmax(-1)
    s_top = s_logits.softmax(-1).gather(-1, ids)
    q = torch.cat([s_top, 1 - s_top.sum(-1, keepdim=True)], -1) ** (1 / temperature)
    q = q / q.sum(-1, keepdim=True)
    return (q * (q.log() - p.log())).sum()


def test_an_on_policy_step_learns_the_servers_top_k_of_the_students_own_samples(assets, tmp_path, monkeypatch):
    """λ = 1 (no refusal with --teacher_url): the step's dataset rows are asked for first, as in a
    run; the rebuilt batch (prompt + the student's answer) is asked anew, and its soft-target term
    is a hand reverse KL of the k + 1 buckets at the sampled positions, at T = 2."""
    temperature = 2.0
    cfg = _cfg(assets["url"], assets["folder"], assets["student"], assets["data"], tmp_path / "run", on_policy_fraction=1.0,
               temperature=temperature, alpha_ce=1.0, alpha_task=0.5, batch_size=4, gradient_accumulation_steps=1)
    assert cfg.divergence == "reverse_kl"  # the on-policy default
    captured, sample = [], OnPolicy.sample
    monkeypatch.setattr(OnPolicy, "sample", lambda self, batch, model: captured.append(sample(self, batch, model)) or captured[-1])
    distiller, _ = build(cfg, DistEnv())
    student = copy.deepcopy(distiller.model.student).eval()
    group = [distiller.objective.collate([distiller.train_dataset[i] for i in distiller._batches(0)[0]])]
    distiller.teacher.prepare(group, None)  # as _teacher_ready does before the step
    torch.manual_seed(0)
    terms = distiller._step(group)
    batch, = captured
    assert not torch.equal(batch["input_ids"][:, : group[0]["input_ids"].shape[1]], group[0]["input_ids"])  # new tokens
    teacher, columns = _teacher(assets["folder"]), distiller.objective.columns
    with torch.no_grad():
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., :columns].double()
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[..., :columns].double()
    targets = batch["labels"][:, 1:] != -100  # position t predicts token t + 1: the sampled answers through EOS
    kl = _reverse_kl_of_buckets(s_logits[:, :-1][targets], t_logits[:, :-1][targets], temperature)
    print(f"ce {terms['ce']:.6f}, hand {temperature ** 2 * kl.item() / targets.sum().item():.6f} over {targets.sum()} sampled tokens")
    assert targets.sum() >= 8
    assert terms["ce"] == pytest.approx(temperature ** 2 * kl.item() / targets.sum().item(), rel=1e-4)
    assert terms["loss"] == pytest.approx(cfg.alpha_ce * terms["ce"], rel=1e-6)  # the student's own tokens are no labels
    distiller.teacher.prepare([], None)
    assert not distiller.teacher.pending  # the dataset rows' answers, never used, are not kept


def _greedy(teacher, prompt, budget, eos):
    """The local teacher's argmax answer through EOS, at most `budget` tokens, and its smallest
    top-2 gap (what a draw at temperature 1e-3 needs to be its argmax)."""
    ids, gap = list(prompt), math.inf
    with torch.no_grad():
        for _ in range(budget):
            top = teacher(input_ids=torch.tensor([ids])).logits[0, -1].double().log_softmax(-1).topk(2)
            gap = min(gap, (top.values[0] - top.values[1]).item())
            ids.append(int(top.indices[0]))
            if ids[-1] == eos:
                break
    return ids[len(prompt):], gap


def test_eval_generate_scores_the_students_answers_and_draws_the_teachers_own_on_the_server(assets, tmp_path, monkeypatch):
    """The teacher's NLL of each student answer is the local teacher's (1e-4); its own answers,
    drawn by the server at --generation_temperature 1e-3, are the local teacher's argmax answers."""
    cfg = _cfg(assets["url"], assets["folder"], assets["student"], assets["data"], tmp_path / "run", eval_generate=6,
               generation_temperature=1e-3, max_new_tokens=6)
    captured, score = [], OnPolicy._answer_and_score
    monkeypatch.setattr(OnPolicy, "_answer_and_score", lambda self, *args: captured.append(score(self, *args)) or captured[-1])
    distiller, _ = build(cfg, DistEnv())
    prompts = distiller.eval_prompts
    metrics, answers = distiller.on_policy.sample_metrics(prompts, distiller.model, distiller.teacher, distiller.env)
    students, own = captured
    teacher, eos = _teacher(assets["folder"]), distiller.tokenizer.eos_token_id
    hands = []
    for i, nll, answer, _ in students:
        ids = torch.tensor([prompts[i] + answer])
        with torch.no_grad():
            logp = teacher(input_ids=ids).logits[0, :-1].double().log_softmax(-1)[len(prompts[i]) - 1 :]
        hands.append(-logp.gather(-1, torch.tensor(answer)[:, None]).sum().item())
    print(f"teacher NLL of the student's answers, served vs local: max |diff| {max(abs(r[1] - h) for r, h in zip(students, hands)):.1e}")
    assert [r[1] for r in students] == pytest.approx(hands, abs=1e-4)
    total = sum(hands)
    assert metrics["eval_teacher_nll"] == pytest.approx(total / sum(len(r[2]) for r in students), abs=1e-4)
    assert [a["teacher_nll"] * max(len(r[2]), 1) for a, r in zip(answers, students)] == pytest.approx([r[1] for r in students])
    greedy = [_greedy(teacher, prompts[i], distiller.on_policy.budget(len(prompts[i])), eos) for i in range(len(prompts))]
    print(f"smallest top-2 gap of the teacher's argmax answers: {min(g for _, g in greedy):.3f}")
    assert [(i, answer, ended) for i, _, answer, ended in own] == [(i, g, g[-1] == eos) for i, (g, _) in enumerate(greedy)]
    assert metrics["eval_teacher_sample_length"] == sum(len(g) for g, _ in greedy) / len(greedy)
    assert metrics["eval_teacher_sample_eos"] == sum(g[-1] == eos for g, _ in greedy) / len(greedy)


def test_a_served_run_takes_on_policy_steps_and_eval_generate(assets, tmp_path):
    """Through scripts/train.py: neither flag is refused, and the run logs the teacher's metrics."""
    dump = tmp_path / "run"
    proc = run_train(["--objective", "clm", "--teacher_url", assets["url"], "--student_name", assets["student"], "--data_file",
                      assets["data"], "--eval_file", assets["data"], "--prompt_template", TEMPLATE, "--max_seq_length", "20",
                      "--teacher_top_k", str(K), "--batch_size", "4", "--max_steps", "2", "--log_interval", "1",
                      "--on_policy_fraction", "1", "--eval_generate", "2", "--max_new_tokens", "4", "--dump_path", str(dump)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = [r for r in read_metrics(dump) if "eval_loss" in r]
    assert evals and {"eval_teacher_loss", "eval_teacher_nll", "eval_teacher_sample_length"} <= set(evals[-1])
    assert [r["on_policy_share"] for r in read_metrics(dump) if "on_policy_share" in r] == [1.0, 1.0]
