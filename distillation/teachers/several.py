"""Several teachers in one run (--teachers FILE): routed by a data column, or mixed.

The file is a JSON list with one object per teacher:

    [{"teacher": "runs/maths-teacher", "route": "maths"},
     {"teacher": "http://10.0.0.7:8000", "route": "code"},
     {"teacher": "runs/cache-of-teacher-3", "route": "prose"}]

"teacher" is a model (hub name or folder: local), a URL (served, as --teacher_url) or a folder
that scripts/cache_teacher.py wrote (cached, as --teacher_logits); every kind takes the run's
flags of its single-teacher form.

- Routing (--teacher_column COLUMN): each example names its teacher in that column; it is
  distilled from that teacher only. A micro-batch may hold several routes: each teacher is run
  on its rows (a sub-batch) and the targets are put back in row order, so the student runs once.
  A teacher sharded over processes (fsdp) runs on every rank for every micro-batch, on one row
  of it where the rank holds none of its rows: its forward is a collective.
- Mixing (no --teacher_column): the target is the mixture sum_i w_i p_i of the teachers'
  distributions at the run's temperature (w from "weight", default equal, normalised to 1);
  given to the losses as the logits T log sum_i w_i softmax(z_i / T), whose softmax at T is the
  mixture, so every divergence reads it unchanged. Evaluation scores the mixture at T = 1.
  Mixing takes local teachers only: a served or cached teacher keeps its top tokens alone, and
  a mixture needs each teacher's probability of every token.

The chunked losses (--loss_chunk_rows, local teachers): outputs(logits=False) gives each
teacher's final hidden states (SeveralHidden), and token_losses.ChunkedTokenLosses applies each
teacher's LM head to its rows of a chunk (routed), or mixes their chunk's logits (mixed).

Not with several teachers: hidden-state losses and --alpha_mse (no one teacher's states or
logits to compare), and --eval_generate.
"""

import contextlib
import dataclasses
import json
import os
from typing import List, Optional

import torch

from distillation.distributed import all_reduce_sum
from distillation.errors import InputError
from distillation.objectives.lm import gather_rows
from distillation.offline_logits import SparseTargets

KEYS = ("teacher", "route", "weight")


@dataclasses.dataclass
class Entry:
    number: int  # 1-based, for messages
    teacher: str
    route: Optional[str] = None
    weight: float = 1.0

    @property
    def kind(self) -> str:
        if self.teacher.startswith(("http://", "https://")):
            return "served"
        return "cached" if os.path.isfile(os.path.join(self.teacher, "manifest.json")) else "local"

    def __str__(self):
        return f"--teachers entry {self.number} ('{self.teacher}')"


def read_teachers(path: str, routed: bool) -> List[Entry]:
    """The entries of --teachers FILE, checked: routes (given, distinct) exactly when `routed`
    (--teacher_column), weights (>= 0, not all 0) otherwise."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError:
        raise InputError(f"--teachers: no such file '{path}'") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"--teachers: '{path}' is not valid JSON ({err})") from None
    if not isinstance(raw, list) or len(raw) < 2:
        raise InputError(f"--teachers: '{path}' must hold a JSON list of at least two teachers (one: use --teacher_name, "
                         "--teacher_url or --teacher_logits)")
    entries = []
    for number, item in enumerate(raw, start=1):
        where = f"--teachers: '{path}' entry {number}"
        if not isinstance(item, dict) or not isinstance(item.get("teacher"), str) or not item["teacher"]:
            raise InputError(f"{where}: must be an object with a \"teacher\" (a model, a URL or a cache folder)")
        unknown = sorted(set(item) - set(KEYS))
        if unknown:
            raise InputError(f"{where}: unknown key '{unknown[0]}' (an entry has {', '.join(KEYS)})")
        route, weight = item.get("route"), item.get("weight", 1.0)
        if routed and not isinstance(route, (str, int)) or isinstance(route, bool):
            raise InputError(f"{where}: --teacher_column routes examples by their \"route\": give each teacher a string route")
        if not routed and route is not None:
            raise InputError(f"{where}: a \"route\" needs --teacher_column (the data column that names each example's route)")
        if routed and "weight" in item:
            raise InputError(f"{where}: a routed teacher has no \"weight\" (each example has one teacher); drop it")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise InputError(f"{where}: \"weight\" must be a number >= 0 (got {json.dumps(weight)})")
        entries.append(Entry(number, item["teacher"], None if route is None else str(route), float(weight)))
    if routed:
        seen = {}
        for e in entries:
            if e.route in seen:
                raise InputError(f"--teachers: '{path}' entries {seen[e.route]} and {e.number} have the same route '{e.route}'")
            seen[e.route] = e.number
    elif sum(e.weight for e in entries) <= 0:
        raise InputError(f"--teachers: '{path}' gives every teacher weight 0")
    return entries


def member_config(cfg, entry: Entry):
    """The run's config as the single-teacher run of `entry` (its flags checked as that run's)."""
    kind = entry.kind
    member = dataclasses.replace(
        cfg, teachers=None, teacher_column=None,
        teacher_name=entry.teacher if kind == "local" else None,
        teacher_url=entry.teacher if kind == "served" else None,
        teacher_logits=entry.teacher if kind == "cached" else None,
        teacher_dtype=(cfg.teacher_dtype or cfg.precision) if kind == "local" else None,
        cache_teacher_logits=cfg.cache_teacher_logits and kind == "local",
    )
    with about(entry):
        member.validate()
    return member


@contextlib.contextmanager
def about(entry: Optional[Entry]):
    """Bad input about one teacher of several names it."""
    try:
        yield
    except InputError as err:
        if entry is None:
            raise
        raise InputError(f"{entry}: {err}") from None


class SeveralTeachers:
    """The teachers of --teachers behind the one teacher interface (teachers/__init__.py).
    `routes` {split: LongTensor [n examples] of member indices} when routed, else None (mixed)."""

    model = None  # no one model: the hidden-state losses are refused, the chunked ones use each
    # member's; `members` (each scored alone at evaluation too, eval_teacher<i>_*) is set in __init__

    def __init__(self, entries: List[Entry], members: list, objective, routes: Optional[dict], temperature: float, collective: bool,
                 column: Optional[str] = None):
        forms = {m.form for m in members}
        if routes is not None and len(forms) > 1:
            raise InputError(f"--teachers: routed teachers must give targets of one form (these give {' and '.join(sorted(forms))}): "
                             "a micro-batch's rows from several teachers are one target tensor")
        if routes is None and forms != {"logits"}:
            kinds = [str(e) for e, m in zip(entries, members) if m.form != "logits"]
            raise InputError(f"{kinds[0]}: mixed teachers must be local models (a served or cached teacher keeps its top tokens "
                             "only, a mixture needs every token's probability); route examples with --teacher_column instead")
        self.entries, self.members, self.routes, self.objective = entries, members, routes, objective
        self.temperature, self.collective = temperature, collective
        total = sum(e.weight for e in entries)
        self.log_weights = torch.tensor([e.weight / total for e in entries]).log()
        self.sparse = members[0].sparse
        self.identity = json.dumps({"column": column, "teachers": [[m.identity, e.route, None if routes else e.weight / total]
                                                                  for m, e in zip(members, entries)]})
        self.taught = torch.zeros(len(members), dtype=torch.float64)  # training rows each teacher gave targets for
        how = "routed by --teacher_column" if routes else "mixed (" + ", ".join(f"{e.weight / total:.3g}" for e in entries) + ")"
        self.description = f"{len(members)} teachers, {how}: " + "; ".join(
            f"{e.teacher}{f' [{e.route}]' if routes else ''}: {m.description or 'its logits at every step'}" for e, m in zip(entries, members))
        self.warning = "; ".join(m.warning for m in members if m.warning) or None

    # --- the targets ---------------------------------------------------------------------------
    @torch.no_grad()
    def outputs(self, batch, with_hidden: bool = False, split: str = "train", logits: bool = True):
        """(the targets of `batch`: its routes' teachers' or the mixture; None). `logits=False`:
        every teacher's final hidden states as SeveralHidden (the chunked losses)."""
        if self.routes is None:
            if not logits:
                if split == "train":
                    self.taught += len(batch["index"])
                return SeveralHidden([m.outputs(batch, split=split, logits=False)[0] for m in self.members], None, self.log_weights,
                                     self.temperature if split == "train" else 1.0), None
            return self._mixed(batch, split), None
        rows = self._rows(batch, split)
        answers = []
        for i, member in enumerate(self.members):
            if len(rows[i]) or self.collective and member.model is not None:  # a sharded teacher runs on every rank together
                out, _ = member.outputs(_rows_of(batch, rows[i] if len(rows[i]) else rows[i].new_zeros(1)), split=split, logits=logits)
                answers.append(out if len(rows[i]) else None)
            else:
                answers.append(None)
        if split == "train":
            self.taught += torch.tensor([float(len(r)) for r in rows], dtype=torch.float64)
        if any(a is None for a, r in zip(answers, rows) if len(r)):
            return None, None  # a teacher with nothing at evaluation (a cache): no teacher metrics
        if not logits:
            return SeveralHidden(answers, (rows, len(batch["index"])), self.log_weights, 1.0), None
        return self._merged(batch, rows, answers), None

    def _mixed(self, batch, split: str) -> torch.Tensor:
        """T log sum_i w_i softmax(z_i / T): logits whose softmax at T is the mixture (T = 1 at evaluation)."""
        t = self.temperature if split == "train" else 1.0
        outs = [member.outputs(batch, split=split)[0] for member in self.members]
        if split == "train":
            self.taught += len(batch["index"])
        if any(o is None for o in outs):
            return None
        return mixture(outs, self.log_weights, t)

    def _rows(self, batch, split: str) -> list:
        route = self.routes[split].to(batch["index"].device)[batch["index"]]
        return [(route == i).nonzero().squeeze(1) for i in range(len(self.members))]

    def _merged(self, batch, rows: list, answers: list):
        """The members' answers for their rows, put back in the batch's row order."""
        first = next(a for a in answers if a is not None)
        if not isinstance(first, (torch.Tensor, SparseTargets)):
            return None  # a served teacher's evaluation rows: scored per teacher only where they are logits
        if isinstance(first, torch.Tensor):  # logits [B, ...]
            out = first.new_empty((len(batch["index"]), *first.shape[1:]))
            for r, a in zip(rows, answers):
                if len(r):
                    out[r] = a.to(out.dtype)
            return out
        # SparseTargets: rows are target positions in example order; each example's run of rows
        # comes from its route's teacher, in that teacher's (sub-batch) order.
        positions, _ = self.objective.token_rows(batch)
        example = positions // batch["input_ids"].shape[1]
        fields = {}
        for name in ("ids", "values", "tail", "entropy"):
            if getattr(first, name) is None:
                continue
            full = getattr(first, name).new_empty((len(example), *getattr(first, name).shape[1:]))
            for r, a in zip(rows, answers):
                if len(r):
                    full[torch.isin(example, r)] = getattr(a, name)
            fields[name] = full
        return SparseTargets(first.method, rest_as_one=first.rest_as_one, **fields)

    # --- the rest of the interface -------------------------------------------------------------
    def prepare(self, group: list, upcoming) -> None:
        """Each teacher is told of its own rows of the micro-batches (a served one asks ahead for them)."""
        for i, member in enumerate(self.members):
            if self.routes is None:
                member.prepare(group, upcoming)
            else:
                member.prepare(self._own(group, i), None if upcoming is None else self._own(upcoming, i))

    def _own(self, batches: list, i: int) -> list:
        """Teacher i's sub-batches of `batches` (as outputs makes them; those without its rows left out)."""
        own = [(b, self._rows(b, "train")[i]) for b in batches]
        return [_rows_of(b, r) for b, r in own if len(r)]

    def end_epoch(self, env) -> None:
        for member in self.members:
            member.end_epoch(env)

    def report(self, env) -> dict:
        """Which teacher taught how many training examples (summed over ranks), and each one's own report."""
        taught = all_reduce_sum(self.taught.to(env.device), env).tolist()
        own = [m.report(env) for m in self.members]
        return {"teachers": [{"teacher": e.teacher, **({"route": e.route} if self.routes else {"weight": e.weight}),
                              "examples": int(n), **o} for e, n, o in zip(self.entries, taught, own)]}

    def parameters(self) -> Optional[int]:
        counts = [m.parameters() for m in self.members]
        return sum(c for c in counts if c) or None


def mixture(logits: list, log_weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """T log sum_i w_i softmax(z_i / T) of the teachers' logits z_i [..., C] (log w_i: `log_weights`
    [M]): logits whose softmax at T is the mixture of their distributions, fp32."""
    log_p = torch.stack([torch.log_softmax(z.float() / temperature, dim=-1) for z in logits])
    weights = log_weights.to(log_p.device).view(-1, *[1] * (log_p.dim() - 1))
    return temperature * torch.logsumexp(log_p + weights, dim=0)


class SeveralHidden:
    """The final hidden states of several teachers, standing for their routed or mixed logits in
    the chunked losses. `hidden[i]`: teacher i's [B_i, S, H_i] (routed: its rows only, None where
    it has none) or, once gathered, [N, H_i] rows; `routes`: (each teacher's batch rows, B) before
    gathering, the [N] teacher of each row after; None when mixed (`log_weights` [M], at T)."""

    def __init__(self, hidden: list, routes, log_weights: torch.Tensor, temperature: float):
        self.hidden, self.routes, self.log_weights, self.temperature = hidden, routes, log_weights, temperature

    def gather(self, positions: torch.Tensor) -> "SeveralHidden":
        """The rows at `positions` [N] (flat over the batch's [B, S]): [N, H_i] for each teacher
        (routed: zeros on the rows of other teachers) and the teacher of each row."""
        if self.routes is None:
            return SeveralHidden([gather_rows(h, positions) for h in self.hidden], None, self.log_weights, self.temperature)
        rows, n_rows = self.routes
        width = next(h for h in self.hidden if h is not None).shape[1]
        row, column = positions // width, positions % width
        teacher = torch.full((n_rows,), -1, dtype=torch.long, device=positions.device)
        local = torch.zeros(n_rows, dtype=torch.long, device=positions.device)  # a row's place in its teacher's sub-batch
        gathered = []
        for i, (r, h) in enumerate(zip(rows, self.hidden)):
            r = r.to(positions.device)
            teacher[r], local[r] = i, torch.arange(len(r), device=positions.device)
            mine = teacher[row] == i
            out = None
            if h is not None:
                out = h.new_zeros((len(positions), h.shape[-1]))
                out[mine] = gather_rows(h, local[row[mine]] * width + column[mine])
            gathered.append(out)
        return SeveralHidden(gathered, teacher[row], self.log_weights, self.temperature)

    def __getitem__(self, part: slice) -> "SeveralHidden":
        routes = self.routes[part] if isinstance(self.routes, torch.Tensor) else self.routes
        return SeveralHidden([h[part] if h is not None else None for h in self.hidden], routes, self.log_weights, self.temperature)

    def logits(self, heads: list, columns: int) -> torch.Tensor:
        """[n, columns] the gathered rows' targets: each row's teacher's logits (routed), or
        T log sum_i w_i softmax(z_i / T) (mixed: whose softmax at T is the mixture)."""
        if self.routes is None:
            return mixture([head(h)[:, :columns] for head, h in zip(heads, self.hidden)], self.log_weights, self.temperature)
        out = None
        for i, (head, h) in enumerate(zip(heads, self.hidden)):
            mine = self.routes == i
            if h is None or not bool(mine.any()):
                continue
            z = head(h[mine])[:, :columns].float()
            out = z.new_zeros((len(self.routes), columns)) if out is None else out
            out[mine] = z
        return out


def _rows_of(batch: dict, rows: torch.Tensor) -> dict:
    """The sub-batch of `rows` (same padding: its positions are the batch's)."""
    return {k: v[rows.to(v.device)] for k, v in batch.items()}
