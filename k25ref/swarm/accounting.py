"""What an episode cost and earned: CriticalSteps, work, wall ticks, tokens, quality, the PARL reward.

CriticalSteps, exactly as the paper defines it [K25 §3]: an episode is a sequence of orchestrator
stages t = 1..T; stage t costs the orchestrator's steps plus its slowest sub-agent's steps

    CriticalSteps = sum_t ( S_main(t) + max_i S_sub,i(t) )        max over an empty group = 0

so a single agent's CriticalSteps is its step count, and K sub-agents only help if they shorten the
longest branch. The *capped* variant runs each group on K slots (list scheduling in assignment
order), as the scheduler does when more than K are assigned at once.

Scheduling bounds [Brent 1974; Graham 1969]: on K workers, any greedy schedule of a DAG with work T1
and span T_inf has a makespan T_K with

    max(T1 / K, T_inf)  <=  T_K  <=  T1 / K + T_inf

Here the DAG is the episode's steps (unit time each): orchestrator steps in a chain, each stage's
sub-agents as parallel chains. T_inf is CriticalSteps and T_K the capped CriticalSteps; every episode
checks the bound (check_bounds) and fails loudly if the accounting ever breaks it.

PARL [K25 §3]: r = lambda1 * r_parallel + lambda2 * r_finish + r_perf, lambda annealed to 0. The paper
gives no formula for the two auxiliary terms; ours (swarm-facts §5.4) are

    r_parallel = min(sub-agents instantiated, K) / K          against serial collapse
    r_finish   = sub-agents finished / sub-agents assigned    against spurious parallelism
    r_perf     = item-F1 of the final table, 0 if over the critical-step budget
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, asdict

from k25ref.swarm.events import Trace
from k25ref.swarm.tasks import Task, parse_table, score_table


# ----------------------------------------------------------------------------
# steps


def critical_steps(stages: list[dict]) -> int:
    """sum_t (S_main(t) + max_i S_sub,i(t)) over stages {"main": int, "subs": [int, ...]}."""
    return sum(s["main"] + max(s["subs"], default=0) for s in stages)


def list_schedule(durations: list[int], K: int) -> int:
    """Makespan of jobs started in list order, each on the first free of K slots (Graham's list scheduling)."""
    slots = [0] * min(K, max(1, len(durations)))
    for d in durations:
        heapq.heappush(slots, heapq.heappop(slots) + d)
    return max(slots, default=0)


def capped_critical_steps(stages: list[dict], K: int) -> int:
    """CriticalSteps when each group runs on at most K sub-agents at once."""
    return sum(s["main"] + list_schedule(s["subs"], K) for s in stages)


def total_work(stages: list[dict]) -> int:
    """T1: every step of every agent."""
    return sum(s["main"] + sum(s["subs"]) for s in stages)


def check_bounds(stages: list[dict], K: int) -> tuple[int, int, int]:
    """(T1, T_inf, T_K); raises if max(T1/K, T_inf) <= T_K <= T1/K + T_inf fails (in integers: x K)."""
    T1, Tinf, TK = total_work(stages), critical_steps(stages), capped_critical_steps(stages, K)
    if not (max(T1, K * Tinf) <= K * TK <= T1 + K * Tinf):
        raise RuntimeError(f"scheduling bound violated: T1={T1} T_inf={Tinf} K={K} makespan={TK}")
    return T1, Tinf, TK


# ----------------------------------------------------------------------------
# PARL


def anneal(lam0: float, iteration: int, total: int) -> float:
    """Linear anneal of an auxiliary weight to 0 over `total` iterations [K25 §3: 'annealed to zero']."""
    return lam0 * max(0.0, 1.0 - iteration / max(1, total))


def parl_reward(r_parallel: float, r_finish: float, r_perf: float, lam1: float, lam2: float) -> float:
    """r_PARL = lambda1 * r_parallel + lambda2 * r_finish + r_perf."""
    return lam1 * r_parallel + lam2 * r_finish + r_perf


# ----------------------------------------------------------------------------
# one episode's numbers


@dataclass(frozen=True)
class Metrics:
    """One (task, policy, K) episode. Steps are model generations; ticks are virtual wall time."""
    instance_id: str
    family: str
    policy: str
    K: int
    critical_steps: int          # the paper's metric (unbounded concurrency inside a stage)
    critical_steps_capped: int   # the same with at most K sub-agents at once
    work: int                    # T1: all steps of all agents
    wall_ticks: int
    llm_calls: int
    input_tokens: int            # summed over calls: every step re-reads its context
    output_tokens: int
    tool_calls: int
    peak_context: int
    subagents: int               # instantiated (created)
    assigned: int
    finished: int
    retries: int
    rate_limited: int            # 429s
    tool_timeouts: int
    subagent_timeouts: int
    cancelled: int
    discarded: int               # tool results dropped to fit the context budget
    orphans: int                 # must be 0
    item_f1: float
    row_f1: float
    success: int
    r_parallel: float
    r_finish: float
    r_perf: float

    def to_dict(self) -> dict:
        return asdict(self)


def episode_metrics(trace: Trace, task: Task, gold: list[dict], policy: str, K: int,
                    step_budget: int = 0) -> Metrics:
    """Score the final table and count everything; checks the scheduling bounds on the way."""
    check_bounds(trace.stages, K)
    c = trace.counters
    score = score_table(parse_table(trace.final), gold, task.evaluation)
    cs = critical_steps(trace.stages)
    r_perf = 0.0 if step_budget and cs > step_budget else score.f1_by_item
    return Metrics(
        task.instance_id, task.family, policy, K, cs, capped_critical_steps(trace.stages, K),
        total_work(trace.stages), trace.end, c["llm_calls"], c["input_tokens"], c["output_tokens"],
        c["tool_calls"], c["peak_context"], c["subagents_created"], c["subagents_assigned"],
        c["subagents_finished"], c["retries"], c["rate_limited"], c["tool_timeouts"], c["subagent_timeouts"],
        c["cancelled_agents"], c["discarded_messages"], trace.orphans, score.f1_by_item, score.f1_by_row,
        score.success, min(c["subagents_created"], K) / K, r_finish(c["subagents_finished"], c["subagents_assigned"]),
        r_perf)


def r_finish(finished: int, assigned: int) -> float:
    """Share of assigned sub-tasks that finished; 1 when nothing was assigned (nothing failed)."""
    return finished / assigned if assigned else 1.0


def quality_curve(trace: Trace, task: Task, gold: list[dict]) -> list[tuple[int, float]]:
    """(tick, item-F1 of the orchestrator's running table) after each of its steps, and at the end."""
    points = [(t, score_table(parse_table(text), gold, task.evaluation).f1_by_item) for t, text in trace.quality]
    points.append((trace.end, score_table(parse_table(trace.final), gold, task.evaluation).f1_by_item))
    return points


def time_to_target(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first tick at which the running table reaches item-F1 >= target (None: never)."""
    return next((t for t, f1 in curve if f1 >= target), None)

