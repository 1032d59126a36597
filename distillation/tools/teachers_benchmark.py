"""What scripts/benchmark_teachers.py runs: a student distilled from each of several teachers
alone against the same student distilled from their mixture (--teachers, docs/several-teachers.md).

Ensemble mode (classification; real assets are the demo's, fetched once, DESIGN §7):

1. data      the demo's split of the tweets (distillation.tools.demo: 3000 train / 1000 test,
             shuffled with the demo's seed 42)
2. teachers  all-MiniLM-L6-v2 fine-tuned on the train split as the demo fine-tunes its teacher
             (same epochs, learning rate, batch, precision; teacher-less train.py), once per
             --teacher_seeds (1 2 3)
3. student   ONE initialisation for every run: the base MiniLM's layers 0,3,5 (the demo's choice
             of 3 of 6, students.default_layers) extracted by scripts/extract.py, without a
             head (train.py adds a fresh 3-way head seeded by the run's seed). Extracting it
             from one of the fine-tuned teachers would start its runs from that teacher's own
             weights and head, which favours that teacher.
4. distil    for every student seed (--seeds: 5 6 7), the student distilled from each teacher
             alone (--teacher_name) and from the equal mixture of all of them (--teachers), at
             the classification defaults: only the flags the demo's distil stage sets (epochs,
             batch, sequence length, precision, logging), no evaluation during training.
5. score     on the test split, in fp32, here: every teacher, the ensemble (argmax of the mean
             of the teachers' probabilities at T = 1) and every run's final/ student: accuracy,
             macro-F1, the student's agreement with the ensemble and with each teacher.

Every training is a child process (scripts/train.py, scripts/extract.py) timed by
offline_benchmark.timed_script, with OMP_NUM_THREADS=--threads. results.json under --out keeps
every finished teacher and run; a later invocation skips them. Quick mode builds tiny BERTs and a
few dozen labelled texts instead (seconds; the test runs it).

Routing mode: routing_benchmark.py.
"""

import json
import os
import random
import statistics

import torch

from distillation.tools.offline_benchmark import timed_script

QUICK = dict(train_size=48, test_size=24, batch_size=16, max_seq_length=32, teacher_epochs=2, teacher_lr=1e-3, distil_epochs=1)


def ensemble_assets(out: str, cache_dir: str, settings) -> dict:
    """The demo's MiniLM and tweets split (files under out/data) and the shared student init."""
    from distillation.tools.demo import split_tweets
    from distillation.tools.fetch import fetch_assets

    fetched = fetch_assets(cache_dir)
    data = os.path.join(out, "data")
    if not os.path.isdir(data):  # the demo's split (its seed 42), made once
        split_tweets(fetched["tweets"], data, settings)
    return _with_student(out, {"model": fetched["model"], "train": os.path.join(data, "train.jsonl"),
                               "test": os.path.join(data, "test.jsonl")})


def quick_ensemble_assets(out: str, settings) -> dict:
    """A 4-layer BERT encoder (no head) built from a config, and labelled texts of a tiny grammar."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = {"negative": "bad dull awful boring", "neutral": "okay fine plain average", "positive": "good great fun lovely"}
    filler = "the a this movie film plot actor is was".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + filler + " ".join(words.values()).split()
    model = os.path.join(out, "base")
    if not os.path.isdir(model):
        core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
        core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                      sep_token="[SEP]", mask_token="[MASK]")
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                            max_position_embeddings=64)
        BertModel(config).save_pretrained(model)
        tok.save_pretrained(model)
    data = os.path.join(out, "data")
    if not os.path.isdir(data):
        os.makedirs(data)
        rng = random.Random(0)
        records = []
        for _ in range(settings.train_size + settings.test_size):
            label = rng.choice(sorted(words))
            text = [rng.choice(filler) for _ in range(rng.randint(3, 8))] + [rng.choice(words[label].split())]
            rng.shuffle(text)
            records.append({"text": " ".join(text), "label": label})
        for name, part in (("train", records[: settings.train_size]), ("test", records[settings.train_size :])):
            with open(os.path.join(data, f"{name}.jsonl"), "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in part)
    return _with_student(out, {"model": model, "train": os.path.join(data, "train.jsonl"), "test": os.path.join(data, "test.jsonl")})


def _with_student(out: str, assets: dict) -> dict:
    """The one student init of every run: half of the base encoder's layers (default_layers)."""
    from distillation.models import load_config
    from distillation.students import default_layers

    n = load_config(assets["model"], "--model").num_hidden_layers
    layers = default_layers(n, max(1, n // 2))
    student = os.path.join(out, "student_init")
    if not os.path.isdir(student):
        timed_script("extract.py", "--teacher", assets["model"], "--layers", ",".join(map(str, layers)), "--dump_path", student)
    return {**assets, "student": student, "student_layers": layers}


def _common(settings, assets: dict) -> list:
    """train.py flags of the demo's every training stage (demo.run_demo's `common`, seed aside)."""
    return ["--objective", "sequence_classification", "--data_file", assets["train"], "--max_seq_length", settings.max_seq_length,
            "--batch_size", settings.batch_size, "--precision", settings.precision, "--log_interval", 20,
            "--checkpoint_interval", 100_000, "--force"]


def teacher_dir(out: str, seed: int) -> str:
    return os.path.join(out, f"teacher-seed{seed}", "final")


def benchmark(args, settings, assets: dict) -> dict:
    """Run what results.json under args.out lacks; returns it:
    {"teachers": {"teacher-seed<S>": {seconds, accuracy, macro_f1}}, "ensemble": {accuracy, macro_f1},
     "runs": {"<teacher-seed<S> | mix>-seed<N>": {accuracy, macro_f1, agreement, agreement_teachers, seconds, steps}},
     "settings": {...}}."""
    path = os.path.join(args.out, "results.json")
    results = json.load(open(path)) if os.path.isfile(path) else {}
    results["settings"] = {"teacher_seeds": args.teacher_seeds, "seeds": args.seeds, "threads": args.threads,
                           "student_init": f"{assets['model']} layers {assets['student_layers']}", "quick": args.quick,
                           **{k: getattr(settings, k) for k in ("train_size", "test_size", "batch_size", "max_seq_length", "precision",
                                                               "teacher_epochs", "teacher_lr", "distil_epochs")}}
    teachers, runs = results.setdefault("teachers", {}), results.setdefault("runs", {})

    def save():
        with open(path, "w") as f:
            json.dump(results, f, indent=2)

    common = _common(settings, assets)
    for seed in args.teacher_seeds:
        name = f"teacher-seed{seed}"
        if name in teachers and os.path.isdir(teacher_dir(args.out, seed)):
            continue
        # demo.run_demo's "fine-tune teacher" stage: no teacher, hard labels only, its epochs and lr
        seconds = timed_script("train.py", *common, "--seed", seed, "--student_name", assets["model"], "--alpha_ce", 0,
                               "--alpha_task", 1, "--n_epoch", settings.teacher_epochs, "--learning_rate", settings.teacher_lr,
                               "--dump_path", os.path.dirname(teacher_dir(args.out, seed)), threads=args.threads)
        teachers[name] = {"seconds": seconds}
        save()
    folders = [teacher_dir(args.out, s) for s in args.teacher_seeds]
    mix = os.path.join(args.out, "teachers-mix.json")
    with open(mix, "w") as f:
        json.dump([{"teacher": t} for t in folders], f, indent=2)

    scorer = Scorer(folders, assets["test"], settings.max_seq_length)
    for seed, t in zip(args.teacher_seeds, folders):
        teachers[f"teacher-seed{seed}"].update(scorer.metrics(scorer.teacher_logits[t]))
    results["ensemble"] = scorer.metrics(scorer.ensemble_logits)
    save()

    for seed in args.seeds:
        kinds = [(f"teacher-seed{s}", ["--teacher_name", t]) for s, t in zip(args.teacher_seeds, folders)] + [("mix", ["--teachers", mix])]
        for kind, teacher in kinds:
            name = f"{kind}-seed{seed}"
            if name in runs:
                continue
            dump = os.path.join(args.out, name)
            seconds = timed_script("train.py", *common, "--seed", seed, "--student_name", assets["student"], "--n_epoch",
                                   settings.distil_epochs, *teacher, *args.extra, "--dump_path", dump, threads=args.threads)
            with open(os.path.join(dump, "summary.json")) as f:
                summary = json.load(f)
            runs[name] = {**scorer.student_metrics(os.path.join(dump, "final")), "seconds": seconds,
                          "train_s": summary["wall_time_s"], "steps": summary["step"]}
            if "teachers" in summary:
                runs[name]["taught"] = [t["examples"] for t in summary["teachers"]]
            save()
    return results


class Scorer:
    """Test-split logits of the teachers (computed once) and metrics of any student against
    the labels, the ensemble and each teacher. fp32, batches sorted by length (report.py's way)."""

    def __init__(self, teachers: list, test_file: str, max_seq_length: int):
        from transformers import AutoTokenizer

        from distillation.config import DistillConfig
        from distillation.objectives.classification import SequenceClassification

        # teachers[0]'s label names fix each string label's id, as in training
        cfg = DistillConfig(max_seq_length=max_seq_length, teacher_name=teachers[0])
        self.objective = SequenceClassification(cfg, AutoTokenizer.from_pretrained(teachers[0]))
        self.dataset = self.objective.load_dataset(test_file, "--eval_file")
        self.id2label = None
        self.labels, self.teacher_logits = None, {}
        for t in teachers:
            self.teacher_logits[t] = self.logits(t)
        # argmax of the mean of the teachers' probabilities at T = 1; as logits, the log of that mean
        probs = torch.stack([logits.softmax(-1) for logits in self.teacher_logits.values()]).mean(0)
        self.ensemble_logits = probs.log()

    @torch.inference_mode()
    def logits(self, folder: str) -> torch.Tensor:
        """[test examples, classes] fp32 logits of the classifier at `folder`, in the file's order."""
        from distillation.models import forward_inputs
        from distillation.tools.report import load_classifier

        model = load_classifier(folder, "--model").float()
        names = {int(k): v for k, v in model.config.id2label.items()}
        if self.id2label is None:
            self.id2label = names
        elif names != self.id2label:
            raise RuntimeError(f"'{folder}' has labels {names}, the first teacher {self.id2label}")
        accepted = forward_inputs(model)
        order = sorted(range(len(self.dataset)), key=self.dataset.lengths.__getitem__)
        out, labels = [None] * len(order), [None] * len(order)
        for first in range(0, len(order), 64):
            rows = order[first : first + 64]
            batch = self.objective.prepare_batch(self.objective.collate([self.dataset[i] for i in rows]))
            inputs = self.objective.model_inputs(batch)
            got = model(**{k: v for k, v in inputs.items() if k in accepted}).logits.float()
            for j, i in enumerate(rows):
                out[i], labels[i] = got[j], batch["labels"][j]
        if self.labels is None:
            self.labels = torch.stack(labels)
        return torch.stack(out)

    def metrics(self, logits: torch.Tensor) -> dict:
        from distillation.objectives.classification import accuracy, macro_f1

        pred = logits.argmax(-1)
        return {"accuracy": accuracy(pred, self.labels), "macro_f1": macro_f1(pred, self.labels)}

    def student_metrics(self, folder: str) -> dict:
        """metrics(), and how often the student's prediction is the ensemble's and each teacher's."""
        from distillation.objectives.classification import accuracy

        logits = self.logits(folder)
        pred = logits.argmax(-1)
        return {**self.metrics(logits), "agreement": accuracy(pred, self.ensemble_logits.argmax(-1)),
                "agreement_teachers": [accuracy(pred, t.argmax(-1)) for t in self.teacher_logits.values()]}


def cell(values: list, fmt) -> str:
    got = [v for v in values if v is not None]
    text = ", ".join("—" if v is None else fmt(v) for v in values)
    return text + (f" (mean {fmt(statistics.mean(got))})" if len(got) == len(values) and len(values) > 1 else "")


def format_table(args, results: dict) -> str:
    """Per distillation (each teacher alone, the mix): accuracy, macro-F1, agreement with the
    ensemble (per seed and mean), wall time; then the teachers' and the ensemble's own scores."""
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    runs = results.get("runs", {})
    kinds = [f"teacher-seed{s}" for s in args.teacher_seeds] + ["mix"]
    lines = [f"Students (seeds {', '.join(map(str, args.seeds))}), test split, %:", "",
             "| distilled from | accuracy | macro-F1 | agreement with the ensemble | wall time, s |", "|---|---:|---:|---:|---:|"]
    for kind in kinds:
        got = [runs.get(f"{kind}-seed{s}") for s in args.seeds]
        if not any(got):
            continue
        cells = [cell([g and g[key] for g in got], pct) for key in ("accuracy", "macro_f1", "agreement")]
        cells.append(cell([g and g["seconds"] for g in got], lambda x: f"{x:.0f}"))
        label = f"teacher {kind[len('teacher-seed'):]} alone" if kind != "mix" else "the mix of all (--teachers)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| teacher | accuracy | macro-F1 | fine-tune wall time, s |", "|---|---:|---:|---:|"]
    for s in args.teacher_seeds:
        t = results.get("teachers", {}).get(f"teacher-seed{s}")
        if t and "accuracy" in t:
            lines.append(f"| seed {s} | {pct(t['accuracy'])} | {pct(t['macro_f1'])} | {t['seconds']:.0f} |")
    e = results.get("ensemble")
    if e:
        lines.append(f"| ensemble (mean of probabilities) | {pct(e['accuracy'])} | {pct(e['macro_f1'])} | |")
    return "\n".join(lines)
