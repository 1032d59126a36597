"""A teacher with another tokenizer: alignment, the two losses, bits per byte, refusals.

The alignment is checked against a brute-force restatement of its definition on 1,000 random
texts read by two real tokenizers that ship with the tests (SmolLM2's byte-level BPE and
all-MiniLM-L6-v2's uncased WordPiece, under tests/assets). The losses are checked against
hand computations in float64, and the cross-tokenizer path with one tokenizer on both sides
against the one-tokenizer path's divergence.
"""

import gzip
import json
import math
import os
import random

import pytest
import torch
from tokenizers import Tokenizer, models, trainers
from transformers import AutoTokenizer, BertTokenizerFast, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conftest import read_metrics, save_model, train_in_process, write_jsonl
from distillation.data.alignment import EMPTY, PART, WHOLE, align, token_ends
from distillation.data.lm_text import ALPACA_PROMPT_NO_INPUT
from distillation.losses import DIVERGENCES, uld
from distillation.objectives.clm import CausalLM
from distillation.objectives.clm_cross import CrossTokenizerCLM
from distillation.token_losses import CrossTokenLosses, DenseTokenLosses
from lm_helpers import causal_tokenizer, config, sentences

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


@pytest.fixture(scope="module")
def real_tokenizers(tmp_path_factory):
    """SmolLM2-135M's byte-level BPE and all-MiniLM-L6-v2's WordPiece (uncased)."""
    with gzip.open(os.path.join(ASSETS, "smollm2-135m-tokenizer.json.gz"), "rt", encoding="utf-8") as f:
        smol = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(f.read()), eos_token="<|im_end|>")
    folder = tmp_path_factory.mktemp("minilm")
    with gzip.open(os.path.join(ASSETS, "all-minilm-l6-v2-vocab.txt.gz"), "rt", encoding="utf-8") as f:
        (folder / "vocab.txt").write_text(f.read(), encoding="utf-8")
    return smol, BertTokenizerFast(vocab=str(folder / "vocab.txt"))


def random_text(rng: random.Random) -> str:
    """Words, numbers, punctuation, runs of spaces and newlines, accents, CJK and emoji (4 bytes)."""
    pieces = ["the", "The", "quick", "naïve", "café", "don't", "it's", "hello", "world", "über", "日本語", "東京", "😀", "🚀🚀",
              "3.14", "2026", "x=y+1", "(a,b)", "—", "…", "\"quoted\"", "https://x.org/a?b=c", "™", "ß", "Ωmega", "tab\there"]
    seps = [" ", " ", " ", "  ", "\n", "\n\n", "", ", ", ". ", "   "]
    return "".join(rng.choice(pieces) + rng.choice(seps) for _ in range(rng.randint(1, 30)))


def brute_force_kinds(offsets):
    """token_ends' kinds from their definition: EMPTY covers no character; PART is followed (first
    covering token after it) by a token that starts before it ends."""
    kinds = []
    for i, (start, end) in enumerate(offsets):
        later = [s for s, e in offsets[i + 1 :] if e > s]
        kinds.append(EMPTY if end <= start else PART if later and later[0] < end else WHOLE)
    return kinds


def brute_force_align(student, teacher):
    """align's pairs from their definition, searching every teacher position for each student one."""
    (s_ends, s_kinds), (t_ends, t_kinds) = student, teacher
    positions, exact = [], []
    for end, kind in zip(s_ends, s_kinds):
        before = [j for j in range(len(t_ends)) if t_ends[j] <= end]
        if not before:
            positions.append(-1)
            exact.append(False)
            continue
        last = max(t_ends[j] for j in before)
        at = [j for j in before if t_ends[j] == last]
        whole = [j for j in at if t_kinds[j] == WHOLE]
        best = whole[-1] if whole else at[0]
        positions.append(best)
        exact.append(last == end and kind != PART and t_kinds[best] != PART)
    return positions, exact


def test_alignment_equals_brute_force_on_1000_random_texts_with_two_real_tokenizers(real_tokenizers):
    smol, bert = real_tokenizers
    rng = random.Random(0)
    pairs = exact_pairs = parts = 0
    for _ in range(1000):
        text = random_text(rng)
        offsets = {name: tok(text, return_offsets_mapping=True)["offset_mapping"] for name, tok in (("smol", smol), ("bert", bert))}
        ends = {name: token_ends(o) for name, o in offsets.items()}
        for name, o in offsets.items():
            assert ends[name][1] == brute_force_kinds(o)
            running = 0
            for (start, end), got in zip(o, ends[name][0]):  # a token that covers nothing ends where the text so far does
                running = max(running, end) if end > start else running
                assert got == running
        for student, teacher in (("smol", "bert"), ("bert", "smol")):
            got = align(ends[student], ends[teacher])
            assert got == brute_force_align(ends[student], ends[teacher]), text
            pairs += len(got[0])
            exact_pairs += sum(got[1])
        parts += ends["smol"][1].count(PART)
    # the texts exercise what the alignment must handle: characters split into bytes, pairs of both kinds
    assert parts > 100 and 0.3 < exact_pairs / pairs < 0.95


def test_alignment_pairs_a_text_token_with_the_teacher_token_that_ends_with_it_not_a_trailing_special(real_tokenizers):
    smol, bert = real_tokenizers
    text = "Hello, world ™"
    s = smol(text, return_offsets_mapping=True)
    t = bert(text, return_offsets_mapping=True)  # [CLS] hello , world ™ [SEP]
    positions, exact = align(token_ends(s["offset_mapping"]), token_ends(t["offset_mapping"]))
    tokens = smol.convert_ids_to_tokens(s["input_ids"])
    teacher_tokens = bert.convert_ids_to_tokens(t["input_ids"])
    # "™" is three byte tokens in SmolLM2: only the last one ends the character exactly with "™", and
    # the last text token pairs with it, not with the trailing [SEP] that ends at the same character
    assert tokens == ["Hello", ",", "Ġworld", "Ġâ", "Ħ", "¢"]
    assert teacher_tokens == ["[CLS]", "hello", ",", "world", "™", "[SEP]"]
    assert positions == [1, 2, 3, 4, 4, 4]
    assert exact == [True, True, True, False, False, True]


def test_uld_is_the_distance_between_sorted_probabilities():
    s = torch.tensor([[0.7, 0.2, 0.1]]).log()
    t = torch.tensor([[0.1, 0.5, 0.3, 0.1]]).log()
    # sorted: [0.7, 0.2, 0.1, 0] against [0.5, 0.3, 0.1, 0.1]
    assert uld(s, t, 1.0).item() == pytest.approx(0.2 + 0.1 + 0.0 + 0.1, abs=1e-6)
    # at T the probabilities are softmax(logits / T), and the sum is scaled by T²
    p_s, p_t = torch.softmax(s / 2, -1)[0].tolist(), torch.softmax(t / 2, -1)[0].tolist()
    hand = sum(abs(a - b) for a, b in zip(sorted(p_s, reverse=True) + [0.0], sorted(p_t, reverse=True))) * 4
    assert uld(s, t, 2.0).item() == pytest.approx(hand, rel=1e-5)


def test_a_cached_top_k_against_another_vocabulary_equals_a_hand_computation():
    from distillation.losses import forward_kl, shared_topk_buckets, topk_uld

    p_s = torch.tensor([[0.4, 0.3, 0.2, 0.1]])  # the student's 4 tokens
    top = torch.tensor([[0.5, 0.25, 0.15]])  # the teacher's top 3 (its rest: 0.1); the 2nd has no student token
    mapped = torch.tensor([[2, -1, 0]])  # teacher top-1 is the student's token 2, top-3 its token 0
    student, teacher = shared_topk_buckets(p_s.log(), mapped, top.log(), torch.tensor([0.1]).log(), 1.0)
    # buckets: [shared 1, (none), shared 3, rest]: teacher [0.5, 0, 0.15, 0.25 + 0.1], student [0.2, 0, 0.4, 0.4]
    hand = 0.5 * math.log(0.5 / 0.2) + 0.15 * math.log(0.15 / 0.4) + 0.35 * math.log(0.35 / 0.4)
    assert forward_kl(student, teacher, 1.0).item() == pytest.approx(hand, rel=1e-5)
    # ULD: the student's 3 likeliest [0.5, 0.2, 0.15] against [0.5, 0.25, 0.15], then the rests 0.15 and 0.1
    p_s = torch.tensor([[0.05, 0.2, 0.5, 0.1, 0.15]])
    assert topk_uld(p_s.log(), top.log(), torch.tensor([0.1]).log(), 1.0).item() == pytest.approx(0.0 + 0.05 + 0.0 + 0.05, abs=1e-6)


def text_records(path, n=6, seed=3):
    write_jsonl(str(path), [{"text": line} for line in sentences(n, seed=seed, min_clauses=1, max_clauses=3)])
    return str(path)


def instruction_records(path, n=6, seed=3):
    rows = [{"instruction": f"say {' '.join(line.split()[:2])}", "output": line, "ended_with_eos": i % 3 != 2}
            for i, line in enumerate(sentences(n, seed=seed, min_clauses=1, max_clauses=3))]
    write_jsonl(str(path), rows)
    return str(path)


@pytest.mark.parametrize("divergence,data", [("forward_kl", "text"), ("reverse_kl", "text"), ("jsd", "text"), ("tvd", "text"),
                                             ("forward_kl", "instructions")])
def test_one_tokenizer_through_the_cross_path_equals_the_one_tokenizer_divergence(tmp_path, divergence, data):
    tok = causal_tokenizer(str(tmp_path / "tok"))
    cfg = config(objective="clm", teacher_name="unused", student_name="unused", alpha_ce=1.0, alpha_task=0.0, temperature=2.0,
                 divergence=divergence, prompt_template="Q: {instruction} A:", cross_tokenizer="aligned")
    cross, plain = CrossTokenizerCLM(cfg, tok, None, tok), CausalLM(cfg, tok)
    data = (text_records if data == "text" else instruction_records)(tmp_path / "train.jsonl")
    cross_items = [cross.load_dataset(data, "--data_file")[i] for i in range(6)]
    plain_items = [plain.load_dataset(data, "--data_file")[i] for i in range(6)]
    assert [e["input_ids"] for e in cross_items] == [e["input_ids"] for e in plain_items]
    assert [e["prompt_len"] for e in cross_items] == [e["prompt_len"] for e in plain_items]
    assert all(e["teacher_ids"] == e["input_ids"] and all(e["aligned"][max(e["prompt_len"] - 1, 0):]) for e in cross_items)
    cross_batch, plain_batch = cross.collate(cross_items), plain.collate(plain_items)
    torch.manual_seed(0)
    shape = (*cross_batch["input_ids"].shape, len(tok))
    student, teacher = torch.randn(shape) * 3, torch.randn(shape) * 3
    got = CrossTokenLosses(cfg, cross)(["ce"], student, teacher, cross_batch)["ce"]
    want = DenseTokenLosses(cfg, plain)(["ce"], student, teacher, plain_batch)["ce"]
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def bpe_tokenizer(folder, lines, vocab_size=40):
    """A character BPE over whole lines (no pre-tokenizer: tokens cross the spaces between words),
    with the student's special tokens: a teacher tokenizer whose boundaries often differ."""
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def hand_loss(cfg, batch, student, teacher, student_tok, teacher_tok):
    """The aligned method in float64, position by position, from the tokens' strings: each
    teacher token's probability to the student token of the same string, else to the first
    student token of its string."""
    T = cfg.temperature
    words = student_tok.get_vocab()
    first = {}
    for t, j in teacher_tok.get_vocab().items():
        ids = [words[t]] if t in words else student_tok(t, add_special_tokens=False)["input_ids"]
        first[j] = ids[0] if ids else -1
    total = 0.0
    for b in range(student.shape[0]):
        for i in range(student.shape[1] - 1):
            j = int(batch["teacher_position"][b, i])
            if batch["labels"][b, i + 1] == -100 or j < 0:
                continue
            p_s = torch.softmax(student[b, i].double() / T, -1)
            p_t = torch.softmax(teacher[b, j].double() / T, -1)
            if batch["aligned"][b, i]:
                q = [0.0] * len(student_tok)
                for j, x in first.items():
                    if x >= 0:
                        q[x] += p_t[j].item()
                q = [v / sum(q) for v in q]
                total += sum(a * math.log(a / p_s[x].item()) for x, a in enumerate(q) if a > 0) * T**2
            else:
                a, c = sorted(p_s.tolist(), reverse=True), sorted(p_t.tolist(), reverse=True)
                width = max(len(a), len(c))
                a, c = a + [0.0] * (width - len(a)), c + [0.0] * (width - len(c))
                total += sum(abs(x - y) for x, y in zip(a, c)) * T**2
    return total


@pytest.fixture
def cross_pair(tmp_path):
    """A word-level student tokenizer and a BPE teacher tokenizer over the same sentences."""
    lines = sentences(200, seed=1)
    student_tok = causal_tokenizer(str(tmp_path / "student_tok"))
    teacher_tok = bpe_tokenizer(str(tmp_path / "teacher_tok"), lines)
    return student_tok, teacher_tok, lines


def test_aligned_loss_equals_a_hand_computation(tmp_path, cross_pair):
    student_tok, teacher_tok, _ = cross_pair
    cfg = config(objective="clm", teacher_name="unused", student_name="unused", alpha_ce=1.0, alpha_task=0.0, temperature=2.0, divergence="forward_kl",
                 cross_tokenizer="aligned")
    objective = CrossTokenizerCLM(cfg, student_tok, None, teacher_tok)
    data = objective.load_dataset(text_records(tmp_path / "train.jsonl"), "--data_file")
    batch = objective.collate([data[i] for i in range(len(data))])
    exact = batch["aligned"][batch["labels"].roll(-1, 1) != -100]
    assert 0 < exact.float().mean() < 1  # both kinds of pairs occur
    assert len(objective.shared[0]) > 4  # the special tokens and some words
    assert (objective.first >= 0).sum() > len(objective.shared[0])  # the other teacher tokens stand for a student token too
    torch.manual_seed(0)
    student = torch.randn(*batch["input_ids"].shape, len(student_tok)) * 2
    teacher = torch.randn(*batch["teacher_input_ids"].shape, len(teacher_tok)) * 2
    got = CrossTokenLosses(cfg, objective)(["ce"], student, teacher, batch)["ce"].item()
    assert got == pytest.approx(hand_loss(cfg, batch, student, teacher, student_tok, teacher_tok), rel=1e-5)


def cross_models(tmp_path, student_tok, teacher_tok):
    torch.manual_seed(0)
    folders = {}
    for role, tok, hidden in (("teacher", teacher_tok, 48), ("student", student_tok, 32)):
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        folders[role] = save_model(LlamaForCausalLM(cfg), tok, str(tmp_path / role))
    return folders


def teacher_bits_per_byte(folder, tok, texts):
    """The teacher's NLL of its own tokens of `texts` (one EOS after each) in bits, over the UTF-8
    bytes its targets spell (the text after its first token): computed here one text at a time."""
    model = LlamaForCausalLM.from_pretrained(folder).eval()
    nll = n_bytes = 0.0
    for text in texts:
        encoded = tok(text, return_offsets_mapping=True)
        ids = encoded["input_ids"] + [tok.eos_token_id]
        with torch.no_grad():
            log_p = model(input_ids=torch.tensor([ids])).logits[0, :-1].double().log_softmax(-1)
        nll -= log_p.gather(-1, torch.tensor(ids[1:])[:, None]).sum().item()
        n_bytes += len(text[encoded["offset_mapping"][0][1] :].encode("utf-8"))
    return nll / math.log(2) / n_bytes


@pytest.mark.parametrize("method", ["aligned", "uld"])
def test_a_run_with_another_tokenizer_trains_and_reports_both_models_bits_per_byte(tmp_path, cross_pair, method):
    student_tok, teacher_tok, lines = cross_pair
    folders = cross_models(tmp_path, student_tok, teacher_tok)
    write_jsonl(str(tmp_path / "train.jsonl"), [{"text": line} for line in lines[:64]])
    eval_texts = sentences(12, seed=9)
    write_jsonl(str(tmp_path / "eval.jsonl"), [{"text": line} for line in eval_texts])
    dump = tmp_path / "run"
    # no --teacher_tokenizer: the student's folder holds its own tokenizer, which differs from the teacher's
    code = train_in_process(["--objective", "clm", "--teacher_name", folders["teacher"], "--student_name", folders["student"],
                             "--data_file", tmp_path / "train.jsonl", "--eval_file", tmp_path / "eval.jsonl", "--dump_path", dump,
                             "--n_epoch", "1", "--batch_size", "8", "--cross_tokenizer", method, "--alpha_ce", "1", "--alpha_task", "0"])
    assert code == 0
    metrics = read_metrics(dump)
    evals = [m for m in metrics if "eval_bits_per_byte" in m]
    trains = [m for m in metrics if "loss_ce" in m]
    assert evals and trains and all(math.isfinite(m["loss_ce"]) and m["loss_ce"] > 0 for m in trains)
    assert evals[-1]["eval_teacher_bits_per_byte"] == pytest.approx(
        teacher_bits_per_byte(folders["teacher"], teacher_tok, eval_texts), rel=1e-4)
    assert AutoTokenizer.from_pretrained(str(dump / "final")).get_vocab() == student_tok.get_vocab()


def test_the_same_tokenizer_given_as_the_teachers_takes_the_one_tokenizer_path(tmp_path, cross_pair):
    from distillation.config import DistillConfig
    from distillation.distributed import DistEnv
    from distillation.pipeline import build

    student_tok, _, lines = cross_pair
    folders = cross_models(tmp_path, student_tok, student_tok)
    write_jsonl(str(tmp_path / "train.jsonl"), [{"text": line} for line in lines[:16]])
    cfg = DistillConfig.from_dict({"objective": "clm", "teacher_name": folders["teacher"], "student_name": folders["student"],
                                   "teacher_tokenizer": str(tmp_path / "student_tok"), "data_file": str(tmp_path / "train.jsonl"),
                                   "dump_path": str(tmp_path / "run")})
    distiller, _ = build(cfg, DistEnv())
    assert type(distiller.objective) is CausalLM
    assert type(distiller.token_losses) is DenseTokenLosses


@pytest.mark.parametrize("case", ["binarized", "mlm", "served", "several", "chunked"])
def test_what_another_tokenizer_cannot_do_exits_2_naming_it(tmp_path, cross_pair, capsys, case):
    from lm_helpers import write_binarized

    student_tok, teacher_tok, lines = cross_pair
    folders = cross_models(tmp_path, student_tok, teacher_tok)
    data = tmp_path / "train.jsonl"
    write_jsonl(str(data), [{"text": line} for line in lines[:16]])
    extra, expected = [], "--teacher_tokenizer"
    if case == "binarized":
        data = write_binarized(tmp_path / "data.pickle", student_tok, lines[:16])
        expected = "binarized"
    elif case == "mlm":
        extra = ["--objective", "mlm"]
        expected = "--objective mlm"
    elif case == "served":  # nothing answers there
        extra = ["--teacher_url", "http://127.0.0.1:9"]
        expected = "--teacher_url"
    elif case == "several":
        (tmp_path / "teachers.json").write_text(json.dumps([{"teacher": folders["teacher"]}]))
        extra = ["--teachers", tmp_path / "teachers.json"]
        expected = "--teachers"
    else:
        extra = ["--loss_chunk_rows", "8"]
        expected = "--loss_chunk_rows"
    dump = tmp_path / "run"
    args = ["--objective", "clm", "--teacher_name", folders["teacher"], "--student_name", folders["student"],
            "--teacher_tokenizer", str(tmp_path / "teacher_tok"), "--data_file", data, "--dump_path", dump, *extra]
    if case in ("served", "several"):
        args = [a for a in args if a not in ("--teacher_name", folders["teacher"])]
    capsys.readouterr()
    assert train_in_process(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not dump.exists()


def live_top_k_loss(teacher_folder, teacher_tok, student_tok, texts, student, batch, k, T):
    """The aligned loss from the local teacher's own top k, text by text (its tokens, one EOS),
    at the pairs of both tokenizations' offsets: what a cross-tokenizer cache or a served
    teacher must give."""
    from distillation.losses import DIVERGENCES, shared_topk_buckets, topk_uld
    from distillation.offline_logits import sparse_targets

    model = LlamaForCausalLM.from_pretrained(teacher_folder).eval()
    t2s = {teacher_tok.get_vocab()[w]: i for w, i in student_tok.get_vocab().items() if w in teacher_tok.get_vocab()}
    rows = {"s": [], "ids": [], "values": [], "tail": [], "exact": []}
    for b, text in enumerate(texts):
        t_enc, s_enc = teacher_tok(text, return_offsets_mapping=True), student_tok(text, return_offsets_mapping=True)
        t_ids, s_ids = t_enc["input_ids"] + [teacher_tok.eos_token_id], s_enc["input_ids"] + [student_tok.eos_token_id]
        assert s_ids == batch["input_ids"][b, : len(s_ids)].tolist()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([t_ids])).logits[0, :-1]
        top = sparse_targets(logits, "topk", k, T, None)
        pairs = align(token_ends(s_enc["offset_mapping"] + [(0, 0)]), token_ends(t_enc["offset_mapping"] + [(0, 0)]))
        for i, (j, exact) in enumerate(zip(*pairs)):
            if i < len(s_ids) - 1 and 0 <= j < len(t_ids) - 1:
                rows["s"].append(student[b, i])
                rows["ids"].append(top.ids[j])
                rows["values"].append(top.values[j])
                rows["tail"].append(top.tail[j])
                rows["exact"].append(exact)
    s, ids, values, tail = (torch.stack(rows[n]) for n in ("s", "ids", "values", "tail"))
    exact = torch.tensor(rows["exact"])
    assert 0 < exact.float().mean() < 1
    mapped = torch.tensor([[t2s.get(t, -1) for t in row] for row in ids.tolist()])
    assert (mapped >= 0).any() and (mapped < 0).any()
    buckets = shared_topk_buckets(s[exact], mapped[exact], values[exact], tail[exact], T)
    return DIVERGENCES["forward_kl"][0](*buckets, 1.0) * T**2 + topk_uld(s[~exact], values[~exact], tail[~exact], T)


def test_a_cross_tokenizer_cache_gives_the_loss_of_the_live_teachers_top_k(tmp_path, cross_pair, capsys):
    """A top-k cache of text records made with the teacher's own tokenizer, read by a student of
    another: the same loss as the live teacher's top k at the pairs the live texts align to."""
    from distillation.cli.cache_teacher import main as cache_main
    from distillation.config import DistillConfig
    from distillation.distributed import DistEnv
    from distillation.pipeline import build

    student_tok, teacher_tok, lines = cross_pair
    folders = cross_models(tmp_path, student_tok, teacher_tok)
    texts = lines[:12]
    write_jsonl(str(tmp_path / "train.jsonl"), [{"text": t} for t in texts])
    T, k = 2.0, 5
    assert cache_main([str(a) for a in ("--teacher_name", folders["teacher"], "--data_file", tmp_path / "train.jsonl", "--dump_path",
                                        tmp_path / "cache", "--method", "topk", "--k", k, "--temperature", T, "--batch_size", 5,
                                        "--shard_size", 7)]) == 0
    assert os.path.isdir(tmp_path / "cache" / "tokenizer")
    cfg = DistillConfig.from_dict({"objective": "clm", "teacher_logits": str(tmp_path / "cache"), "student_name": folders["student"],
                                   "data_file": str(tmp_path / "train.jsonl"), "dump_path": str(tmp_path / "run"), "temperature": T,
                                   "alpha_ce": 1.0, "alpha_task": 0.0, "cross_tokenizer": "aligned"})
    distiller, _ = build(cfg, DistEnv())
    objective, data = distiller.objective, distiller.train_dataset
    assert isinstance(objective, CrossTokenizerCLM)
    batch = objective.collate([data[i] for i in range(len(data))])
    torch.manual_seed(1)
    student = torch.randn(*batch["input_ids"].shape, len(student_tok)) * 2
    got = distiller.token_losses(["ce"], student, distiller.teacher.outputs(batch)[0], batch)["ce"].item()

    want = live_top_k_loss(folders["teacher"], teacher_tok, student_tok, texts, student, batch, k, T)
    assert got == pytest.approx(want.item(), rel=2e-3)  # the cache keeps fp16 values
    # and a run trains from it
    dump = tmp_path / "trained"
    assert train_in_process(["--objective", "clm", "--teacher_logits", tmp_path / "cache", "--student_name", folders["student"],
                             "--data_file", tmp_path / "train.jsonl", "--dump_path", dump, "--temperature", T, "--n_epoch", 1]) == 0
    assert all(math.isfinite(m["loss_ce"]) for m in read_metrics(dump) if "loss_ce" in m)


def test_a_run_with_another_tokenizer_at_one_and_two_processes(tmp_path, cross_pair):
    """The same global batch at 1 process and at 2 (ddp): the same losses step for step and the
    same student (each rank aligns its own examples; the sums are normalised by the step's counts)."""
    from conftest import TORCHRUN, final_weights, run_train

    student_tok, teacher_tok, lines = cross_pair
    folders = cross_models(tmp_path, student_tok, teacher_tok)
    write_jsonl(str(tmp_path / "train.jsonl"), [{"text": line} for line in lines[:32]])
    common = ["--objective", "clm", "--teacher_name", folders["teacher"], "--student_name", folders["student"], "--data_file",
              tmp_path / "train.jsonl", "--no-group_by_size", "--log_interval", 1, "--n_epoch", 1, "--max_grad_norm", 1e9]
    one = run_train([str(a) for a in (*common, "--batch_size", 8, "--dump_path", tmp_path / "one")])
    two = run_train([str(a) for a in (*common, "--batch_size", 4, "--dump_path", tmp_path / "two")], launcher=TORCHRUN)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    l1 = [r["loss_ce"] for r in read_metrics(tmp_path / "one") if "loss_ce" in r]
    l2 = [r["loss_ce"] for r in read_metrics(tmp_path / "two") if "loss_ce" in r]
    assert len(l1) == 4 and l2 == pytest.approx(l1, rel=1e-4)
    w1, w2 = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5) for k in w1)


def test_instruction_records_each_prompt_in_its_models_template_paired_at_the_response(tmp_path, cross_pair):
    """The student's prompt in Alpaca's template (its tokenizer has no chat template), the
    teacher's in its chat template: the last prompt tokens pair exactly (both predict the
    response's first token), and the teacher is scored on the response only."""
    student_tok, teacher_tok, lines = cross_pair
    teacher_tok.chat_template = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}<s>"
    teacher_tok.save_pretrained(str(tmp_path / "teacher_tok"))
    folders = cross_models(tmp_path, student_tok, teacher_tok)
    cfg = config(objective="clm", teacher_name="unused", student_name="unused", alpha_ce=1.0, alpha_task=0.0, max_seq_length=128)
    objective = CrossTokenizerCLM(cfg, student_tok, None, teacher_tok)
    data = objective.load_dataset(instruction_records(tmp_path / "train.jsonl", n=8), "--data_file")
    records = [json.loads(line) for line in open(tmp_path / "train.jsonl")]
    for i, record in enumerate(records):
        item = data[i]
        n, m = item["prompt_len"], item["teacher_prompt_len"]
        assert item["teacher_ids"][:m] == teacher_tok.apply_chat_template([{"role": "user", "content": record["instruction"]}],
                                                                          add_generation_prompt=True)["input_ids"]
        assert item["input_ids"][:n] == student_tok(ALPACA_PROMPT_NO_INPUT.format(instruction=record["instruction"]))["input_ids"]
        response = teacher_tok(record["output"], add_special_tokens=False)["input_ids"]
        assert item["teacher_ids"][m:] == response + [teacher_tok.eos_token_id] * record["ended_with_eos"]
        assert item["teacher_position"][n - 1] == m - 1 and item["aligned"][n - 1]
        assert all(j >= m - 1 for j in item["teacher_position"][n - 1 :])
    write_jsonl(str(tmp_path / "eval.jsonl"), records)
    dump = tmp_path / "run"
    assert train_in_process(["--objective", "clm", "--teacher_name", folders["teacher"], "--student_name", folders["student"],
                             "--teacher_tokenizer", tmp_path / "teacher_tok", "--data_file", tmp_path / "train.jsonl",
                             "--eval_file", tmp_path / "eval.jsonl", "--dump_path", dump, "--n_epoch", 1, "--batch_size", 4]) == 0
    # the teacher's bits per byte: its NLL of each response (and EOS) after its own prompt, over the responses' bytes
    model = LlamaForCausalLM.from_pretrained(folders["teacher"]).eval()
    nll = n_bytes = 0.0
    for record in records:
        prompt = teacher_tok.apply_chat_template([{"role": "user", "content": record["instruction"]}], add_generation_prompt=True)["input_ids"]
        ids = prompt + teacher_tok(record["output"], add_special_tokens=False)["input_ids"] + [teacher_tok.eos_token_id] * record["ended_with_eos"]
        with torch.no_grad():
            log_p = model(input_ids=torch.tensor([ids])).logits[0, :-1].double().log_softmax(-1)
        nll -= log_p.gather(-1, torch.tensor(ids[1:])[:, None])[len(prompt) - 1 :].sum().item()
        n_bytes += len(record["output"].encode("utf-8"))
    evals = [m for m in read_metrics(dump) if "eval_teacher_bits_per_byte" in m]
    assert evals[-1]["eval_teacher_bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-4)


def test_a_sampled_answers_offsets_from_decoding_equal_the_tokenizers_own_on_random_texts(real_tokenizers):
    """On-policy answers are ids with no text: their offsets come from decoding prefixes. On 300
    random texts SmolLM2's own offsets of its tokens are the same, characters split into bytes included."""
    from distillation.data.cross_text import _decoded

    smol, _ = real_tokenizers
    rng = random.Random(1)
    for _ in range(300):
        text = random_text(rng)
        encoded = smol(text, return_offsets_mapping=True, add_special_tokens=False)
        decoded, ends = _decoded(encoded["input_ids"], smol)
        assert decoded == text and ends == token_ends(encoded["offset_mapping"]), text


def test_on_policy_answers_are_re_tokenised_for_the_teacher_after_its_own_prompt(real_tokenizers):
    from distillation.data.cross_text import with_answers

    smol, bert = real_tokenizers
    answer = smol("Héllo ™ wörld", add_special_tokens=False)["input_ids"]
    examples = [{"input_ids": [7, 8, 9] + answer + [smol.eos_token_id], "prompt_len": 3, "index": 4, "ended": True},
                {"input_ids": [7, 8] + answer[:3], "prompt_len": 2, "index": 5, "ended": False}]
    data = with_answers(examples, [[101, 2000, 2001], [101, 2002]], smol, bert, 512)
    first, second = data[0], data[1]
    assert first["teacher_ids"] == [101, 2000, 2001] + bert("Héllo ™ wörld", add_special_tokens=False)["input_ids"]  # no EOS in BERT
    assert first["teacher_position"][2] == 2 and first["aligned"][2]  # the last prompt tokens: both predict the answer's start
    pieces = smol.convert_ids_to_tokens(answer)
    mark = pieces.index("¢") + 3  # the last byte of "™" (3 prompt tokens before the answer)
    assert first["aligned"][mark] and bert.convert_ids_to_tokens([first["teacher_ids"][first["teacher_position"][mark]]]) == ["™"]
    assert not first["aligned"][mark - 1]  # the byte before it ends inside the character
    assert second["teacher_ids"] == [101, 2002] + bert(smol.decode(answer[:3]), add_special_tokens=False)["input_ids"]


def test_on_policy_steps_with_another_tokenizer(tmp_path, cross_pair):
    student_tok, teacher_tok, _ = cross_pair
    folders = cross_models(tmp_path, student_tok, teacher_tok)
    cfg = config(objective="clm", teacher_name="unused", student_name="unused", alpha_ce=1.0, alpha_task=0.0,
                 prompt_template="Q: {instruction} A:")
    objective = CrossTokenizerCLM(cfg, student_tok, None, teacher_tok)
    data = objective.load_dataset(instruction_records(tmp_path / "train.jsonl", n=8), "--data_file")
    items = [data[i] for i in range(4)]
    answers = [student_tok("the movie was", add_special_tokens=False)["input_ids"], student_tok("a plot", add_special_tokens=False)["input_ids"]
               + [student_tok.eos_token_id]] * 2
    examples = [{"input_ids": e["input_ids"][: e["prompt_len"]] + a, "prompt_len": e["prompt_len"], "index": e["index"],
                 "ended": a[-1] == student_tok.eos_token_id} for e, a in zip(items, answers)]
    rebuilt = objective.with_answers(objective.collate(items), examples)
    for row, (e, a) in enumerate(zip(items, answers)):
        m = e["teacher_prompt_len"]
        text = student_tok.decode(a, skip_special_tokens=True)
        want = e["teacher_ids"][:m] + teacher_tok(text, add_special_tokens=False)["input_ids"] + [teacher_tok.eos_token_id] * (a[-1] == student_tok.eos_token_id)
        assert rebuilt["teacher_input_ids"][row, : len(want)].tolist() == want
        assert int(rebuilt["teacher_attention_mask"][row].sum()) == len(want)
    dump = tmp_path / "run"
    assert train_in_process(["--objective", "clm", "--teacher_name", folders["teacher"], "--student_name", folders["student"],
                             "--data_file", instruction_records(tmp_path / "train.jsonl", n=8), "--prompt_template",
                             "Q: {instruction} A:", "--on_policy_fraction", 1, "--max_new_tokens", 6, "--dump_path", dump,
                             "--n_epoch", 1, "--batch_size", 4, "--log_interval", 1]) == 0
    losses = [m["loss_ce_on_policy"] for m in read_metrics(dump) if "loss_ce_on_policy" in m]
    assert len(losses) == 2 and all(math.isfinite(x) and x > 0 for x in losses)


def test_a_served_teacher_with_another_tokenizer_gives_the_loss_of_its_local_top_k(vllm_teacher, tmp_path, cross_pair):
    """A real vLLM server over the word-level tokenizer teaches a student of a BPE: its answers at the
    teacher's own target positions give the loss of the local teacher's top k at the same pairs, and
    evaluation scores the served teacher on its own tokens (bits per byte against the local forward's)."""
    from distillation.config import DistillConfig
    from distillation.distributed import DistEnv
    from distillation.pipeline import build

    url, folder, _ = vllm_teacher
    _, bpe, lines = cross_pair
    teacher_tok = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    student_cfg = LlamaConfig(vocab_size=len(bpe), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              num_key_value_heads=2, max_position_embeddings=128, bos_token_id=bpe.bos_token_id,
                              eos_token_id=bpe.eos_token_id, pad_token_id=bpe.pad_token_id)
    student_folder = save_model(LlamaForCausalLM(student_cfg), bpe, str(tmp_path / "student"))
    texts = lines[:10]
    write_jsonl(str(tmp_path / "train.jsonl"), [{"text": t} for t in texts])
    k, T = 8, 1.0
    values = {"objective": "clm", "teacher_url": url, "teacher_tokenizer": folder, "student_name": student_folder,
              "data_file": str(tmp_path / "train.jsonl"), "dump_path": str(tmp_path / "run"), "temperature": T, "teacher_top_k": k,
              "alpha_ce": 1.0, "alpha_task": 0.0, "cross_tokenizer": "aligned"}
    distiller, _ = build(DistillConfig.from_dict(values), DistEnv())
    objective, data = distiller.objective, distiller.train_dataset
    batch = objective.collate([data[i] for i in range(len(data))])
    student = torch.randn(*batch["input_ids"].shape, len(bpe)) * 2
    got = distiller.token_losses(["ce"], student, distiller.teacher.outputs(batch)[0], batch)["ce"].item()
    want = live_top_k_loss(folder, teacher_tok, bpe, texts, student, batch, k, T)
    assert got == pytest.approx(want.item(), rel=1e-3)
    eval_texts = sentences(6, seed=9)
    write_jsonl(str(tmp_path / "eval.jsonl"), [{"text": t} for t in eval_texts])
    dump = tmp_path / "trained"
    assert train_in_process(["--objective", "clm", "--teacher_url", url, "--teacher_tokenizer", folder, "--student_name", student_folder,
                             "--data_file", tmp_path / "train.jsonl", "--eval_file", tmp_path / "eval.jsonl", "--dump_path", dump,
                             "--teacher_top_k", k, "--n_epoch", 1, "--batch_size", 5]) == 0
    evals = [m for m in read_metrics(dump) if "eval_teacher_bits_per_byte" in m]
    assert evals[-1]["eval_teacher_bits_per_byte"] == pytest.approx(teacher_bits_per_byte(folder, teacher_tok, eval_texts), rel=1e-3)
