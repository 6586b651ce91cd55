"""Run episodes and the benchmark grid: every family x policy x K x seed, on identical worlds.

    run_task(task, "swarm-static", K=16)  ->  (Trace, Metrics)
    bench(seeds=(0, 1, 2), Ks=(4, 16))    ->  list of Metrics
    summarize(rows)                       ->  per (family, policy, K): means, and speedups against
                                              the single agent on the same tasks

Speedups compare each policy with `single` (one tool call per step) on the same task:
critical-steps speedup = CS_single / CS_policy, wall speedup = ticks_single / ticks_policy.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from k25ref.swarm.accounting import Metrics, episode_metrics
from k25ref.swarm.events import Episode, SwarmConfig, Trace
from k25ref.swarm.policies import POLICIES, make_policies
from k25ref.swarm.tasks import FAMILIES, Task, gold_table, make_task
from k25ref.swarm.world import FaultPlan, World, WorldConfig

SINGLE_POLICIES = ("single", "single-parallel")     # no sub-agents: K does not change them


@dataclass(frozen=True)
class RunOptions:
    """Everything besides the task, policy and K that shapes an episode."""
    batch: int = 4                                  # B: tool calls per step for parallel-tool agents
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    faults: FaultPlan = field(default_factory=FaultPlan)
    step_budget: int = 0                            # critical-step budget for r_perf; 0 = none


def run_task(task: Task, policy: str, K: int = 16, options: RunOptions | None = None,
             gold: list[dict] | None = None) -> tuple[Trace, Metrics]:
    """One episode of `policy` with at most K concurrent sub-agents; returns its trace and metrics."""
    o = options or RunOptions()
    main, sub = make_policies(policy, task, K, o.batch)
    cfg = SwarmConfig(**{**o.swarm.__dict__, "max_subagents": K})
    trace = Episode(World(task, o.world, o.faults), main, sub, cfg).run()
    gold = gold if gold is not None else gold_table(task)
    return trace, episode_metrics(trace, task, gold, policy, K, o.step_budget)


def bench(seeds=(0, 1, 2), Ks=(4, 16), families=FAMILIES, policies=POLICIES, quick: bool = False,
          options: RunOptions | None = None) -> list[Metrics]:
    """The grid. Single-agent policies run once per task (as K = 1): K cannot change them."""
    rows = []
    for seed in seeds:
        for family in families:
            task = make_task(family, 0, seed, quick)
            gold = gold_table(task)
            for policy in policies:
                for K in ((1,) if policy in SINGLE_POLICIES else Ks):
                    rows.append(run_task(task, policy, K, options, gold)[1])
    return rows


def summarize(rows: list[Metrics]) -> list[dict]:
    """Mean metrics per (family, policy, K) with speedups against `single` on the same instances."""
    base = {r.instance_id: r for r in rows if r.policy == "single"}
    groups: dict[tuple, list[Metrics]] = {}
    for r in rows:
        groups.setdefault((r.family, r.policy, r.K), []).append(r)
    out = []
    for (family, policy, K), rs in groups.items():
        def mean(f):
            return sum(f(r) for r in rs) / len(rs)
        out.append({
            "family": family, "policy": policy, "K": K, "n": len(rs),
            "critical_steps": mean(lambda r: r.critical_steps),
            "cs_speedup": mean(lambda r: base[r.instance_id].critical_steps / r.critical_steps),
            "wall_ticks": mean(lambda r: r.wall_ticks),
            "wall_speedup": mean(lambda r: base[r.instance_id].wall_ticks / max(1, r.wall_ticks)),
            "item_f1": mean(lambda r: r.item_f1), "success": mean(lambda r: r.success),
            "input_tokens": mean(lambda r: r.input_tokens), "tool_calls": mean(lambda r: r.tool_calls),
            "peak_context": mean(lambda r: r.peak_context), "subagents": mean(lambda r: r.subagents),
            "r_finish": mean(lambda r: r.r_finish), "rate_limited": mean(lambda r: r.rate_limited),
            "retries": mean(lambda r: r.retries), "orphans": sum(r.orphans for r in rs)})
    return out


def format_summary(summary: list[dict]) -> str:
    """A fixed-width table, one line per (family, policy, K)."""
    head = (f"{'family':<6} {'policy':<16} {'K':>3} {'CS':>6} {'CSx':>6} {'ticks':>6} {'wallx':>6} "
            f"{'itemF1':>6} {'SR':>4} {'in-tok':>9} {'calls':>6} {'peak':>6} {'subs':>5} {'fin':>5} "
            f"{'429':>5} {'orph':>4}")
    lines = [head, "-" * len(head)]
    for s in summary:
        lines.append(
            f"{s['family']:<6} {s['policy']:<16} {s['K']:>3} {s['critical_steps']:>6.1f} {s['cs_speedup']:>6.2f} "
            f"{s['wall_ticks']:>6.0f} {s['wall_speedup']:>6.2f} {s['item_f1']:>6.3f} {s['success']:>4.2f} "
            f"{s['input_tokens']:>9.0f} {s['tool_calls']:>6.0f} {s['peak_context']:>6.0f} {s['subagents']:>5.1f} "
            f"{s['r_finish']:>5.2f} {s['rate_limited']:>5.0f} {s['orphans']:>4d}")
    return "\n".join(lines)


def summary_json(summary: list[dict]) -> str:
    return json.dumps(summary, indent=1, sort_keys=True)
