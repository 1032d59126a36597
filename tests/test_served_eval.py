"""The served teacher (--teacher_url) beyond training's targets, against a real vLLM server
(tests/vllm_server.py): its evaluation metrics are a hand computation from the local teacher
(the server's folder loaded with transformers)."""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from conftest import save_model
from distillation.config import DistillConfig
from distillation.distributed import DistEnv
from distillation.evaluation import evaluate
from distillation.pipeline import build

K = 8
TEMPLATE = "{instruction} {input} A:"
NOUNS = ("movie", "film", "plot", "actor")


def _student(teacher, folder):
    """A 1-layer Llama student over the teacher's tokenizer (random: far from the teacher)."""
    tok = AutoTokenizer.from_pretrained(teacher)
    torch.manual_seed(4)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    return save_model(LlamaForCausalLM(config), tok, folder)


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
    return {"url": url, "folder": folder, "student": _student(folder, str(root / "student")), "data": str(data), "root": root}


def _hand_teacher_metrics(folder, dataset, special):
    """eval_teacher_* of the local teacher over the dataset's response targets, and how many
    targets lie outside its top K (vLLM's k + 1st entry)."""
    teacher = _teacher(folder)
    nll = count = correct = scored = outside = 0.0
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
    loss = nll / count
    return {"eval_teacher_loss": loss, "eval_teacher_perplexity": math.exp(loss), "eval_teacher_accuracy": correct / scored,
            "eval_teacher_exact_match": sum(exact) / len(exact)}, outside


def test_evaluation_reports_the_served_teacher_as_the_local_one(assets, tmp_path):
    """The teacher's loss (NLL of every target, also those outside the top k), perplexity,
    accuracy and exact match, from the server's answers alone."""
    distiller, _ = build(_cfg(assets["url"], assets["folder"], assets["student"], assets["data"], tmp_path / "run"), DistEnv())
    metrics = evaluate(distiller.model, distiller.teacher, distiller.objective, distiller.eval_dataset, 3, distiller.env,
                       distiller.autocast, 0)
    special = set(distiller.tokenizer.all_special_ids)
    expected, outside = _hand_teacher_metrics(assets["folder"], distiller.eval_dataset, special)
    print({k: (metrics.get(k), v) for k, v in expected.items()}, f"{outside:.0f} targets outside the top {K}")
    assert outside >= 5 and 0 < expected["eval_teacher_exact_match"] < 1 and 0 < expected["eval_teacher_accuracy"] < 1
    assert metrics["eval_teacher_accuracy"] == expected["eval_teacher_accuracy"]
    assert metrics["eval_teacher_exact_match"] == expected["eval_teacher_exact_match"]
    assert metrics["eval_teacher_loss"] == pytest.approx(expected["eval_teacher_loss"], abs=1e-4)
    assert metrics["eval_teacher_perplexity"] == pytest.approx(expected["eval_teacher_perplexity"], rel=1e-4)
    assert {k for k in metrics if k.startswith("eval_teacher_")} == set(expected)  # what a local teacher reports
