"""Scripted policies: what the agents "decide", written as K2.5 tool-call text.

Every decision goes through the model's own format: a policy returns the text a model would have
generated (`reasoning</think><|tool_calls_section_begin|>...`), and the scheduler reads it back with
k25ref.chat.parse_output. A real model can therefore replace any scripted policy (ModelPolicy).

    Worker                the frozen sub-agent (and the single agent): works through a <job>,
                          B tool calls per step, then answers with a markdown table
    single                one Worker on the whole task, 1 call per step           (serial ReAct)
    single-parallel       one Worker on the whole task, B calls per step          (parallel tool calls)
    swarm-static          orchestrator: split the units evenly over min(K, n) sub-agents
    swarm-lpt             orchestrator: longest-processing-time-first onto K bins (uses cost hints)
    swarm-pages           orchestrator: one sub-agent per search page; they enumerate and look up
    serial-collapse       broken orchestrator: one sub-agent at a time            (what r_parallel fights)
    spurious              broken orchestrator: K sub-agents, one does all the work, the others get
                          vague tasks and wander to their step limit           (what r_finish fights)

The scripted agents keep their to-do list to themselves, but write every answer only from what is
still in their context window: a discarded tool result is forgotten, as it would be for a model.
"""
from __future__ import annotations

import json
import re
from collections import deque
from typing import Callable

from k25ref import chat
from k25ref.errors import K25RefError
from k25ref.swarm.events import Message
from k25ref.swarm.tasks import format_table, job_of, parse_table, with_job

POLICIES = ("single", "single-parallel", "swarm-static", "swarm-lpt", "swarm-pages",
            "serial-collapse", "spurious")
_FACT = re.compile(r"^FACT (\S+) = (\S+)$", re.M)


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _summary_rows(text: str) -> list[dict]:
    """Rows of a sub-agent's returned summary (the table under its status line)."""
    return parse_table(text) if text.startswith("[") else []


def table_from_view(view: list[Message], job: dict) -> list[dict]:
    """The answer table an agent can write from the tool results still in its context.

    wide/lookup/pages: search pages name the rows, lookups fill the cells; chains: follow the hop
    results from each start; read/docs: the FACT lines of fetched documents; for an orchestrator,
    the tables in its sub-agents' summaries. Rows keep their first-seen order.
    """
    columns = job["columns"]
    key = columns[0]
    rows: dict[str, dict] = {}
    nexts, answers = {}, {}

    def put(k, **cells):
        row = rows.setdefault(k, {key: k})
        row.update({c: v for c, v in cells.items() if v != ""})

    for m in view:
        if m.role != "tool":
            continue
        if m.name == "assign_task":
            for r in _summary_rows(m.content):
                if r.get(key):
                    put(r[key], **{c: r.get(c, "") for c in columns[1:]})
            continue
        d = _json(m.content)
        if m.name == "search" and key == "name":
            for n in d.get("results", []):
                if isinstance(n, str):
                    put(n)
        elif m.name == "lookup" and "entity" in d and d.get("value") != "NOT_FOUND":
            put(d["entity"], **{d["attribute"]: str(d["value"])})
        elif m.name == "hop" and "key" in d:
            if "answer" in d:
                answers[d["key"]] = d["answer"]
            elif d.get("next") != "NOT_FOUND":
                nexts[d["key"]] = d["next"]
        elif m.name == "fetch":
            for item, value in _FACT.findall(d.get("text", "")):
                put(item, value=value)
    for start in job.get("starts", []):
        k, seen = start, set()
        while k in nexts and k not in seen:
            seen.add(k)
            k = nexts[k]
        if k in answers:
            put(start, answer=answers[k])
    return [{c: r.get(c, "") for c in columns} for r in rows.values()]


class _Speaker:
    """Writes calls as K2.5 text with ids functions.NAME:IDX, IDX counting every call of the agent."""

    def __init__(self):
        self.n_calls = 0
        self.outstanding: dict[str, tuple[str, dict]] = {}

    def say(self, thought: str, calls: list[tuple[str, dict]]) -> str:
        dicts = []
        for name, args in calls:
            cid = f"functions.{name}:{self.n_calls}"
            self.n_calls += 1
            self.outstanding[cid] = (name, args)
            dicts.append({"id": cid, "type": "function", "function": {"name": name, "arguments": args}})
        return f"{thought}</think>" + chat.format_tool_calls(dicts)

    @staticmethod
    def answer(thought: str, rows: list[dict], columns: list[str]) -> str:
        return f"{thought}</think>" + format_table(rows, columns)

    def new_results(self, view: list[Message]) -> list[tuple[str, str, dict, str]]:
        """(call id, tool, args, result) for our calls answered since the last step; forgotten after."""
        out = []
        for m in view:
            if m.role == "tool" and m.call_id in self.outstanding:
                name, args = self.outstanding.pop(m.call_id)
                out.append((m.call_id, name, args, m.content))
        return out

    def forget_unanswered(self) -> list[tuple[str, dict]]:
        """Calls of the last step that got no result (their text was unreadable): to be said again."""
        lost = list(self.outstanding.values())
        self.outstanding.clear()
        return lost


# ----------------------------------------------------------------------------
# the frozen worker: the single agent and every sub-agent


class Worker:
    """Works through one <job>, `batch` tool calls per step, then answers with a markdown table.

    Jobs: wide (search every page, then look up every cell), pages, lookup, chain (hop each start
    until its answer), read (search, then fetch every document), docs. A prompt with no <job> is a
    vague task: the worker keeps searching for more until its step limit (spurious parallelism).
    """

    def __init__(self, job: dict | None, batch: int, hint: str = ""):
        if batch < 1:
            raise K25RefError(f"Worker batch (tool calls per step) must be >= 1, got {batch}")
        self.job, self.batch, self.hint = job, batch, hint[:40]
        self.speaker, self.todo, self.asked = _Speaker(), deque(), set()
        if job is None:
            return
        kind = job["kind"]
        if kind in ("wide", "read"):
            self._ask("search", {"query": job["subject"], "page": 1})
        elif kind == "pages":
            for p in job["pages"]:
                self._ask("search", {"query": job["subject"], "page": p})
        elif kind == "lookup":
            for e in job["entities"]:
                for a in job["attributes"]:
                    self._ask("lookup", {"entity": e, "attribute": a})
        elif kind == "chain":
            for s in job["starts"]:
                self._ask("hop", {"key": s})
        elif kind == "docs":
            for d in job["docs"]:
                self._ask("fetch", {"doc_id": d})
        else:
            raise K25RefError(f"unknown job kind {kind!r} in a worker prompt")

    @classmethod
    def from_prompt(cls, prompt: str, batch: int) -> "Worker":
        return cls(job_of(prompt), batch, hint=prompt)

    def _ask(self, tool: str, args: dict):
        key = (tool, json.dumps(args, sort_keys=True))
        if key not in self.asked:
            self.asked.add(key)
            self.todo.append((tool, args))

    def _learn(self, tool: str, args: dict, result: str):
        """Plan follow-up calls from one result: pages -> more pages and lookups; hops -> next hop."""
        if result.startswith("ERROR: malformed"):           # our own text was unreadable: say it again
            self.todo.appendleft((tool, args))
            return
        d, job = _json(result), self.job
        if tool == "search" and "results" in d:
            if d["page"] == 1 and job["kind"] in ("wide", "read"):
                for p in range(2, d["total_pages"] + 1):
                    self._ask("search", {"query": job["subject"], "page": p})
            for hit in d["results"]:
                if isinstance(hit, dict):
                    self._ask("fetch", {"doc_id": hit["doc_id"]})
                else:
                    for a in job["attributes"]:
                        self._ask("lookup", {"entity": hit, "attribute": a})
        elif tool == "hop" and d.get("next", "NOT_FOUND") != "NOT_FOUND":
            self._ask("hop", {"key": d["next"]})

    def act(self, view: list[Message]) -> str:
        for _, tool, args, result in self.speaker.new_results(view):
            if self.job is not None:
                self._learn(tool, args, result)
        lost = self.speaker.forget_unanswered()            # e.g. a call cut off by truncated output
        if self.job is not None:
            self.todo.extendleft(reversed(lost))
        if self.job is None:                               # vague: keep looking, never conclude
            page = self.speaker.n_calls + 1
            return self.speaker.say("Not sure what is needed; searching more.",
                                    [("search", {"query": self.hint, "page": page})])
        if self.todo:
            calls = [self.todo.popleft() for _ in range(min(self.batch, len(self.todo)))]
            return self.speaker.say(f"{len(calls)} calls, {len(self.todo)} left.", calls)
        return self.speaker.answer("Done; writing the table.", table_from_view(view, self.job),
                                   self.job["columns"])

    def partial_answer(self, view: list[Message]) -> str:
        if self.job is None:
            return "(no findings)"
        return format_table(table_from_view(view, self.job), self.job["columns"])


# ----------------------------------------------------------------------------
# orchestrators


def _split_even(units: list, k: int) -> list[list]:
    """Contiguous chunks whose sizes differ by at most one."""
    k = max(1, min(k, len(units)))
    q, r = divmod(len(units), k)
    out, i = [], 0
    for j in range(k):
        n = q + (j < r)
        out.append(units[i:i + n])
        i += n
    return out


def _split_lpt(units: list, costs: list[float], k: int) -> list[list]:
    """Longest processing time first: each unit, costliest first, to the least-loaded bin [Graham]."""
    k = max(1, min(k, len(units)))
    bins, loads = [[] for _ in range(k)], [0.0] * k
    for i in sorted(range(len(units)), key=lambda i: (-costs[i], i)):
        j = min(range(k), key=lambda j: (loads[j], j))
        bins[j].append(units[i])
        loads[j] += costs[i]
    return bins


class Orchestrator:
    """Discovers the work units itself, then delegates them to sub-agents and merges their tables.

    units: entity names (wide), document ids (read), chain starts (deep, mixed). Discovery uses the
    same paginated search as a worker (pages 2.. in parallel once page 1 says how many there are);
    chain starts are in the task. strategy picks how units become sub-agent jobs and how many
    assignments go out per step (`per_step`: None = all at once, 1 = serial collapse).
    """

    def __init__(self, job: dict, K: int, batch: int, strategy: str, query: str = ""):
        self.job, self.K, self.batch, self.strategy = job, K, batch, strategy
        self.query = query.split("\n")[0]
        self.speaker = _Speaker()
        self.units: list = list(job.get("starts", []))
        self.costs: dict = dict(zip(job.get("starts", []), job.get("depths", [])))
        self.pages_total = 0
        self.searches = deque()
        self.assignments: deque | None = None          # (agent, prompt) not yet accepted
        self.created: set[str] = set()
        if job["kind"] in ("wide", "read"):
            self.searches.append({"query": job["subject"], "page": 1})

    # -- planning ---------------------------------------------------------------

    def _learn(self, tool: str, args: dict, result: str):
        d = _json(result)
        if tool == "search" and "results" in d:
            if d["page"] == 1:
                self.pages_total = d["total_pages"]
                if self.strategy != "swarm-pages":
                    self.searches.extend({"query": self.job["subject"], "page": p}
                                         for p in range(2, d["total_pages"] + 1))
            for hit in d["results"]:
                unit = hit["doc_id"] if isinstance(hit, dict) else hit
                self.units.append(unit)
                self.costs[unit] = hit["tokens"] if isinstance(hit, dict) else 1.0
        elif tool == "assign_task" and result.startswith("ERROR: assign_task") and "again later" in result:
            self.assignments.append((args["agent"], args["prompt"]))     # rejected: try again next step

    def _job_prompt(self, units: list, extra_pages: list | None = None) -> str:
        job, cols = self.job, self.job["columns"]
        if job["kind"] == "wide" and extra_pages:
            return with_job(f"Search '{job['subject']}' pages {extra_pages} and find {', '.join(job['attributes'])} "
                            f"for every result. Reply with a markdown table with columns {', '.join(cols)}.",
                            {"kind": "pages", "subject": job["subject"], "pages": extra_pages,
                             "attributes": job["attributes"], "columns": cols})
        if job["kind"] == "read" and extra_pages:
            return with_job(f"Search '{job['subject']}' pages {extra_pages}, read every result and list each "
                            f"FACT. Reply with a markdown table with columns {', '.join(cols)}.",
                            {"kind": "pages", "subject": job["subject"], "pages": extra_pages, "columns": cols})
        if job["kind"] == "wide":
            return with_job(f"Find {', '.join(job['attributes'])} for each of: {', '.join(units)}. Reply with a "
                            f"markdown table with columns {', '.join(cols)}.",
                            {"kind": "lookup", "entities": units, "attributes": job["attributes"], "columns": cols})
        if job["kind"] == "read":
            return with_job(f"Read documents {', '.join(units)} and list each FACT they state. Reply with a "
                            f"markdown table with columns {', '.join(cols)}.", {"kind": "docs", "docs": units, "columns": cols})
        return with_job(f"Follow the hop chain from each of {', '.join(units)} to its answer. Reply with a "
                        f"markdown table with columns {', '.join(cols)}.", {"kind": "chain", "starts": units, "columns": cols})

    def _plan(self) -> deque:
        """The list of (sub-agent name, prompt) to hand out, by strategy."""
        units, K = self.units, self.K
        if self.strategy == "swarm-lpt":
            groups = [(g, None) for g in _split_lpt(units, [self.costs.get(u, 1.0) for u in units], K)]
        elif self.strategy == "swarm-pages" and self.pages_total > 1:
            groups = [(units, None)] + [([], [p]) for p in range(2, self.pages_total + 1)]
        elif self.strategy == "serial-collapse":
            groups = [(g, None) for g in _split_even(units, K)]
        elif self.strategy == "spurious":
            groups = [(units, None)] + [(None, None)] * (K - 1)
        else:
            groups = [(g, None) for g in _split_even(units, K)]
        plan = deque()
        for i, (g, pages) in enumerate(groups, 1):
            prompt = (f"Help with this task: {self.query} Double-check everything you can find."
                      if g is None else self._job_prompt(g, pages))
            plan.append((f"worker-{i}", prompt))
        return plan

    # -- acting -------------------------------------------------------------------

    def act(self, view: list[Message]) -> str:
        for _, tool, args, result in self.speaker.new_results(view):
            self._learn(tool, args, result)
        if self.searches:
            calls = [("search", self.searches.popleft()) for _ in range(min(self.batch, len(self.searches)))]
            return self.speaker.say(f"Enumerating: {len(calls)} pages.", calls)
        if self.assignments is None:
            self.assignments = self._plan()
        if self.assignments:
            n = 1 if self.strategy == "serial-collapse" else len(self.assignments)
            calls = []
            for _ in range(n):
                agent, prompt = self.assignments.popleft()
                if agent not in self.created:
                    self.created.add(agent)
                    calls.append(("create_subagent", {"name": agent, "system_prompt":
                                  f"You are {agent}, a research sub-agent. Use the tools, then reply with "
                                  f"only a markdown table."}))
                calls.append(("assign_task", {"agent": agent, "prompt": prompt}))
            return self.speaker.say(f"Delegating {n} task(s).", calls)
        return self.speaker.answer("Merging the sub-agents' tables.", table_from_view(view, self.job),
                                   self.job["columns"])

    def partial_answer(self, view: list[Message]) -> str:
        return format_table(table_from_view(view, self.job), self.job["columns"])


# ----------------------------------------------------------------------------
# a real model as a policy


class ModelPolicy:
    """Drives an agent with a text generator instead of a script.

    generate(messages) -> str receives OpenAI-style messages (what k25ref.chat.render takes) and
    returns the raw generated text; e.g. render with chat.render(messages, tools=TOOL_SCHEMAS) and
    decode with any k25ref checkpoint. The scripted policies are the default; this is the socket.
    """

    def __init__(self, generate: Callable[[list[dict]], str], columns: list[str]):
        self.generate, self.columns = generate, columns

    def act(self, view: list[Message]) -> str:
        messages = [{"role": m.role, "content": m.content, **({"tool_call_id": m.call_id} if m.call_id else {})}
                    for m in view]
        return self.generate(messages)

    def partial_answer(self, view: list[Message]) -> str:
        last = next((m.content for m in reversed(view) if m.role == "assistant"), "")
        return format_table(parse_table(chat.parse_output(last).content), self.columns)


def _schema(name: str, description: str, props: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": props, "required": required}}}


_S, _I = {"type": "string"}, {"type": "integer"}
TOOL_SCHEMAS = [
    _schema("search", "One page of results for a query.", {"query": _S, "page": _I}, ["query"]),
    _schema("lookup", "One attribute of one entity.", {"entity": _S, "attribute": _S}, ["entity", "attribute"]),
    _schema("hop", "The next key of a chain, or its answer.", {"key": _S}, ["key"]),
    _schema("fetch", "The full text of a document.", {"doc_id": _S}, ["doc_id"]),
    _schema("create_subagent", "Create a sub-agent with its own system prompt.",
            {"name": _S, "system_prompt": _S}, ["name", "system_prompt"]),
    _schema("assign_task", "Run a created sub-agent on a task; returns its summary.",
            {"agent": _S, "prompt": _S, "max_steps": _I}, ["agent", "prompt"]),
]


# ----------------------------------------------------------------------------
# policy factory


def make_policies(name: str, task, K: int, batch: int):
    """(main policy, sub-agent factory) for a policy name. Sub-agents are frozen Workers."""
    job = job_of(task.query)
    if job is None:
        raise K25RefError(f"task {task.instance_id}: its query has no <job> line for the scripted policies")
    sub = (lambda system_prompt, prompt: Worker.from_prompt(prompt, batch))
    if name == "single":
        return Worker(job, 1), sub
    if name == "single-parallel":
        return Worker(job, batch), sub
    if name in POLICIES:
        return Orchestrator(job, K, batch, name, task.query), sub
    raise K25RefError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
