"""PARL in miniature: REINFORCE on an orchestrator's spawn decision, with and without r_parallel.

The trainable orchestrator makes two kinds of choices per episode (sub-agents stay frozen):

    k ~ softmax(theta)               how many sub-agents (k = 1: do it alone, with parallel tool calls)
    good_i ~ Bernoulli(sigmoid(s))   whether each sub-task prompt is well specified

A vague prompt sends its sub-agent wandering to its step limit, so the stage blows the critical-step
budget and r_perf = 0: with an untrained s, more sub-agents means more chances to fail. That makes
"do it alone" a local optimum -- serial collapse [K25 §3] -- even though a well-coordinated swarm
is much better under the budget. r_parallel keeps the policy trying k > 1, r_finish (the share of
good prompts) teaches s to write good prompts; both weights anneal to 0, and the swarm stays.

r_perf(k) for good prompts is measured once per k with the real simulator (ToyWide, quick size):
the single agent runs with max steps = budget (partial table), the swarm with swarm-static.
The update is REINFORCE with the group-mean baseline K2.5 uses [K25 §4.4.2].
"""
from __future__ import annotations

import numpy as np

from k25ref.swarm.accounting import anneal, parl_reward
from k25ref.swarm.bench import RunOptions, run_task
from k25ref.swarm.events import SwarmConfig
from k25ref.swarm.tasks import make_task

KS = (1, 2, 4, 8)


def measure_rewards(budget: int = 14, seed: int = 0) -> np.ndarray:
    """r_perf of each k in KS with well-specified prompts, from real episodes.  () -> (len(KS),)"""
    task = make_task("wide", 0, seed, quick=True)
    out = []
    for k in KS:
        if k == 1:
            opts = RunOptions(swarm=SwarmConfig(orchestrator_max_steps=budget), step_budget=budget)
            out.append(run_task(task, "single-parallel", 1, opts)[1].r_perf)
        else:
            out.append(run_task(task, "swarm-static", k, RunOptions(step_budget=budget))[1].r_perf)
    return np.array(out)


def train(perf: np.ndarray, lam1: float, lam2: float, iterations: int = 300, group: int = 16,
          lr: float = 0.5, s0: float = 0.4, seed: int = 0) -> list[dict]:
    """REINFORCE over (k, prompt quality); returns one log row per iteration.

    perf: (len(KS),) r_perf of each k when every prompt is good.
    """
    rng = np.random.default_rng(seed)
    theta, s = np.zeros(len(KS)), float(np.log(s0 / (1 - s0)))       # (len(KS),) logits, prompt-quality logit
    k_max, log = KS[-1], []
    for it in range(iterations):
        l1, l2 = anneal(lam1, it, iterations), anneal(lam2, it, iterations)
        p = np.exp(theta - theta.max())
        p /= p.sum()                                                   # (len(KS),) softmax
        q = 1.0 / (1.0 + np.exp(-s))
        arms = rng.choice(len(KS), size=group, p=p)                    # (G,)
        rewards, grad_theta, grad_s, perfs = [], [], [], []
        for a in arms:
            k = KS[a]
            good = rng.random(k) < q if k > 1 else np.ones(0, bool)    # (k,) or () for k = 1
            r_perf = perf[a] if good.all() else 0.0
            r_par = (k if k > 1 else 0) / k_max
            r_fin = good.mean() if k > 1 else 1.0
            rewards.append(parl_reward(r_par, r_fin, r_perf, l1, l2))
            perfs.append(r_perf)
            grad_theta.append(np.eye(len(KS))[a] - p)                  # d log softmax / d theta
            grad_s.append(float((good - q).sum()))                     # d log Bernoulli / d s
        adv = np.array(rewards) - np.mean(rewards)                     # (G,) group-mean baseline
        theta += lr * (adv[:, None] * np.array(grad_theta)).mean(0)
        s += lr * float((adv * np.array(grad_s)).mean())
        log.append({"iteration": it, "mean_k": float(p @ np.array(KS)), "prompt_quality": q,
                    "r_perf": float(np.mean(perfs))})
    return log


def demo(iterations: int = 300, seed: int = 0) -> str:
    """Train with r_perf only and with the full PARL reward; report average parallelism over training."""
    perf = measure_rewards(seed=seed)
    runs = {"r_perf only": train(perf, 0.0, 0.0, iterations, seed=seed),
            "PARL, lambda 0.5 annealed": train(perf, 0.5, 0.5, iterations, seed=seed)}
    lines = ["r_perf with good prompts, k = " + ", ".join(f"{k}: {r:.2f}" for k, r in zip(KS, perf)),
             f"{'reward':<36} " + " ".join(f"it{i:>4}" for i in range(0, iterations + 1, iterations // 5))]
    for name, log in runs.items():
        picks = [log[min(i, iterations - 1)] for i in range(0, iterations + 1, iterations // 5)]
        lines.append(f"{name + ' (mean k)':<36} " + " ".join(f"{r['mean_k']:>6.2f}" for r in picks))
        lines.append(f"{name + ' (r_perf)':<36} " + " ".join(f"{r['r_perf']:>6.2f}" for r in picks))
    return "\n".join(lines)
