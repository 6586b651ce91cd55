# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Agent Swarm: critical steps, a Gantt chart, serial collapse and spurious parallelism
#
# **You will learn** how K2.5's Agent Swarm is scored in *critical steps* (the longest chain of model
# steps, not the total), what a good orchestrator's timeline looks like, and the two ways an orchestrator
# fails that PARL's auxiliary rewards fight: *serial collapse* (sub-agents one after another) and *spurious
# parallelism* (many sub-agents, little finished work). A deterministic toy simulation, no model weights.
# **Needs** nothing. **Runs in** about 2 s, no downloads.
# **Code** `k25ref/swarm/accounting.py` (`critical_steps`, `check_bounds`), `k25ref/swarm/bench.py` (`run_task`),
# `k25ref/swarm/plots.py` (`gantt`). **Docs** docs/swarm.md. **Paper** [K2.5 §3].
#
# $$ \text{CriticalSteps} = \sum_{t=1}^{T} \Big( S_{\text{main}}(t) + \max_i S_{\text{sub},i}(t) \Big)
#    \qquad \max\!\Big(\frac{T_1}{K}, T_\infty\Big) \le T_K \le \frac{T_1}{K} + T_\infty $$
#
# $$ r_{\text{PARL}} = \lambda_1\, r_{\text{parallel}} + \lambda_2\, r_{\text{finish}} + r_{\text{perf}}
#    \qquad (\lambda_1, \lambda_2 \text{ annealed to } 0) $$

# %%
import os
import sys

from matplotlib.figure import Figure

from k25ref.swarm.accounting import capped_critical_steps, check_bounds, critical_steps, total_work
from k25ref.swarm.bench import run_task
from k25ref.swarm.plots import gantt
from k25ref.swarm.tasks import make_task

FIGURES = os.environ.get("K25REF_FIGURES") or (
    sys.argv[sys.argv.index("--figures") + 1] if "--figures" in sys.argv else "k25ref-figures")
os.makedirs(FIGURES, exist_ok=True)
print(f"figures go to {os.path.abspath(FIGURES)} (--figures DIR or K25REF_FIGURES=DIR chooses)")

# %% [markdown]
# ## Critical steps by hand
# An episode is a list of orchestrator stages; each stage costs the orchestrator's own steps plus the
# *slowest* sub-agent it waited for. Three stages: plan (1 step), fan out to sub-agents of 5, 7 and 4
# steps, then answer (1 step).

# %%
stages = [{"main": 1, "subs": []}, {"main": 1, "subs": [5, 7, 4]}, {"main": 1, "subs": []}]
mine = sum(s["main"] + max(s["subs"], default=0) for s in stages)
assert mine == critical_steps(stages) == 10                      # 1 + (1 + 7) + 1
T1, Tinf, T2 = check_bounds(stages, K=2)                           # raises if Brent's bounds fail
print(f"work T1 = {T1}, critical steps T_inf = {Tinf}, on K = 2 slots T_2 = {T2}")
assert (T1, Tinf, T2) == (total_work(stages), 10, capped_critical_steps(stages, 2)) and T2 == 1 + (1 + 9) + 1

# %% [markdown]
# ## Five orchestrators on the same wide task
# ToyWide (quick size): enumerate entities over search pages, then look up attributes of each -- wide,
# independent work. Every policy sees the same simulated web (answers keyed by the question, never by the
# caller), so only the scheduling differs. K = 8 sub-agents at most.

# %%
task = make_task("wide", 0, seed=0, quick=True)
runs = {p: run_task(task, p, K=8) for p in ("single", "single-parallel", "swarm-static", "serial-collapse", "spurious")}
print(f"{'policy':<16} {'crit.steps':>10} {'work':>6} {'ticks':>6} {'subs':>5} {'r_par':>6} {'r_fin':>6} {'in-tokens':>10} {'itemF1':>7}")
for p, (trace, m) in runs.items():
    print(f"{p:<16} {m.critical_steps:>10} {m.work:>6} {m.wall_ticks:>6} {m.subagents:>5} {m.r_parallel:>6.2f} "
          f"{m.r_finish:>6.2f} {m.input_tokens:>10} {m.item_f1:>7.3f}")

# %% [markdown]
# Claims, each a property the simulation is built to show:
# 1. A single agent's critical steps are its step count: nothing runs beside it.
# 2. The swarm needs far fewer critical steps than one agent, even one that batches tool calls.
# 3. **Serial collapse**: the same 8 sub-agents, assigned one per orchestrator step, give up most of the
#    gain -- r_parallel alone cannot tell the two apart, critical steps can.
# 4. **Spurious parallelism**: 8 sub-agents with vague prompts wander to their step limit. r_parallel is
#    still 1, but r_finish collapses and the token bill explodes.
# 5. On a strictly serial task (ToyDeep: a chain of hops) sub-agents cannot help (Amdahl).

# %%
m = {p: r[1] for p, r in runs.items()}
assert m["single"].critical_steps == m["single"].work == m["single"].llm_calls                          # 1
assert m["swarm-static"].critical_steps * 2 < m["single-parallel"].critical_steps < m["single"].critical_steps  # 2
assert m["serial-collapse"].r_parallel == m["swarm-static"].r_parallel == 1.0                          # 3
assert m["serial-collapse"].critical_steps > 3 * m["swarm-static"].critical_steps
assert m["spurious"].r_parallel == 1.0 and m["spurious"].r_finish < 0.5                                # 4
assert m["spurious"].input_tokens > 10 * m["swarm-static"].input_tokens
deep = make_task("deep", 0, seed=0, quick=True)
cs_single, cs_swarm = (run_task(deep, p, K=8)[1].critical_steps for p in ("single", "swarm-static"))
print(f"ToyDeep: single {cs_single} critical steps, swarm-static {cs_swarm}")
assert cs_swarm >= cs_single                                                                             # 5
for p, (trace, mm) in runs.items():
    check_bounds(trace.stages, 8)

# %% [markdown]
# ## The timelines
# One lane per agent: dark bars are model steps, thin bars tool calls (coloured by outcome), pale bands a
# sub-agent's lifetime. A good swarm fans out at once; serial collapse makes a staircase.

# %%
gantt(runs["swarm-static"][0], os.path.join(FIGURES, "09_gantt_swarm_static.png"),
      "swarm-static, K = 8: one fan-out stage, then the answer")
gantt(runs["serial-collapse"][0], os.path.join(FIGURES, "09_gantt_serial_collapse.png"),
      "serial collapse: the same 8 sub-agents, one per orchestrator step")

fig = Figure(figsize=(8, 2.8))
ax = fig.add_subplot(1, 2, 1)
names = list(m)
ax.barh(names, [m[p].critical_steps for p in names], color="tab:blue")
ax.set_xlabel("critical steps (lower is better)")
ax.tick_params(axis="y", labelsize=8)
ax2 = fig.add_subplot(1, 2, 2)
ax2.barh(names, [m[p].r_parallel for p in names], height=0.4, align="edge", label="r_parallel", color="tab:orange")
ax2.barh(names, [m[p].r_finish for p in names], height=-0.4, align="edge", label="r_finish", color="tab:green")
ax2.set_yticks(range(len(names)), labels=[""] * len(names))
ax2.set_xlabel("auxiliary rewards")
ax2.legend(fontsize=7, loc="lower right")
fig.suptitle("09 ToyWide (quick), K = 8: critical steps and PARL's auxiliary rewards", fontsize=9)
fig.tight_layout()
fig.savefig(os.path.join(FIGURES, "09_policies.png"), dpi=90)

# %% [markdown]
# **Exercise.** Run `k25ref swarm demo`: REINFORCE on the spawn decision, once with r_perf only and once with
# the PARL reward. Which run collapses to one agent, and why does annealing λ to 0 not bring the collapse back?
