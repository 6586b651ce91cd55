"""Task families in a WideSearch-like format, their gold tables, and WideSearch's table scoring.

A task is one JSONL row, as in WideSearch's data loader [swarm-facts §5.6]:

    {"instance_id": "toywide-0000", "family": "wide", "language": "en", "world_seed": 1234,
     "query": "List every ... <job>{...}</job>",
     "evaluation": {"required": [...], "unique_columns": [...], "eval_pipeline": {col: {"metric": [...]}}},
     "spec": {...}}                       # the world's shape: sizes, subject, chain lengths, ...

and its gold table is `gold/<instance_id>.csv`. The answer is a markdown table in the final message.

Families (what each one teaches):

    ToyWide   enumerate N entities (paginated search), then N x C independent lookups   fan-out pays
    ToyDeep   one chain of L hops; only the last key's answer matters                  a swarm cannot help
    ToyMixed  k chains of different lengths, answered together at the end              stragglers decide
    ToyRead   M long documents whose FACT lines form the table                         context sharding

The query's prose is what a real model reads; the `<job>` line is what the scripted agents read.

Scoring follows WideSearch's evaluation.py: inner-join on the unique columns (duplicates dropped,
first kept); key cells score 1, other cells by their metric (exact_match or number_near); a row
scores the min of its cells, an item is a cell; precision/recall over predicted/gold rows (x columns);
success only when every row and item matches.
"""
from __future__ import annotations

import csv
import io
import json
import pathlib
import re
from dataclasses import dataclass, asdict

from k25ref.errors import K25RefError
from k25ref.files import FileProblem, atomic_open, read_bytes
from k25ref.swarm.world import ATTRIBUTE_METRICS, World, canonical, keyed_rng

FAMILIES = ("wide", "deep", "mixed", "read")
_JOB = re.compile(r"<job>(.*?)</job>", re.S)


@dataclass(frozen=True)
class Task:
    """One benchmark instance: the query, how it is scored, and the shape of its world."""
    instance_id: str
    family: str
    world_seed: int
    query: str
    evaluation: dict
    spec: dict
    language: str = "en"

    @property
    def columns(self) -> list[str]:
        return list(self.evaluation["required"])

    def to_json(self) -> str:
        return canonical(asdict(self))


def job_of(text: str) -> dict | None:
    """The machine-readable `<job>{...}</job>` line of a prompt, or None when there is none."""
    m = _JOB.search(text)
    if m is None:
        return None
    try:
        return json.loads(m.group(1))
    except json.JSONDecodeError as e:
        raise K25RefError(f"malformed <job> line in a prompt: {e} in {m.group(1)[:60]!r}") from None


def with_job(prose: str, job: dict) -> str:
    return f"{prose}\n<job>{canonical(job)}</job>"


# ----------------------------------------------------------------------------
# the four families


def make_task(family: str, index: int, seed: int, quick: bool = False) -> Task:
    """Instance `index` of a family; `seed` fixes the world, `quick` makes it smaller."""
    world_seed = int(keyed_rng(seed, family, index).integers(0, 2**31))
    iid = f"toy{family}-{seed:04d}-{index:04d}" + ("-quick" if quick else "")
    if family == "wide":
        n, attrs = (24, ["founded", "population", "region"]) if quick else (64, ["founded", "population", "region"])
        subject = f"castles of {['Norland', 'Vesmark', 'Ostria', 'Calder'][index % 4]}"
        spec = {"subject": subject, "n_entities": n, "attributes": attrs, "page_size": 8}
        cols = ["name"] + attrs
        pipe = {a: _metric(a) for a in attrs}
        query = with_job(f"List every one of the {subject} with its {', '.join(attrs)}. Answer with a "
                         f"markdown table with columns {', '.join(cols)}.",
                         {"kind": "wide", "subject": subject, "attributes": attrs, "columns": cols})
        evaluation = {"required": cols, "unique_columns": ["name"], "eval_pipeline": pipe}
    elif family in ("deep", "mixed"):
        if family == "deep":
            lengths = [8 if quick else 14]
        else:
            rng = keyed_rng(seed, family, index, "lengths")
            lengths = [int(x) for x in rng.integers(3, 8 if quick else 13, 4 if quick else 8)]
        spec = {"chain_lengths": lengths}
        task = Task(iid, family, world_seed, "", {}, spec)
        starts = list(World(task).chains)
        query = with_job(
            f"Follow each chain of keys with the hop tool until it gives an answer: starting keys "
            f"{', '.join(starts)} (about {', '.join(map(str, lengths))} hops). Answer with a markdown "
            f"table with columns start, answer.", {"kind": "chain", "starts": starts, "depths": lengths,
                          "columns": ["start", "answer"]})
        evaluation = {"required": ["start", "answer"], "unique_columns": ["start"],
                      "eval_pipeline": {"answer": {"metric": ["exact_match"]}}}
    elif family == "read":
        subject = f"field reports {['alpha', 'beta', 'gamma'][index % 3]}"
        spec = {"subject": subject, "n_docs": 8 if quick else 12, "facts_per_doc": 4,
                "doc_tokens": [3000, 5000], "page_size": 8}
        query = with_job(f"Read every document of the {subject} and list each FACT it states. Answer with "
                         f"a markdown table with columns item, value.", {"kind": "read", "subject": subject,
                                                              "columns": ["item", "value"]})
        evaluation = {"required": ["item", "value"], "unique_columns": ["item"],
                      "eval_pipeline": {"value": {"metric": ["exact_match"]}}}
    else:
        raise K25RefError(f"unknown task family {family!r}; choose one of {FAMILIES}")
    return Task(iid, family, world_seed, query, evaluation, spec)


def _metric(attribute: str) -> dict:
    name, criterion = ATTRIBUTE_METRICS[attribute]
    return {"metric": [name]} if criterion is None else {"metric": [name], "criterion": criterion}


def gold_table(task: Task) -> list[dict]:
    """The true table, read from the world (NOT_FOUND cells keep their true value: they are just hidden)."""
    world = World(task)
    if task.family == "wide":
        return [{"name": e, **{a: str(world.cell(e, a)) for a in task.spec["attributes"]}} for e in world.catalog]
    if task.family in ("deep", "mixed"):
        return [{"start": s, "answer": world.chain_answer(s)} for s in world.chains]
    return [{"item": i, "value": v} for d in world.catalog for i, v in world.doc_facts(d)]


# ----------------------------------------------------------------------------
# files: tasks.jsonl + gold/<instance_id>.csv


def write_suite(folder, tasks: list[Task]) -> pathlib.Path:
    folder = pathlib.Path(folder)
    (folder / "gold").mkdir(parents=True, exist_ok=True)
    for path, text in [(folder / "tasks.jsonl", "".join(t.to_json() + "\n" for t in tasks))] + [
            (folder / "gold" / f"{t.instance_id}.csv", table_to_csv(gold_table(t), t.columns)) for t in tasks]:
        with atomic_open(path) as f:               # complete or absent; a symlink is replaced, not followed
            f.write(text)
    return folder


def _read_text(path):
    """A suite file's text: a regular UTF-8 file under the size cap, or a K25RefError naming it."""
    try:
        return read_bytes(path, "task suite").decode("utf-8")
    except FileProblem as e:
        raise K25RefError(f"{path}: {e.detail}") from None
    except UnicodeDecodeError as e:
        raise K25RefError(f"{path}: not UTF-8 (byte {e.start})") from None


def read_suite(folder) -> list[tuple[Task, list[dict]]]:
    """(task, gold rows) for every line of tasks.jsonl; malformed lines raise K25RefError naming them."""
    folder = pathlib.Path(folder)
    out = []
    for n, line in enumerate(_read_text(folder / "tasks.jsonl").splitlines(), 1):
        if not line.strip():
            continue
        try:
            task = Task(**json.loads(line))
        except (ValueError, TypeError, RecursionError) as e:     # bad JSON, 5000-digit ints, not an object
            raise K25RefError(f"{folder / 'tasks.jsonl'}:{n}: not a task row ({e})") from None
        check_task(task, f"{folder / 'tasks.jsonl'}:{n}")
        gold_path = folder / "gold" / f"{task.instance_id}.csv"
        if not gold_path.exists():
            raise K25RefError(f"{gold_path}: gold table missing for {task.instance_id}")
        out.append((task, list(csv.DictReader(io.StringIO(_read_text(gold_path))))))
    return out


_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_task(task: Task, where: str):
    """K25RefError naming `where` unless the row's fields have the types the world and the scorer read, and its
    spec builds its family's world (a row made by hand can hold anything JSON can)."""
    problem = _task_problem(task)
    if problem:
        raise K25RefError(f"{where}: {problem}")


def _task_problem(task: Task) -> str | None:
    ev = task.evaluation
    if not (isinstance(task.instance_id, str) and _PLAIN_NAME.fullmatch(task.instance_id)):
        return "instance_id must be a plain file name (letters, digits, . _ -)"
    if task.family not in FAMILIES:
        return f"family must be one of {', '.join(FAMILIES)}"
    if type(task.world_seed) is not int:
        return "world_seed must be an integer"
    if not (isinstance(task.query, str) and isinstance(task.language, str)):
        return "query and language must be text"
    if not isinstance(task.spec, dict):
        return "spec must be an object"
    names = lambda k: isinstance(ev.get(k), list) and all(isinstance(c, str) for c in ev[k])   # noqa: E731
    if not (isinstance(ev, dict) and names("required") and names("unique_columns")
            and isinstance(ev.get("eval_pipeline"), dict)):
        return "evaluation needs required and unique_columns (lists of column names) and eval_pipeline (an object)"
    try:
        gold_table(task)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        return f"spec does not describe a {task.family} world ({type(e).__name__}: {e})"
    return None


def table_to_csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


# ----------------------------------------------------------------------------
# markdown tables: what agents write and read back


def format_table(rows: list[dict], columns: list[str]) -> str:
    """A pipe table; missing cells are empty."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def parse_table(text: str) -> list[dict]:
    """Rows of the first pipe table in `text` (inside a ```markdown fence if there is one)."""
    fence = re.search(r"```markdown\n(.*?)```", text, re.S)
    lines = [ln.strip() for ln in (fence.group(1) if fence else text).splitlines()]
    start = next((i for i, ln in enumerate(lines) if ln.startswith("|")), None)
    if start is None:
        return []
    block = []
    for ln in lines[start:]:
        if not ln.startswith("|"):
            break
        block.append([c.strip() for c in ln.strip("|").split("|")])
    header, body = block[0], [r for r in block[1:] if not all(set(c) <= set("-: ") for c in r)]
    return [dict(zip(header, r)) for r in body if len(r) == len(header)]


# ----------------------------------------------------------------------------
# WideSearch scoring


@dataclass(frozen=True)
class Score:
    precision_by_row: float
    recall_by_row: float
    f1_by_row: float
    precision_by_item: float
    recall_by_item: float
    f1_by_item: float
    success: int


def _norm(x) -> str:
    return " ".join(str(x).strip().lower().split())


def _cell_score(pred: str, gold: str, pipeline: dict) -> float:
    """One cell: exact_match on normalised text, or number_near: |p - g| <= criterion * |g|."""
    if "number_near" in pipeline.get("metric", []):
        try:
            p, g = float(pred), float(gold)
        except ValueError:
            return 0.0
        return float(abs(p - g) <= pipeline.get("criterion", 0.0) * abs(g))
    return float(_norm(pred) == _norm(gold))


def _dedup(rows: list[dict], keys: list[str]) -> dict:
    out = {}
    for r in rows:
        k = tuple(_norm(r.get(c, "")) for c in keys)
        out.setdefault(k, r)
    return out


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 1e-9 else 0.0


def score_table(pred: list[dict], gold: list[dict], evaluation: dict) -> Score:
    """WideSearch row/item precision, recall, F1 and exact success of a predicted table."""
    required, keys, pipe = evaluation["required"], evaluation["unique_columns"], evaluation["eval_pipeline"]
    if pred and set(pred[0]) != set(required):
        return Score(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
    P, G = _dedup(pred, keys), _dedup(gold, keys)
    tp_row = tp_item = 0.0
    for k in P.keys() & G.keys():
        cells = [1.0 if c in keys else _cell_score(P[k].get(c, ""), G[k][c], pipe.get(c, {})) for c in required]
        tp_row += min(cells)
        tp_item += sum(cells)
    n_items_p, n_items_g = len(P) * len(required), len(G) * len(required)
    pr, rr = (tp_row / len(P) if P else 0.0), (tp_row / len(G) if G else 0.0)
    pi, ri = (tp_item / n_items_p if P else 0.0), (tp_item / n_items_g if G else 0.0)
    success = int(pr == rr == pi == ri == 1.0)
    return Score(pr, rr, _f1(pr, rr), pi, ri, _f1(pi, ri), success)
