"""Several teachers (--teachers): routing equals each domain's examples with its teacher alone,
mixing with weights (1, 0) or of two equal teachers equals one teacher, 1 and 2 processes agree,
and bad files and routes are refused before anything is written."""

import json
import os

import pytest
import torch
from transformers import AutoTokenizer, BertForSequenceClassification

from conftest import (
    TORCHRUN, build_distiller, final_weights, fit_briefly, make_examples, make_tokenizer, read_metrics, run_train, save_model,
    tiny_bert_config, train_args, train_in_process, write_jsonl,
)


@pytest.fixture(scope="module")
def several(assets, tmp_path_factory):
    """A second teacher that disagrees with the first (fitted to flipped labels), data whose
    `domain` column routes every third example to it, and the --teachers files."""
    root = tmp_path_factory.mktemp("several")
    tok = make_tokenizer(str(root / "tok"))
    torch.manual_seed(3)
    flipped = [{**e, "label": 1 - e["label"]} for e in make_examples(96, seed=5)]
    other = save_model(fit_briefly(BertForSequenceClassification(tiny_bert_config(layers=3)), tok, flipped), tok, str(root / "other"))

    def routed(rows):
        return [{**e, "domain": "b" if i % 3 == 0 else "a"} for i, e in enumerate(rows)]

    def teachers(name, entries):
        path = root / f"{name}.json"
        path.write_text(json.dumps(entries))
        return str(path)

    return {
        "other": other,
        "train": write_jsonl(str(root / "train.jsonl"), routed(make_examples(96, seed=1))),
        "test": write_jsonl(str(root / "test.jsonl"), routed(make_examples(40, seed=2))),
        "routed": teachers("routed", [{"teacher": assets["teacher"], "route": "a"}, {"teacher": other, "route": "b"}]),
        "first_only": teachers("first_only", [{"teacher": assets["teacher"], "weight": 1}, {"teacher": other, "weight": 0}]),
        "twice": teachers("twice", [{"teacher": assets["teacher"]}, {"teacher": assets["teacher"], "weight": 3}]),
        "root": str(root),
    }


def _terms(assets, dump, rows, **overrides):
    """The loss sums of one micro-batch of the training examples `rows`, from the fresh student."""
    distiller, data, _ = build_distiller(assets, dump, cache_teacher_logits=False, **overrides)
    batch = distiller.objective.prepare_batch(distiller.objective.collate([data[i] for i in rows]))
    with torch.no_grad():
        return {k: float(v) for k, v in distiller._loss_terms(batch).items()}


def test_routing_is_each_domains_examples_with_its_teacher_alone(assets, several, tmp_path):
    rows = list(range(16))
    route_b = [i for i in rows if i % 3 == 0]
    route_a = [i for i in rows if i % 3]
    data = {"data_file": several["train"]}
    routed = _terms(assets, tmp_path / "r", rows, teacher_name=None, teachers=several["routed"], teacher_column="domain", **data)
    alone_a = _terms(assets, tmp_path / "a", route_a, **data)
    alone_b = _terms(assets, tmp_path / "b", route_b, teacher_name=several["other"], **data)
    for term in ("ce", "task"):
        assert routed[term] == pytest.approx(alone_a[term] + alone_b[term], rel=1e-6, abs=1e-6), term
    # the two teachers disagree: had every row gone to one of them, the sum would differ
    everything_a = _terms(assets, tmp_path / "all_a", rows, **data)
    assert abs(everything_a["ce"] - routed["ce"]) > 1e-3 * routed["ce"]  # far above the 1e-6 above


@pytest.mark.parametrize("file", ["first_only", "twice"])
def test_a_mix_of_one_teacher_is_that_teacher(assets, several, tmp_path, file):
    """Weights (1, 0), and the same teacher twice at any weights: the first teacher's targets."""
    rows = list(range(16))
    mixed = _terms(assets, tmp_path / "m", rows, teacher_name=None, teachers=several[file])
    alone = _terms(assets, tmp_path / "a", rows)
    assert mixed == pytest.approx(alone, rel=1e-6, abs=1e-6)


def test_an_even_mix_is_the_mean_of_the_teachers_probabilities(assets, several, tmp_path):
    """The target of a 50/50 mix, by hand from the two teachers' own logits."""
    entries = [{"teacher": assets["teacher"]}, {"teacher": several["other"]}]
    path = tmp_path / "even.json"
    path.write_text(json.dumps(entries))
    distiller, data, _ = build_distiller(assets, tmp_path / "run", teacher_name=None, teachers=str(path), temperature=2.0,
                                         cache_teacher_logits=False)
    batch = distiller.objective.collate([data[i] for i in range(12)])
    mixed, _ = distiller.teacher.outputs(batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        probs = [BertForSequenceClassification.from_pretrained(t).eval()(**inputs).logits.div(2.0).softmax(-1) for t in
                 (assets["teacher"], several["other"])]
    assert torch.allclose(mixed.div(2.0).softmax(-1), (probs[0] + probs[1]) / 2, atol=1e-6)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_routed_run_at_one_and_two_processes(assets, several, tmp_path, strategy):
    """The same global batch at 1 and 2 processes (ddp; fsdp: both teachers sharded, run on every
    rank for every micro-batch, on one row where a rank holds none of theirs): the same losses
    step for step and the same student; the summary says which teacher taught how many examples."""
    common = ["--teachers", several["routed"], "--teacher_column", "domain", "--data_file", several["train"],
              "--eval_file", several["test"], "--no-group_by_size", "--log_interval", 1, "--n_epoch", 2, "--alpha_ce", 0.5,
              "--alpha_task", 0.5]
    one = run_train(without_teacher_name(train_args(assets, tmp_path / "one", "--batch_size", 8, *common)))
    two = run_train(without_teacher_name(train_args(assets, tmp_path / "two", "--batch_size", 4, "--strategy", strategy, *common)),
                    launcher=TORCHRUN)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    l1 = [r["loss"] for r in read_metrics(tmp_path / "one") if "loss" in r]
    l2 = [r["loss"] for r in read_metrics(tmp_path / "two") if "loss" in r]
    assert len(l1) == 24 and l2 == pytest.approx(l1, rel=1e-4)
    w1, w2 = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)
    for dump in ("one", "two"):
        summary = json.loads((tmp_path / dump / "summary.json").read_text())
        taught = {t["route"]: t["examples"] for t in summary["teachers"]}
        assert taught == {"a": 2 * 64, "b": 2 * 32}  # two epochs of 96 examples, every third routed to b
        assert "eval_teacher_accuracy" in summary  # the routed teachers' targets are scored at evaluation


def without_teacher_name(args):
    """train_args less its --teacher_name (the file names the teachers)."""
    i = args.index("--teacher_name")
    return args[:i] + args[i + 2:]


def _refused(argv, dump):  # exit 2, nothing written
    code = train_in_process([str(a) for a in argv])
    assert code == 2 and not os.path.exists(dump)


def test_a_route_missing_from_the_file_is_refused_naming_the_row(assets, several, tmp_path, capsys):
    rows = [json.loads(line) for line in open(several["train"])]
    rows[4]["domain"] = "c"
    data = write_jsonl(str(tmp_path / "train.jsonl"), rows)
    dump = tmp_path / "run"
    _refused(without_teacher_name(train_args(assets, dump, "--teachers", several["routed"], "--teacher_column", "domain",
                                             "--data_file", data)), dump)
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "line 5" in err and '"c"' in err and "(a, b)" in err, err


@pytest.mark.parametrize("entries,flags,message", [
    ([{"teacher": "A", "route": "a"}, {"teacher": "B", "route": "a"}], ["--teacher_column", "domain"], "same route 'a'"),
    ([{"teacher": "A", "route": "a"}, {"teacher": "B"}], [], "a \"route\" needs --teacher_column"),
    ([{"teacher": "A", "weight": -1}, {"teacher": "B"}], [], "\"weight\" must be a number >= 0"),
    ([{"teacher": "A"}], [], "at least two teachers"),
    ([{"teacher": "A", "rout": "a"}, {"teacher": "B"}], [], "unknown key 'rout'"),
    ([{"teacher": "A"}, {"teacher": "B"}], ["--alpha_cos", 1], "--alpha_cos is not available with several teachers"),
])
def test_bad_teacher_files_are_refused(assets, several, tmp_path, capsys, entries, flags, message):
    names = {"A": assets["teacher"], "B": several["other"]}
    path = tmp_path / "teachers.json"
    path.write_text(json.dumps([{**e, "teacher": names[e["teacher"]]} for e in entries]))
    dump = tmp_path / "run"
    _refused(without_teacher_name(train_args(assets, dump, "--teachers", path, "--data_file", several["train"], *flags)), dump)
    assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    """Two Llama teachers of one tokenizer (different weights), a student, instruction records
    whose `domain` routes every third one to the second teacher, and a top-4 cache of each."""
    from transformers import LlamaForCausalLM

    from lm_helpers import llama_pair, sentences

    root = tmp_path_factory.mktemp("causal")
    pair = llama_pair(root, 8, student_layers=1)
    torch.manual_seed(11)
    first = LlamaForCausalLM.from_pretrained(pair["teacher"])
    other = LlamaForCausalLM(first.config)
    pair["other"] = save_model(other, AutoTokenizer.from_pretrained(pair["teacher"]), str(root / "other"))
    lines = sentences(48, seed=3)
    pair["data"] = write_jsonl(str(root / "train.jsonl"), [
        {"instruction": a, "output": b, "domain": "b" if i % 3 == 0 else "a"} for i, (a, b) in enumerate(zip(lines[::2], lines[1::2]))])
    pair["text"] = write_jsonl(str(root / "text.jsonl"), [{"text": line, "domain": "b" if i % 3 == 0 else "a"} for i, line in enumerate(lines)])
    pair["caches"] = {}
    for name in ("teacher", "other"):
        from distillation.cli.cache_teacher import main as cache_main

        cache = str(root / f"cache-{name}")
        assert cache_main(["--teacher_name", pair[name], "--data_file", pair["data"], "--max_seq_length", "64", "--dump_path",
                           cache, "--method", "topk", "--k", "4"]) == 0
        pair["caches"][name] = cache
    for kind, (a, b) in {"local": (pair["teacher"], pair["other"]), "cached": (pair["caches"]["teacher"], pair["caches"]["other"])}.items():
        (root / f"{kind}.json").write_text(json.dumps([{"teacher": a, "route": "a"}, {"teacher": b, "route": "b"}]))
        pair[kind] = str(root / f"{kind}.json")
    return pair


def _causal_terms(pair, dump, rows, data="data", **teacher):
    from distillation.config import DistillConfig
    from distillation.distributed import DistEnv
    from distillation.pipeline import build

    values = {"objective": "clm", "student_name": pair["student"], "data_file": pair[data], "dump_path": str(dump),
              "max_seq_length": 64, "alpha_ce": 0.5, "alpha_task": 0.5, "temperature": 2.0, **teacher}
    distiller, _ = build(DistillConfig.from_dict(values), DistEnv())
    data = distiller.train_dataset
    batch = distiller.objective.prepare_batch(distiller.objective.collate([data[i] for i in rows]))
    with torch.no_grad():
        return {k: float(v) for k, v in distiller._loss_terms(batch).items()}


@pytest.mark.parametrize("kind,data", [("local", "data"), ("cached", "data"), ("local", "text")])
def test_routed_language_models_local_or_cached(causal, tmp_path, kind, data):
    """clm, [B, S, V] logits (local) or top-k targets per position (cached), on instruction or
    text records: routed equals each domain's examples with its teacher alone."""
    rows = list(range(12))
    a, b = [i for i in rows if i % 3], [i for i in rows if i % 3 == 0]
    flag = "teacher_name" if kind == "local" else "teacher_logits"
    alone = {"teacher": (causal["teacher"], causal["caches"]["teacher"]), "other": (causal["other"], causal["caches"]["other"])}
    pick = 0 if kind == "local" else 1
    routed = _causal_terms(causal, tmp_path / "r", rows, data, teachers=causal[kind], teacher_column="domain")
    alone_a = _causal_terms(causal, tmp_path / "a", a, data, **{flag: alone["teacher"][pick]})
    alone_b = _causal_terms(causal, tmp_path / "b", b, data, **{flag: alone["other"][pick]})
    for term in ("ce", "task"):
        assert routed[term] == pytest.approx(alone_a[term] + alone_b[term], rel=1e-5), term
    everything_a = _causal_terms(causal, tmp_path / "all", rows, data, **{flag: alone["teacher"][pick]})
    assert abs(everything_a["ce"] - routed["ce"]) > 1e-3 * routed["ce"]


def test_text_records_are_each_one_sequence_learned_whole(causal):
    """{"text": ...} records: the tokenizer's own special tokens, the text, one EOS; every token a target."""
    from lm_helpers import config, objective_for

    cfg = config(objective="clm", student_name=causal["student"])
    objective = objective_for(cfg)
    data = objective.load_dataset(causal["text"], "--data_file")
    tok = objective.tokenizer
    first = json.loads(open(causal["text"]).readline())["text"]
    assert tok(first)["input_ids"][-1] != tok.eos_token_id  # this tokenizer adds no special tokens: the EOS is the loader's
    assert data[0]["input_ids"] == tok(first)["input_ids"] + [tok.eos_token_id]
    assert data[0]["prompt_len"] == 0 and len(data) == 48 and data.routes is None


def test_evaluation_scores_each_teacher_alone_as_its_own_run_does(assets, several, tmp_path):
    """eval_teacher<i>_* of a run with several teachers are what a run with teacher i alone
    reports as eval_teacher_*."""
    from distillation.evaluation import evaluate

    def metrics(**teacher):
        d, _, _ = build_distiller(assets, tmp_path / str(len(os.listdir(tmp_path))), eval_file=several["test"], **teacher)
        return evaluate(d.model, d.teacher, d.objective, d.eval_dataset, 8, d.env, d.autocast, 0)

    both = metrics(teacher_name=None, teachers=several["routed"], teacher_column="domain", data_file=several["train"])
    for i, name in ((1, assets["teacher"]), (2, several["other"])):
        alone = metrics(teacher_name=name)
        own = {k.replace("eval_teacher_", ""): v for k, v in alone.items() if k.startswith("eval_teacher_")}
        assert own and {k: both[f"eval_teacher{i}_{k}"] for k in own} == pytest.approx(own, rel=1e-6)
    assert both["eval_teacher1_accuracy"] != both["eval_teacher2_accuracy"]  # two teachers that disagree


def test_the_memory_plan_has_a_row_for_each_teacher(assets, several, tmp_path):
    """fp32 teachers side by side: 4 bytes a parameter of each, counted off the saved models."""
    from distillation.memory_plan import plan_of_run

    d, _, _ = build_distiller(assets, tmp_path / "run", teacher_name=None, teachers=several["routed"], teacher_column="domain",
                              data_file=several["train"])
    plan = plan_of_run(d)
    counts = [sum(p.numel() for p in BertForSequenceClassification.from_pretrained(t).parameters())
              for t in (assets["teacher"], several["other"])]
    assert [b for _, b in plan.teachers] == [4 * n for n in counts] and plan.teacher == 4 * sum(counts)
    assert "teachers " in plan.line() and "teacher 2 " in plan.line()


def test_an_on_policy_sample_is_scored_by_its_routes_teacher(causal, tmp_path):
    """The student's own answers keep their examples' routes: each row's targets are its
    route's teacher's logits on the sampled tokens."""
    from transformers import LlamaForCausalLM

    from distillation.config import DistillConfig
    from distillation.distributed import DistEnv
    from distillation.pipeline import build

    values = {"objective": "clm", "student_name": causal["student"], "data_file": causal["data"], "dump_path": str(tmp_path / "r"),
              "max_seq_length": 64, "teachers": causal["local"], "teacher_column": "domain", "on_policy_fraction": 1.0,
              "max_new_tokens": 8}
    d, _ = build(DistillConfig.from_dict(values), DistEnv())
    rows = list(range(6))
    torch.manual_seed(0)
    batch = d.on_policy.sample(d.objective.prepare_batch(d.objective.collate([d.train_dataset[i] for i in rows])), d.model)
    targets, _ = d.teacher.outputs(batch)
    for name, mine in (("teacher", [i for i in rows if i % 3]), ("other", [i for i in rows if i % 3 == 0])):
        with torch.no_grad():
            own = LlamaForCausalLM.from_pretrained(causal[name]).eval()(
                input_ids=batch["input_ids"][mine], attention_mask=batch["attention_mask"][mine]).logits
        assert torch.allclose(targets[mine], own, atol=1e-5), name


def test_resume_refuses_other_routes_or_weights(assets, several, tmp_path, capsys):
    """The fingerprint holds every teacher with its route (and the column) or weight."""
    dump = tmp_path / "run"
    args = without_teacher_name(train_args(assets, dump, "--teachers", several["routed"], "--teacher_column", "domain",
                                           "--data_file", several["train"], "--eval_file", several["test"], "--max_steps", 2,
                                           "--checkpoint_interval", 1))
    assert train_in_process([str(a) for a in args]) == 0
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps([{**e, "route": {"a": "b", "b": "a"}[e["route"]]} for e in json.loads(open(several["routed"]).read())]))
    resume = [str(a) for a in args] + ["--resume"]
    before = {name: (dump / name).stat().st_mtime_ns for name in os.listdir(dump)}
    for flag, value, expect in (("--teachers", str(swapped), "another teacher"), ("--teacher_column", "label", "not a route")):
        i = resume.index(flag)
        capsys.readouterr()
        assert train_in_process(resume[:i + 1] + [value] + resume[i + 2:]) == 2
        err = capsys.readouterr().err
        assert expect in err, err
    assert {name: (dump / name).stat().st_mtime_ns for name in os.listdir(dump)} == before


def test_routed_served_teachers_are_the_served_teacher_alone(vllm_teacher, tmp_path):
    """Both routes to the one vLLM server: each micro-batch's rows asked per route (ahead of the
    step, prefetched) and put back in order give the run of that server alone."""
    from lm_helpers import sentences
    from vllm_server import build_student

    url, folder, _ = vllm_teacher
    data = write_jsonl(str(tmp_path / "train.jsonl"), [{"text": line, "domain": "b" if i % 3 == 0 else "a"}
                                                       for i, line in enumerate(sentences(12, seed=4))])
    teachers = tmp_path / "teachers.json"
    teachers.write_text(json.dumps([{"teacher": url, "route": "a"}, {"teacher": url, "route": "b"}]))
    common = ["--objective", "clm", "--student_name", build_student(folder, str(tmp_path / "student")), "--data_file", data,
              "--max_seq_length", 32, "--teacher_top_k", 8, "--no-group_by_size", "--max_steps", 3, "--log_interval", 1,
              "--batch_size", 4, "--seed", 3]
    runs = {"alone": ["--teacher_url", url], "routed": ["--teachers", teachers, "--teacher_column", "domain"]}
    for name, extra in runs.items():
        proc = run_train([*map(str, common + extra), "--dump_path", str(tmp_path / name)])
        assert proc.returncode == 0, proc.stderr[-3000:]
    alone, routed = ([r["loss"] for r in read_metrics(tmp_path / n) if "loss" in r] for n in runs)
    assert len(alone) == 3 and routed == pytest.approx(alone, rel=1e-4)
    summary = json.loads((tmp_path / "routed" / "summary.json").read_text())["teachers"]
    assert sum(t["examples"] for t in summary) == 12 and all(t["examples"] for t in summary)
    # one request a micro-batch and route, asked ahead by prepare: a sub-batch that outputs did
    # not find prefetched would be asked again
    assert all(1 <= t["teacher_requests"] <= 3 for t in summary), summary


@pytest.mark.parametrize("how", ["routed", "mixed"])
def test_chunked_losses_with_several_teachers_equal_the_dense_ones(causal, tmp_path, how):
    """--loss_chunk_rows: each teacher's LM head on its rows of a chunk (routed), or the chunk's
    logits of every teacher mixed: the same loss terms and gradients as from the teachers' logits."""
    from distillation.config import DistillConfig
    from distillation.distributed import DistEnv
    from distillation.pipeline import build

    (tmp_path / "mixed.json").write_text(json.dumps([{"teacher": causal["teacher"], "weight": 1}, {"teacher": causal["other"], "weight": 3}]))
    teachers = {"teachers": causal["local"], "teacher_column": "domain"} if how == "routed" else {"teachers": str(tmp_path / "mixed.json")}
    from distillation.evaluation import evaluate

    results = {}
    for chunk in (0, 5):
        values = {"objective": "clm", "student_name": causal["student"], "data_file": causal["text"], "eval_file": causal["text"],
                  "dump_path": str(tmp_path / f"c{chunk}"), "max_seq_length": 64, "alpha_ce": 0.5, "alpha_task": 0.5, "temperature": 2.0,
                  "loss_chunk_rows": chunk, **teachers}
        torch.manual_seed(0)
        distiller, _ = build(DistillConfig.from_dict(values), DistEnv())
        data = distiller.train_dataset
        batch = distiller.objective.prepare_batch(distiller.objective.collate([data[i] for i in range(9)]))
        terms = distiller._loss_terms(batch)
        (terms["ce"] + terms["task"]).backward()
        metrics = evaluate(distiller.model, distiller.teacher, distiller.objective, distiller.eval_dataset, 7, DistEnv(),
                           distiller.autocast, 0)
        if chunk:  # the memory plan: a chunk of rows of both teachers' logits and the student's, and all three's hidden states
            from distillation.memory_plan import plan_of_run

            rows, columns = distiller.cfg.batch_size * 64, distiller.objective.columns
            widths = distiller.model.student.config.hidden_size + sum(m.model.config.hidden_size for m in distiller.teacher.members)
            assert plan_of_run(distiller).logits == chunk * columns * (3 * 4 + 16) + rows * widths * 4
        results[chunk] = ({k: float(v.detach()) for k, v in terms.items()},
                          {n: p.grad.clone() for n, p in distiller.model.named_parameters() if p.grad is not None}, metrics)
    (dense, dense_grads, dense_eval), (chunked, chunked_grads, chunked_eval) = results[0], results[5]
    assert chunked == pytest.approx(dense, rel=1e-5)
    assert dense_grads.keys() == chunked_grads.keys()
    assert all(torch.allclose(dense_grads[n], chunked_grads[n], rtol=1e-4, atol=1e-6) for n in dense_grads)
    # evaluation: the routed or mixed targets, and each teacher alone, scored chunk by chunk as from logits
    assert {"eval_teacher_loss", "eval_teacher1_loss", "eval_teacher2_loss"} <= chunked_eval.keys()
    assert chunked_eval == pytest.approx(dense_eval, rel=1e-5)
