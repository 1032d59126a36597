"""The mlm objective: masking statistics, smoothing, row gathering, and a real distillation."""

import json
import math
import os
import pickle

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForMaskedLM, BertForMaskedLM

from conftest import TORCHRUN, VOCAB, read_metrics, run_train, save_model, tiny_bert_config
from distillation.losses import forward_kl
from distillation.objectives.mlm import choose_mlm_positions, mask_tokens, mlm_token_probs
from distillation.pipeline import run
from lm_helpers import (  # noqa: F401 - single_thread is a fixture
    bert_tokenizer, call_script, config, heldout_loss, last_json_at_one_and_two_processes, objective_for, sentences, single_thread,
    write_binarized, write_counts,
)

pytestmark = pytest.mark.usefixtures("single_thread")

SPECIAL = [0, 1, 2, 3, 4]  # [PAD] [UNK] [CLS] [SEP] [MASK] in conftest's VOCAB
MASK_ID = 4


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """Tokenizer, binarized train/eval data and their counts, in the conftest vocabulary."""
    root = tmp_path_factory.mktemp("mlm")
    tok = bert_tokenizer(str(root / "tok"))
    train = write_binarized(root / "train.pickle", tok, sentences(160, seed=1))
    return {
        "root": root, "tok": str(root / "tok"), "tokenizer": tok, "train": train,
        "eval": write_binarized(root / "eval.pickle", tok, sentences(40, seed=2)),
        "counts": write_counts(root / "counts.pickle", train, len(VOCAB)),
    }


def test_token_probs_smoothing():
    counts = torch.tensor([5.0, 0.0, 1.0, 8.0, 1000.0, 3.0])
    probs = mlm_token_probs(counts, 0.7, special_ids=[0, 5])
    expected = torch.tensor([0.0, 1.0, 1.0, 8.0**-0.7, 1000.0**-0.7, 0.0])
    assert torch.allclose(probs, expected)
    assert torch.equal(mlm_token_probs(counts, 0.0, [0]), torch.tensor([0.0, 1, 1, 1, 1, 1]))


def _big_batch(rows=240, width=520, seed=0):
    """[CLS] words... [SEP] + padding, with [UNK]s inside: >= 100k real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, len(VOCAB), (rows, width), generator=g)
    ids[torch.rand(rows, width, generator=g) < 0.05] = 1  # [UNK]: special, never chosen
    lengths = torch.randint(width // 2, width + 1, (rows,), generator=g)
    lengths[: rows // 2] = width
    mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
    ids[:, 0] = 2
    ids[torch.arange(rows), lengths - 1] = 3
    return ids.masked_fill(mask == 0, 0), mask


def test_masking_statistics_on_100k_tokens(lm):
    objective = objective_for(config(objective="mlm", token_counts=lm["counts"], student_config="x", tokenizer_name=lm["tok"]))
    ids, mask = _big_batch()
    real = int(mask.sum())
    assert real >= 100_000
    torch.manual_seed(1)  # training draws from the global RNG (saved in checkpoints)
    out = objective.prepare_batch({"input_ids": ids, "attention_mask": mask})
    chosen = out["labels"] != -100
    assert int(chosen.sum()) == math.ceil(0.15 * real)
    assert torch.equal(out["labels"][chosen], ids[chosen])
    assert not torch.isin(ids[chosen], torch.tensor(SPECIAL)).any(), "a special token or padding was chosen"
    assert torch.equal(out["input_ids"][~chosen], ids[~chosen]), "an unchosen position changed"
    new, old = out["input_ids"][chosen], ids[chosen]
    n_words = len(VOCAB) - len(SPECIAL)
    shares = {"mask": (new == MASK_ID).float().mean(), "same": (new == old).float().mean(),
              "random": ((new != MASK_ID) & (new != old)).float().mean()}
    # A random replacement equals the original 1 time in n_words.
    expected = {"mask": 0.8, "same": 0.1 + 0.1 / n_words, "random": 0.1 * (1 - 1 / n_words)}
    for k in shares:
        assert abs(shares[k] - expected[k]) < 0.015, (k, shares[k])
    replaced = new[(new != MASK_ID) & (new != old)]
    assert not torch.isin(replaced, torch.tensor(SPECIAL)).any(), "a special token was used as a replacement"
    # Evaluation (a seeded generator) chooses uniformly: each word's share of the chosen
    # positions is its share of the choosable ones, whatever its corpus count.
    chosen_eval = objective.prepare_batch({"input_ids": ids, "attention_mask": mask}, torch.Generator().manual_seed(1))["labels"]
    choosable = ids[(mask == 1) & ~torch.isin(ids, torch.tensor(SPECIAL))]
    picked = chosen_eval[chosen_eval != -100]
    for word in range(len(SPECIAL), len(VOCAB)):
        assert abs((picked == word).float().mean() - (choosable == word).float().mean()) < 0.01


def test_rare_tokens_are_chosen_more_and_generator_is_reproducible():
    counts = torch.ones(10)
    counts[5], counts[6] = 10_000, 10  # equally present in the batch, very unequal in the corpus
    probs = mlm_token_probs(counts, 0.7, SPECIAL)
    ids = torch.tensor([[5, 6] * 500])
    mask = torch.ones_like(ids)
    picked = ids.reshape(-1)[choose_mlm_positions(ids, mask, probs, 0.1, torch.Generator().manual_seed(0))]
    assert (picked == 6).sum() > 5 * (picked == 5).sum()
    a = choose_mlm_positions(ids, mask, probs, 0.1, torch.Generator().manual_seed(3))
    b = choose_mlm_positions(ids, mask, probs, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    inputs, labels = mask_tokens(ids, a, MASK_ID, torch.arange(5, 10), 1.0, 0.0)
    assert (inputs.reshape(-1)[a] == MASK_ID).all() and (labels.reshape(-1)[a] == ids.reshape(-1)[a]).all()


@pytest.mark.parametrize("restrict", [False, True])
def test_kl_and_task_loss_over_gathered_rows_match_dense_formulas(lm, restrict):
    objective = objective_for(config(objective="mlm", token_counts=lm["counts"], student_config="x",
                                     tokenizer_name=lm["tok"], restrict_ce_to_mask=restrict))
    g = torch.Generator().manual_seed(0)
    ids, mask = _big_batch(rows=6, width=40)
    batch = objective.prepare_batch({"input_ids": ids, "attention_mask": mask}, g)
    s, t = torch.randn(6, 40, len(VOCAB), generator=g), torch.randn(6, 40, len(VOCAB), generator=g)
    counts = objective.counts(batch)
    ours = forward_kl(*objective.distill_rows(s, t, batch), 2.0) / counts["rows"]
    # The reference's way: a (B, S, V) boolean mask and masked_select.
    rows = (batch["labels"] != -100) if restrict else mask.bool()
    sel = rows.unsqueeze(-1).expand_as(s)
    s_rows, t_rows = torch.masked_select(s, sel).view(-1, len(VOCAB)), torch.masked_select(t, sel).view(-1, len(VOCAB))
    dense = F.kl_div(F.log_softmax(s_rows / 2.0, -1), F.softmax(t_rows / 2.0, -1), reduction="batchmean") * 4.0
    assert torch.allclose(ours, dense, rtol=1e-5)
    task = objective.task_loss(s, batch) / counts["task"]
    assert torch.allclose(task, F.cross_entropy(s.view(-1, len(VOCAB)), batch["labels"].view(-1)), rtol=1e-5)
    metrics = objective.eval_metrics(objective.eval_batch(s, t, batch))
    assert metrics["perplexity"] == pytest.approx(math.exp(task.item()), rel=1e-4)
    assert {"masked_accuracy", "teacher_perplexity", "teacher_masked_accuracy"} <= set(metrics)


def test_mlm_distillation_lowers_heldout_loss(lm):
    """A teacher trained here (teacher-less mlm), then a smaller student distilled from it with
    the DistilBERT recipe's loss terms (cosine through a projection: widths differ)."""
    root = lm["root"]
    teacher_cfg = root / "teacher.json"
    teacher_cfg.write_text(json.dumps({"model_type": "bert", **tiny_bert_config(layers=2, hidden=64).to_diff_dict()}))
    common = {"objective": "mlm", "data_file": lm["train"], "eval_file": lm["eval"], "token_counts": lm["counts"],
              "batch_size": 16, "gradient_accumulation_steps": 1, "log_interval": 5, "learning_rate": 3e-3}
    run(config(**common, student_config=str(teacher_cfg), tokenizer_name=lm["tok"], dump_path=str(root / "teacher"),
               max_steps=40, warmup_prop=0.0))
    torch.manual_seed(0)
    init = save_model(BertForMaskedLM(tiny_bert_config(layers=1, hidden=32)), lm["tokenizer"], str(root / "student_init"))
    dump = root / "student"
    summary = run(config(**common, teacher_name=str(root / "teacher" / "final"), student_name=init, dump_path=str(dump),
                         alpha_ce=5.0, alpha_task=2.0, alpha_cos=1.0, max_steps=30))
    train = [r for r in read_metrics(dump) if "loss" in r]
    assert {"loss_ce", "loss_mlm", "loss_cos"} <= set(train[-1])
    assert summary["eval_teacher_perplexity"] < summary["eval_perplexity"] * 2
    objective = objective_for(config(objective="mlm", token_counts=lm["counts"], student_config="x", tokenizer_name=lm["tok"]))
    before = heldout_loss(AutoModelForMaskedLM.from_pretrained(init), objective, lm["eval"])
    after = heldout_loss(AutoModelForMaskedLM.from_pretrained(dump / "final"), objective, lm["eval"])
    assert after < before - 0.3, (before, after)


def test_fsdp_on_two_processes_distils_mlm_and_final_loads(lm, tmp_path):
    """torchrun --nproc_per_node 2 ... --strategy fsdp: student and teacher sharded per block, a
    cosine loss through a projection; final/ is one whole from_pretrained folder, head still tied."""
    torch.manual_seed(0)
    teacher = save_model(BertForMaskedLM(tiny_bert_config(layers=2, hidden=64)), lm["tokenizer"], str(tmp_path / "teacher"))
    student = save_model(BertForMaskedLM(tiny_bert_config(layers=1, hidden=32)), lm["tokenizer"], str(tmp_path / "student"))
    dump = tmp_path / "run"
    args = ["--objective", "mlm", "--teacher_name", teacher, "--student_name", student, "--data_file", lm["train"],
            "--eval_file", lm["eval"], "--token_counts", lm["counts"], "--dump_path", dump, "--strategy", "fsdp",
            "--alpha_ce", 5, "--alpha_task", 2, "--alpha_cos", 1, "--batch_size", 8, "--gradient_accumulation_steps", 2,
            "--max_steps", 10, "--log_interval", 2, "--learning_rate", 3e-3, "--temperature", 1]
    proc = run_train(list(map(str, args)), launcher=TORCHRUN)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train = [r for r in read_metrics(dump) if "loss" in r]
    assert train[-1]["step"] == 10 and train[-1]["loss"] < 0.9 * train[0]["loss"], train
    model = AutoModelForMaskedLM.from_pretrained(dump / "final")
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    initial = AutoModelForMaskedLM.from_pretrained(student).state_dict()
    assert not torch.equal(initial["bert.encoder.layer.0.output.dense.weight"], model.state_dict()["bert.encoder.layer.0.output.dense.weight"])


def test_the_reference_readme_command_trains_with_its_mlm_term(lm, tmp_path, capsys):
    """The reference README's DistilBERT command, scaled down: its --alpha_clm 0.0 (which the
    reference required with --mlm) must leave the MLM loss at weight 2."""
    teacher = save_model(BertForMaskedLM(tiny_bert_config(layers=2)), lm["tokenizer"], str(tmp_path / "bert"))
    student = tmp_path / "distilbert.json"
    student.write_text(json.dumps({"vocab_size": len(VOCAB), "dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64,
                                   "max_position_embeddings": 64}))
    dump = tmp_path / "run"
    command = ["--student_type", "distilbert", "--student_config", student, "--teacher_type", "bert", "--teacher_name", teacher,
               "--mlm", "--alpha_ce", "5.0", "--alpha_mlm", "2.0", "--alpha_cos", "1.0", "--alpha_clm", "0.0",
               "--initializer_range", "0.02", "--token_counts", lm["counts"], "--data_file", lm["train"], "--dump_path", dump,
               "--force", "--n_epoch", "1", "--batch_size", "8", "--gradient_accumulation_steps", "2", "--log_interval", "2"]
    code, err = call_script(capsys, "train.py", *command)
    assert code == 0, err
    params = json.load(open(dump / "parameters.json"))
    assert (params["objective"], params["alpha_mlm"], params["alpha_clm"], params["alpha_task"]) == ("mlm", 2.0, 0.0, 2.0)
    lines = [r for r in read_metrics(dump) if "loss" in r]
    assert len(lines) == 10  # 20 micro-batches, a line every 2 of them (the reference counts iterations)
    for r in lines:
        assert r["loss_mlm"] > 0.5
        assert r["loss"] == pytest.approx(5 * r["loss_ce"] + 2 * r["loss_mlm"] + r["loss_cos"], rel=1e-6)
    code, err = call_script(capsys, "train.py", *[str(a) for a in command], "--alpha_clm", "1")
    assert code == 2 and len(err) == 1 and "--alpha_clm 1.0 weighs the CLM loss, which --objective mlm does not have" in err[0]


def _args(lm, student, dump, **overrides):
    values = {"--objective": "mlm", "--student_config": str(student), "--tokenizer_name": lm["tok"], "--data_file": lm["train"],
              "--token_counts": lm["counts"], "--dump_path": str(dump), "--alpha_ce": "0", "--alpha_task": "1", **overrides}
    return [x for k, v in values.items() if v is not None for x in ((k,) if v is True else (k, v))]


def test_bad_input_is_one_line_and_exit_2(lm, tmp_path, capsys):
    student, wide = tmp_path / "student.json", tmp_path / "wide.json"
    student.write_text(json.dumps({"model_type": "bert", **tiny_bert_config().to_diff_dict()}))
    wide.write_text(json.dumps({"model_type": "bert", **tiny_bert_config(vocab_size=40).to_diff_dict()}))
    narrow = tmp_path / "narrow.json"
    narrow.write_text(json.dumps({"model_type": "bert", **tiny_bert_config(vocab_size=20).to_diff_dict()}))
    short = tmp_path / "counts.pickle"
    short.write_bytes(pickle.dumps([1] * 10))
    teacher = save_model(BertForMaskedLM(tiny_bert_config()), lm["tokenizer"], str(tmp_path / "teacher"))
    dump = tmp_path / "run"
    cases = {
        "--token_counts: holds 10 counts but the model's vocab_size is 25": _args(lm, student, dump, **{"--token_counts": str(short)}),
        "--token_counts is required": _args(lm, wide, dump, **{"--objective": None, "--mlm": True, "--token_counts": None}),
        "the student has vocab_size=20, the tokenizer 25 tokens": _args(lm, narrow, dump, **{"--teacher_name": teacher, "--alpha_ce": "1"}),
    }
    for expected, args in cases.items():
        code, err = call_script(capsys, "train.py", *args)
        assert code == 2 and len(err) == 1 and expected in err[0], (expected, err)
        assert not os.path.exists(dump)
    not_binarized = tmp_path / "dict.pickle"
    not_binarized.write_bytes(pickle.dumps({"input_ids": [[1, 2, 3]]}))
    proc = run_train(_args(lm, student, dump, **{"--data_file": str(not_binarized)}))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--data_file" in proc.stderr and "not a binarized dataset" in proc.stderr
    assert not os.path.exists(dump)


EVALUATE_ONLY = """
import json, sys
sys.path.insert(0, {root!r})
from distillation.cli.options import config_from_cli
from distillation.distributed import exit_process, init_distributed, shutdown
from distillation.evaluation import evaluate
from distillation.pipeline import build

cfg = config_from_cli(sys.argv[1:])
env = init_distributed()
d, _ = build(cfg, env)
first = evaluate(d.model, d.teacher, d.objective, d.eval_dataset, cfg.eval_batch_size, env, d.autocast, cfg.seed)
again = evaluate(d.model, d.teacher, d.objective, d.eval_dataset, cfg.eval_batch_size, env, d.autocast, cfg.seed)
if env.is_main:
    print(json.dumps([first, again]))
shutdown(env)
exit_process(0)  # a torchrun worker ends without finalizing (distributed.exit_process)
"""


def test_mlm_evaluation_scores_the_same_masks_at_one_and_two_processes(lm, tmp_path):
    """The masks of an evaluation batch come from its place in the global batch order, not from
    its place in one rank's share: 1 and 2 processes report the same eval_* (7 batches of 6: the
    second rank runs a padding batch too), and successive evaluations agree."""
    torch.manual_seed(0)
    teacher = save_model(BertForMaskedLM(tiny_bert_config(layers=2)), lm["tokenizer"], str(tmp_path / "teacher"))
    student = save_model(BertForMaskedLM(tiny_bert_config(layers=1)), lm["tokenizer"], str(tmp_path / "student"))
    args = ["--objective", "mlm", "--teacher_name", teacher, "--student_name", student, "--data_file", lm["train"],
            "--eval_file", lm["eval"], "--token_counts", lm["counts"], "--dump_path", tmp_path / "unused", "--alpha_ce", 1,
            "--eval_batch_size", 6, "--gradient_accumulation_steps", 1]
    runs = last_json_at_one_and_two_processes(EVALUATE_ONLY, tmp_path, args)
    one, two = runs[1][0], runs[2][0]
    assert one.keys() == two.keys() and {"eval_loss", "eval_masked_accuracy", "eval_teacher_loss"} <= one.keys()
    for key in one:
        assert two[key] == pytest.approx(one[key], rel=1e-6, abs=1e-6), key
    assert runs[1][1] == one and runs[2][1] == two
