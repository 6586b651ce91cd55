"""The discrete-event agent loop: one orchestrator, frozen sub-agents, tools, on a virtual integer clock.

No threads, no sleeps: a heap of `(time, seq)` events, where `seq` is a global counter, so ties break
the same way on every run. Agents are state machines stepped by the scheduler [swarm-facts §5.1].

One agent *step* is one model generation, as in kimi-cli's `step()` and the paper's CriticalSteps:

    t0                          t0 + llm_ticks              t1 = max over calls of their end
    |-- generate K2.5 text -----|-- every tool call of the step starts together --|-- next step
                                   (identical calls in one step run once: merged)     (a barrier)

The orchestrator has two extra tools [K2.5 App. E.8; kimi-cli CreateSubagent/Task]:

    create_subagent(name, system_prompt)     registers a frozen sub-agent spec (instant)
    assign_task(agent, prompt, max_steps)    runs it with a fresh, isolated context; the call returns
                                             when the sub-agent ends, with a bounded summary

Several assign_task calls in one orchestrator step are one parallel group: one CriticalSteps stage.
Sub-agents cannot spawn (depth 1). At most K run at once: extra assignments are rejected (an error
the orchestrator can react to) or queued FIFO. Each sub-agent has a step limit and a wall timeout;
when one fails, its siblings keep running (collect-all, the default) or are cancelled (fail-fast).
When the orchestrator ends, everything still running is cancelled and no event fires afterwards.

The text of every step goes through k25ref's chat-format parser, so malformed generations become
tool errors exactly as they would with a real model.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

from k25ref import chat
from k25ref.errors import ConfigError
from k25ref.swarm.world import WORLD_TOOLS, FaultPlan, RateLimiter, World, canonical

ORCHESTRATOR_TOOLS = ("create_subagent", "assign_task")


def count_tokens(text: str) -> int:
    """Toy token count: about 4 characters per token, the usual rule of thumb for English BPE."""
    return max(1, math.ceil(len(text) / 4))


# ----------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class LLMTiming:
    """Ticks one generation takes: base + decode + prefill (a longer context makes every step slower)."""
    base: int = 2                        # fixed overhead per call
    out_tokens_per_tick: int = 40        # decode speed
    ctx_tokens_per_tick: int = 2000      # prefill/re-reading speed

    def ticks(self, context_tokens: int, output_tokens: int) -> int:
        return (self.base + math.ceil(output_tokens / self.out_tokens_per_tick)
                + context_tokens // self.ctx_tokens_per_tick)


@dataclass(frozen=True)
class SwarmConfig:
    """Limits of the loop. Step limits default to the paper's WideSearch setting (100 and 100)."""
    max_subagents: int = 16              # K: sub-agents running at once
    overflow: str = "queue"              # what assign_task does beyond K: "queue" (FIFO) or "reject"
    failure_mode: str = "collect-all"    # or "fail-fast": a failed sub-agent cancels its group
    orchestrator_max_steps: int = 100
    subagent_max_steps: int = 100
    subagent_timeout: int = 3000         # wall ticks a sub-agent may run
    tool_timeout: int = 40               # wall ticks one tool attempt may take
    max_attempts: int = 4                # per tool call (transient errors and timeouts)
    context_budget: int = 32_000         # tokens; beyond it the oldest tool results are discarded
    summary_budget: int = 2_000          # tokens of a sub-agent's summary the orchestrator gets back
    deadline: int = 0                    # wall ticks for the episode; 0 = none
    llm: LLMTiming = field(default_factory=LLMTiming)

    def __post_init__(self):
        if self.overflow not in ("queue", "reject"):
            raise ConfigError(f"SwarmConfig.overflow must be 'queue' or 'reject', got {self.overflow!r}")
        if self.failure_mode not in ("collect-all", "fail-fast"):
            raise ConfigError(f"SwarmConfig.failure_mode must be 'collect-all' or 'fail-fast', "
                              f"got {self.failure_mode!r}")
        for name in ("max_subagents", "orchestrator_max_steps", "subagent_max_steps", "subagent_timeout",
                     "tool_timeout", "max_attempts", "context_budget", "summary_budget"):
            if getattr(self, name) < 1:
                raise ConfigError(f"SwarmConfig.{name} must be >= 1, got {getattr(self, name)!r}")


# ----------------------------------------------------------------------------
# what agents see and do


@dataclass
class Message:
    """One entry of an agent's context. Tool results carry the call they answer."""
    role: str                 # "system" | "user" | "assistant" | "tool"
    content: str
    tokens: int
    name: str = ""            # tool name, for role == "tool"
    call_id: str = ""
    args: dict | None = None


class Policy(Protocol):
    """What drives an agent: a function from its visible context to the text of its next generation."""

    def act(self, view: list[Message]) -> str:
        """K2.5 assistant text: a tool-call section, or a final answer (a markdown table)."""

    def partial_answer(self, view: list[Message]) -> str:
        """The table this agent could write now (used on timeouts, deadlines and for quality curves)."""


@dataclass(eq=False)
class Call:
    """One tool call in flight (or merged into an identical call of the same step: `primary`)."""
    id: str
    name: str
    args: dict
    agent: "Agent"
    start: int
    primary: "Call | None" = None
    attempt: int = 0
    n_429: int = 0
    result: str | None = None
    end: int | None = None
    stage: dict | None = None           # for assign_task: the orchestrator stage it belongs to
    outcome: str = ""                   # kind of the attempt in flight ("ok" | "transient")
    attempt_start: int = 0
    alive: bool = True


@dataclass(eq=False)
class Agent:
    name: str
    role: str                           # "main" or "sub"
    policy: Policy
    context: list[Message]
    max_steps: int
    start: int
    parent: Call | None = None          # the assign_task call waiting for this sub-agent
    stage: dict | None = None           # the orchestrator stage this sub-agent belongs to
    steps: int = 0
    status: str = "running"     # running | finished | max_steps | timeout | error | cancelled | deadline
    end: int | None = None
    calls: list[Call] = field(default_factory=list)   # calls of the current step, in emitted order
    peak_context: int = 0
    pending_text: str = ""              # the generation in progress, read when it completes
    alive: bool = True

    @property
    def tokens(self) -> int:
        return sum(m.tokens for m in self.context)


@dataclass
class Trace:
    """Everything an episode did, JSON-able, in event order: the input of accounting and plots."""
    log: list = field(default_factory=list)          # [t, kind, agent, detail]
    spans: list = field(default_factory=list)        # {lane, kind, start, end, label, outcome}
    stages: list = field(default_factory=list)       # orchestrator steps: {"main": 1, "subs": [steps...]}
    quality: list = field(default_factory=list)      # [t, table text] after each orchestrator step
    world_answers: dict = field(default_factory=dict)  # "tool args" -> answer text (policy-independent)
    counters: dict = field(default_factory=dict)
    subagents: list = field(default_factory=list)    # {name, status, steps, start, end, peak_context}
    final: str = ""
    status: str = ""
    end: int = 0
    orphans: int = 0


# ----------------------------------------------------------------------------
# the scheduler


class Episode:
    """One task, one orchestrator (or single agent), run to completion on the virtual clock."""

    def __init__(self, world: World, main_policy: Policy, subagent_policy: Callable[[str, str], Policy],
                 config: SwarmConfig | None = None, faults: FaultPlan | None = None):
        self.world, self.cfg = world, config or SwarmConfig()
        self.faults = faults or world.faults
        self.make_subagent = subagent_policy
        self.limiter = RateLimiter(world.config.rate_limit)
        self.heap, self.seq, self.now, self.ended = [], 0, 0, False
        self.trace = Trace(counters={k: 0 for k in (
            "llm_calls", "input_tokens", "output_tokens", "tool_calls", "tool_attempts", "merged_calls",
            "retries", "rate_limited", "tool_timeouts", "subagent_timeouts", "tool_errors", "parse_errors",
            "subagents_created", "subagents_assigned", "subagents_finished", "rejected", "queued",
            "cancelled_agents", "cancelled_calls", "discarded_messages", "events")})
        self.registry: dict[str, str] = {}              # created sub-agents: name -> system prompt
        self.busy: set[str] = set()                      # sub-agent names running or queued
        self.running: list[Agent] = []
        self.queue: list[Call] = []
        self.subs: list[Agent] = []
        self.all_calls: list[Call] = []
        task = world.task
        self.main = Agent("main", "main", main_policy,
                          [Message("user", task.query, count_tokens(task.query))],
                          self.cfg.orchestrator_max_steps, start=0)

    # -- the loop -----------------------------------------------------------

    def run(self) -> Trace:
        if self.cfg.deadline:
            self._at(self.cfg.deadline, "deadline", None)
        self._begin_step(self.main)
        while self.heap and not self.ended:
            t, _, kind, obj = heapq.heappop(self.heap)
            if obj is not None and not obj.alive:
                continue                                 # cancelled: its events never fire
            self.now = t
            self.trace.counters["events"] += 1
            getattr(self, "_on_" + kind)(obj)
        if not self.ended:
            raise RuntimeError("swarm scheduler ran out of events before the orchestrator ended")
        # orphans: sub-agents still running, calls never answered nor cancelled, events that would fire
        self.trace.orphans = (sum(a.status == "running" for a in self.subs)
                              + sum(c.alive and c.primary is None and c.result is None for c in self.all_calls)
                              + sum(o is not None and o.alive for *_, o in self.heap))
        self.trace.subagents = [{"name": a.name, "status": a.status, "steps": a.steps, "start": a.start,
                                 "end": a.end, "peak_context": a.peak_context} for a in self.subs]
        self.trace.counters["peak_context"] = max([self.main.peak_context] + [a.peak_context for a in self.subs])
        return self.trace

    def _at(self, t: int, kind: str, obj):
        heapq.heappush(self.heap, (t, self.seq, kind, obj))
        self.seq += 1

    def _log(self, kind: str, agent: str, detail: str = ""):
        self.trace.log.append([self.now, kind, agent, detail])

    # -- agent steps ----------------------------------------------------------

    def _begin_step(self, agent: Agent):
        if agent.steps >= agent.max_steps:
            self._finish(agent, "max_steps", agent.policy.partial_answer(agent.context))
            return
        self._fit_context(agent)
        mode = self.faults.corrupt.get((agent.name, agent.steps + 1))
        if mode == "crash":                              # the model call itself fails (provider error)
            self._finish(agent, "error", agent.policy.partial_answer(agent.context))
            return
        text = agent.policy.act(list(agent.context))
        if mode == "truncate":
            text = text[: max(1, int(len(text) * 0.8))]
        agent.steps += 1
        ctx, out = agent.tokens, count_tokens(text)
        agent.peak_context = max(agent.peak_context, ctx + out)
        c = self.trace.counters
        c["llm_calls"] += 1
        c["input_tokens"] += ctx
        c["output_tokens"] += out
        dt = self.cfg.llm.ticks(ctx, out)
        self.trace.spans.append({"lane": agent.name, "kind": "llm", "start": self.now, "end": self.now + dt,
                                 "label": f"step {agent.steps}", "outcome": ""})
        agent.pending_text = text
        self._at(self.now + dt, "generated", agent)

    def _fit_context(self, agent: Agent):
        """Discard the oldest tool results (then old assistant turns) until the context fits the budget."""
        while agent.tokens > self.cfg.context_budget:
            victims = [i for i, m in enumerate(agent.context) if m.role == "tool"] or \
                      [i for i, m in enumerate(agent.context[:-1]) if m.role == "assistant"]
            if not victims:
                return
            del agent.context[victims[0]]
            self.trace.counters["discarded_messages"] += 1

    def _on_generated(self, agent: Agent):
        text = agent.pending_text
        out = chat.parse_output(text)
        agent.context.append(Message("assistant", text, count_tokens(text)))
        if agent.role == "main":
            agent.stage = {"main": 1, "subs": []}
            self.trace.stages.append(agent.stage)
        self._log("step", agent.name, f"{len(out.tool_calls)} calls")
        agent.calls = []
        if not out.tool_calls:
            if out.problems:                             # a broken tool section with no usable call
                self.trace.counters["parse_errors"] += 1
                err = "ERROR: could not read your tool calls: " + "; ".join(out.problems)
                agent.context.append(Message("tool", err, count_tokens(err), name="", call_id=""))
                self._step_done(agent)
            else:
                self._finish(agent, "finished", out.content)
            return
        firsts: dict[tuple, Call] = {}
        for tc in out.tool_calls:
            args = tc.arguments if isinstance(tc.arguments, dict) else {}
            call = Call(tc.id, tc.name, args, agent, self.now)
            agent.calls.append(call)
            self.all_calls.append(call)
            self.trace.counters["tool_calls"] += 1
            if tc.error is not None or tc.arguments is None:
                self.trace.counters["parse_errors"] += 1
                self._resolve(call, f"ERROR: malformed tool call {tc.id}: {tc.error or 'no arguments'}")
                continue
            key = (tc.name, canonical(args))
            if key in firsts:                            # same call twice in one step: run it once
                call.primary = firsts[key]
                self.trace.counters["merged_calls"] += 1
                continue
            firsts[key] = call
        for call in list(agent.calls):
            if call.primary is None and call.result is None:
                self._dispatch(call)
        self._maybe_step_done(agent)

    def _maybe_step_done(self, agent: Agent):
        if agent.alive and agent.calls and all((c.primary or c).result is not None for c in agent.calls):
            self._step_done(agent)

    def _step_done(self, agent: Agent):
        """The barrier: every result of the step goes into the context in call order, then the next step."""
        for c in agent.calls:
            res = (c.primary or c).result
            agent.context.append(Message("tool", res, count_tokens(res) + 8, c.name, c.id, c.args))
        agent.calls = []
        if agent.role == "main":
            self.trace.quality.append([self.now, agent.policy.partial_answer(agent.context)])
        self._begin_step(agent)

    def _resolve(self, call: Call, result: str):
        call.result, call.end = result, self.now
        if result.startswith("ERROR") or result.startswith('{"error"'):
            self.trace.counters["tool_errors"] += 1
        self._maybe_step_done(call.agent)

    def _dispatch(self, call: Call):
        if call.name in WORLD_TOOLS:
            self._on_try(call)
        elif call.name in ORCHESTRATOR_TOOLS and call.agent.role == "sub":
            self._resolve(call, f"ERROR: {call.name}: sub-agents cannot create or assign sub-agents (depth is 1)")
        elif call.name == "create_subagent":
            self._create_subagent(call)
        elif call.name == "assign_task":
            self._assign_task(call)
        else:
            self._resolve(call, f"ERROR: unknown tool {call.name!r}; tools are "
                                f"{', '.join(WORLD_TOOLS + ORCHESTRATOR_TOOLS)}")

    # -- world tools: rate limit, attempts, retries ----------------------------

    def _on_try(self, call: Call):
        w, name, args = self.world, call.name, call.args
        if not self.limiter.admit(self.now):
            call.n_429 += 1
            self.trace.counters["rate_limited"] += 1
            self._at(self.now + w.retry_after(name, args, call.n_429), "try", call)
            return
        self.trace.counters["tool_attempts"] += 1
        a = w.attempt(name, args, call.attempt)
        if a.kind == "hang" or a.ticks > self.cfg.tool_timeout:
            self._at(self.now + self.cfg.tool_timeout, "attempt_timeout", call)
        else:
            call.outcome = a.kind
            self._at(self.now + a.ticks, "attempt_done", call)
        call.attempt_start = self.now

    def _tool_span(self, call: Call, outcome: str):
        self.trace.spans.append({"lane": call.agent.name, "kind": "tool", "start": call.attempt_start,
                                 "end": self.now, "label": call.name, "outcome": outcome})

    def _on_attempt_done(self, call: Call):
        if call.outcome == "transient":
            self._tool_span(call, "transient")
            self._retry(call, "ERROR_TRANSIENT")
            return
        status, text = self.world.answer(call.name, call.args)
        self._tool_span(call, status)
        self.trace.world_answers[f"{call.name} {canonical(call.args)}"] = text
        self._resolve(call, text)

    def _on_attempt_timeout(self, call: Call):
        self.trace.counters["tool_timeouts"] += 1
        self._tool_span(call, "timeout")
        self._retry(call, "TIMEOUT")

    def _retry(self, call: Call, why: str):
        call.attempt += 1
        if call.attempt >= self.cfg.max_attempts:
            self._resolve(call, canonical({"error": f"{why} after {call.attempt} attempts", "tool": call.name}))
            return
        self.trace.counters["retries"] += 1
        self._at(self.now + self.world.backoff(call.name, call.args, call.attempt - 1), "try", call)

    # -- orchestrator tools ---------------------------------------------------

    def _create_subagent(self, call: Call):
        name, prompt = str(call.args.get("name", "")), str(call.args.get("system_prompt", ""))
        if not name:
            self._resolve(call, "ERROR: create_subagent needs a non-empty 'name'")
        elif name in self.registry:
            self._resolve(call, f"ERROR: a sub-agent named {name!r} already exists")
        else:
            self.registry[name] = prompt
            self.trace.counters["subagents_created"] += 1
            self._log("create_subagent", call.agent.name, name)
            self._resolve(call, f"created sub-agent {name}")

    def _assign_task(self, call: Call):
        name = str(call.args.get("agent", ""))
        if name not in self.registry:
            self._resolve(call, f"ERROR: assign_task: no sub-agent named {name!r}; create it first")
            return
        if name in self.busy:
            self._resolve(call, f"ERROR: assign_task: sub-agent {name!r} is busy with another task")
            return
        if len(self.running) >= self.cfg.max_subagents:
            if self.cfg.overflow == "reject":
                self.trace.counters["rejected"] += 1
                self._resolve(call, f"ERROR: assign_task: {len(self.running)} sub-agents are running "
                                    f"(max_subagents={self.cfg.max_subagents}); assign {name!r} again later")
                return
            self.trace.counters["queued"] += 1
            self.queue.append(call)
            self.busy.add(name)
            call.stage = call.agent.stage
            return
        self.busy.add(name)
        call.stage = call.agent.stage
        self._start_subagent(call)

    def _start_subagent(self, call: Call):
        name = call.args["agent"]
        prompt = str(call.args.get("prompt", ""))
        steps = call.args.get("max_steps")
        max_steps = min(int(steps), self.cfg.subagent_max_steps) if isinstance(steps, int) and steps > 0 \
            else self.cfg.subagent_max_steps
        system = self.registry[name]
        sub = Agent(name, "sub", self.make_subagent(system, prompt),
                    [Message("system", system, count_tokens(system)), Message("user", prompt, count_tokens(prompt))],
                    max_steps, start=self.now, parent=call, stage=call.stage)
        self.subs.append(sub)
        self.running.append(sub)
        self.trace.counters["subagents_assigned"] += 1
        self._log("assign_task", call.agent.name, name)
        self._at(self.now + self.cfg.subagent_timeout, "subagent_timeout", sub)
        self._begin_step(sub)

    def _on_subagent_timeout(self, sub: Agent):
        self.trace.counters["subagent_timeouts"] += 1
        self._finish(sub, "timeout", sub.policy.partial_answer(sub.context))

    def _on_deadline(self, _):
        self._finish(self.main, "deadline", self.main.policy.partial_answer(self.main.context))

    # -- endings and cancellation ---------------------------------------------

    def _finish(self, agent: Agent, status: str, content: str):
        self._cancel_calls(agent)
        agent.status, agent.end, agent.alive = status, self.now, False
        self._log("end", agent.name, status)
        if agent.role == "main":
            self.trace.final, self.trace.status, self.trace.end = content, status, self.now
            for sub in list(self.running):
                self._cancel_agent(sub)
            for call in self.queue:
                call.alive = False
                self.trace.counters["cancelled_calls"] += 1
            self.queue.clear()
            self.ended = True
            return
        if status == "finished":
            self.trace.counters["subagents_finished"] += 1
        self.trace.spans.append({"lane": agent.name, "kind": "subagent", "start": agent.start, "end": self.now,
                                 "label": agent.name, "outcome": status})
        self.running.remove(agent)
        self.busy.discard(agent.name)
        agent.stage["subs"].append(agent.steps)
        summary = _truncate(content, self.cfg.summary_budget)
        self._start_queued()
        if status != "finished" and self.cfg.failure_mode == "fail-fast":
            self._cancel_group(agent.stage)
        parent = agent.parent
        if parent.alive:
            self._resolve(parent, f"[{status}] sub-agent {agent.name} after {agent.steps} steps\n{summary}")

    def _start_queued(self):
        while self.queue and len(self.running) < self.cfg.max_subagents:
            self._start_subagent(self.queue.pop(0))

    def _cancel_group(self, stage: dict):
        """fail-fast: every running or queued sibling of the group ends now, its work dropped."""
        for sub in [a for a in self.running if a.stage is stage]:
            self._cancel_agent(sub)
            if sub.parent.alive:
                self._resolve(sub.parent, f"[cancelled] sub-agent {sub.name}: a sibling failed (fail-fast)")
        for call in [c for c in self.queue if c.stage is stage]:
            self.queue.remove(call)
            self.busy.discard(call.args["agent"])
            self._resolve(call, f"[cancelled] sub-agent {call.args['agent']}: a sibling failed (fail-fast)")

    def _cancel_agent(self, sub: Agent):
        self._cancel_calls(sub)
        sub.status, sub.end, sub.alive = "cancelled", self.now, False
        self.trace.counters["cancelled_agents"] += 1
        self.running.remove(sub)
        self.busy.discard(sub.name)
        sub.stage["subs"].append(sub.steps)
        self.trace.spans.append({"lane": sub.name, "kind": "subagent", "start": sub.start, "end": self.now,
                                 "label": sub.name, "outcome": "cancelled"})
        self._log("cancel", sub.name)

    def _cancel_calls(self, agent: Agent):
        for c in agent.calls:
            if c.alive and c.result is None:
                c.alive = False
                self.trace.counters["cancelled_calls"] += 1
        agent.calls = []


def _truncate(text: str, budget: int) -> str:
    """Keep the first `budget` tokens' worth of a summary (bounded results: context sharding)."""
    limit = 4 * budget
    return text if len(text) <= limit else text[:limit] + "\n[summary truncated]"
