"""What scripts/benchmark.py trains on: a fine-tuned teacher, one student init, train/eval data.

Real mode (DESIGN §7, fetched once by `distillation.tools.fetch` as the demo does): the tweets,
repeats dropped, are shuffled once (fixed seed) and split into disjoint teacher-training,
held-out and benchmark-training sets. all-MiniLM-L6-v2 is a bare
`BertModel`, so it is first fine-tuned on the teacher split with our teacher-less mode
(plain fine-tuning) and cached under the work folder; the student is the teacher's layers
0,3,5 (`students.default_layers`). Quick mode builds tiny models and data in seconds.
"""

import csv
import json
import os
import random

from distillation.errors import InputError
from distillation.tools.fetch import fetch_assets
from distillation.students import default_layers, extract_student, save_student


def write_jsonl(path, texts, labels):
    with open(path, "w") as f:
        for text, label in zip(texts, labels):
            f.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


def real_assets(args, run_child) -> dict:
    """Data splits, the fine-tuned teacher and the student init for the real benchmark.

    `run_child(spec)` trains the teacher in a child process (the fine-tune is cached in
    `args.work_dir`, keyed by its settings, and reused by later invocations)."""
    fetched = {} if args.tweets and (args.minilm or args.teacher) else fetch_assets(args.cache_dir)
    tweets, minilm = args.tweets or fetched["tweets"], args.minilm or fetched.get("model")
    if not os.path.isfile(tweets):
        raise InputError(f"--tweets: no such file '{tweets}'")
    with open(tweets, encoding="latin-1", newline="") as f:
        pairs = [(r["text"].strip(), r["sentiment"].strip()) for r in csv.DictReader(f)]
    # ~2.5% of the tweets are repeats: the first copy only, so no held-out tweet is trained on.
    seen, rows = set(), []
    for text, label in pairs:
        if text and text not in seen:
            seen.add(text)
            rows.append((text, label))
    random.Random(0).shuffle(rows)
    sizes = {"teacher_train": args.teacher_train_size, "eval": args.eval_size, "train": args.train_size}
    if sum(sizes.values()) > len(rows):
        raise InputError(f"--train_size + --eval_size + --teacher_train_size exceed the {len(rows)} tweets")
    data_dir = os.path.join(args.work_dir, "data")
    os.makedirs(data_dir, exist_ok=True)
    splits, start = {}, 0
    for name, n in sizes.items():
        texts, labels = (list(col) for col in zip(*rows[start : start + n]))
        splits[name] = {"texts": texts, "labels": labels, "file": write_jsonl(os.path.join(data_dir, f"{name}.jsonl"), texts, labels)}
        start += n
    teacher = args.teacher or _fine_tuned_teacher(args, minilm, splits["teacher_train"]["file"], run_child)
    return {"teacher": teacher, "student": _student_init(teacher, args.work_dir, args.student_layers), **splits}


def _fine_tuned_teacher(args, minilm, data_file, run_child) -> str:
    if not os.path.isfile(os.path.join(minilm, "config.json")):
        raise InputError(f"--minilm: no model at '{minilm}' (expected a folder with config.json)")
    key = f"n{args.teacher_train_size}_e{args.teacher_epochs}"
    folder = os.path.join(args.work_dir, f"teacher_{key}")
    final = os.path.join(folder, "final")
    if not os.path.isfile(os.path.join(final, "config.json")):
        print(f"fine-tuning the MiniLM teacher on {args.teacher_train_size} tweets (once; cached in {folder})", flush=True)
        run_child({
            "side": "ours", "out": folder, "data_file": data_file, "teacher": None, "student": minilm,
            "epochs": args.teacher_epochs, "batch_size": 32, "learning_rate": 1e-4, "seed": args.seed,
            "precision": args.precision, "alpha_ce": 0.0, "alpha_task": 1.0,
        })
    return final


def _student_init(teacher_dir: str, work_dir: str, n_layers: int) -> str:
    """The teacher's evenly spread layers, saved once for both sides to load."""
    from transformers import AutoModelForSequenceClassification

    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    layers = default_layers(teacher.config.num_hidden_layers, n_layers)
    folder = os.path.join(work_dir, "student_init")
    save_student(extract_student(teacher, layers), folder, teacher_dir)
    return folder


# --- quick mode: tiny models and data, nothing read from disk or network ------------------
_WORDS = "the a is was movie film plot actor it this".split()
_CUES = {"negative": "bad awful boring hate".split(), "positive": "good great fun love".split()}


def _tiny_texts(n, seed):
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.choice(sorted(_CUES))
        words = rng.choices(_WORDS, k=rng.randint(2, 24)) + rng.sample(_CUES[label], 2)
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


def quick_assets(args) -> dict:
    """A 4-layer tiny BERT teacher, its 2-layer student, and cue-word data."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    root = os.path.join(args.work_dir, "quick")
    os.makedirs(root, exist_ok=True)
    vocab = os.path.join(root, "vocab.txt")
    with open(vocab, "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS, *sum(_CUES.values(), [])]) + "\n")
    tokenizer = BertTokenizerFast(vocab=vocab, model_max_length=64)  # transformers 5 ignores vocab_file=
    torch.manual_seed(args.seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1},
    )
    teacher = os.path.join(root, "teacher")
    BertForSequenceClassification(config).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    splits = {}
    for name, n, seed in (("train", args.train_size, 1), ("eval", args.eval_size, 2)):
        texts, labels = _tiny_texts(n, seed)
        splits[name] = {"texts": texts, "labels": labels, "file": write_jsonl(os.path.join(root, f"{name}.jsonl"), texts, labels)}
    return {"teacher": teacher, "student": _student_init(teacher, root, 2), **splits}
