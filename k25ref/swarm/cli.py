"""`k25ref swarm ...`: run the toy Agent Swarm, benchmark it, train its spawn policy.

    k25ref swarm run [wide|deep|mixed|read|SUITE_DIR] --policy swarm-static -K 16 [--gantt t.png]
    k25ref swarm bench [--quick] [--json] [--plot quality.png]
    k25ref swarm demo                      PARL: serial collapse without r_parallel
    k25ref swarm export DIR                write the task suite as tasks.jsonl + gold/*.csv

Same options, same output, byte for byte: everything runs on a virtual clock with keyed randomness.
"""
from __future__ import annotations

import json
import os
import pathlib
from dataclasses import asdict

import click

from k25ref.errors import K25RefError
from k25ref.files import atomic_open, atomic_path
from k25ref.options import FORCE, SEED, OutputFile
from k25ref.swarm.accounting import quality_curve, time_to_target
from k25ref.swarm.bench import RunOptions, bench as run_bench, format_summary, run_task, summarize, summary_json
from k25ref.swarm.events import SwarmConfig
from k25ref.swarm.policies import POLICIES
from k25ref.swarm.tasks import FAMILIES, gold_table, make_task, read_suite, write_suite

SHOWN_ROWS = 12
MAX_AGENTS = click.IntRange(1, 1024)
SEEDS = click.IntRange(1, 1000)


@click.group()
def swarm():
    """The toy Agent Swarm: an orchestrator, frozen sub-agents and tools on a virtual clock."""


def _tasks(task: str, seed: int, quick: bool):
    if task in FAMILIES:
        t = make_task(task, 0, seed, quick)
        return [(t, gold_table(t))]
    if pathlib.Path(task, "tasks.jsonl").exists():
        return read_suite(task)
    raise K25RefError(f"swarm run: TASK must be one of {', '.join(FAMILIES)} or a folder with tasks.jsonl, "
                      f"got {task!r}")


@swarm.command()
@click.argument("task", default="wide")
@click.option("--policy", "-p", type=click.Choice(POLICIES), default="swarm-static", show_default=True)
@click.option("--max-agents", "-K", default=16, show_default=True, type=MAX_AGENTS, help="sub-agents running at once")
@click.option("--seed", default=0, show_default=True, type=SEED, help="picks the world of a built-in family")
@click.option("--quick", is_flag=True, help="smaller built-in task")
@click.option("--batch", "-B", default=4, show_default=True, type=click.IntRange(1, 1024),
              help="tool calls per step (parallel-tool agents)")
@click.option("--overflow", type=click.Choice(["queue", "reject"]), default="queue", show_default=True)
@click.option("--fail-fast", is_flag=True, help="a failed sub-agent cancels its siblings (default: collect all)")
@click.option("--deadline", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1),
              help="wall ticks for the episode; 0 = none")
@FORCE
@click.option("--gantt", type=OutputFile(".png"), help="draw the timeline to this .png file")
@click.option("--trace", "trace_path", type=OutputFile(".json"), help="write the event trace to this .json file")
def run(task, policy, max_agents, seed, quick, batch, overflow, fail_fast, deadline, force, gantt, trace_path):
    """Run one episode (or a suite folder) and print the final table and metrics."""
    cfg = SwarmConfig(overflow=overflow, failure_mode="fail-fast" if fail_fast else "collect-all",
                      deadline=deadline)
    opts = RunOptions(batch=batch, swarm=cfg)
    for t, gold in _tasks(task, seed, quick):
        trace, m = run_task(t, policy, max_agents, opts, gold)
        click.echo(f"== {t.instance_id}  policy={policy}  K={max_agents}  status={trace.status}")
        rows = trace.final.strip().splitlines()
        click.echo("\n".join(rows[:2 + SHOWN_ROWS]))
        if len(rows) > 2 + SHOWN_ROWS:
            click.echo(f"... {len(rows) - 2 - SHOWN_ROWS} more rows")
        for k, v in m.to_dict().items():
            click.echo(f"{k:>22}: {round(v, 4) if isinstance(v, float) else v}")
        if gantt:
            from k25ref.swarm.plots import gantt as draw
            with atomic_path(gantt) as tmp:
                draw(trace, tmp, f'{t.instance_id}  {policy}  K={max_agents}')
            click.echo(f"timeline: {gantt}")
        if trace_path:
            with atomic_open(trace_path) as f:
                f.write(json.dumps(asdict(trace), sort_keys=True))
            click.echo(f"trace: {trace_path}")


@swarm.command()
@click.option("--quick", is_flag=True, help="smaller tasks, one seed")
@click.option("--seeds", default=3, show_default=True, type=SEEDS, help="worlds per family")
@click.option("--max-agents", "-K", "Ks", multiple=True, type=MAX_AGENTS, default=(4, 16), show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON")
@FORCE
@click.option("--plot", type=OutputFile(".png"), help="quality-vs-time plot of ToyWide to this .png file")
def bench(quick, seeds, Ks, as_json, force, plot):
    """Every family x policy x K x seed; speedups are against `single` on the same worlds."""
    rows = run_bench(seeds=range(1 if quick else seeds), Ks=Ks, quick=quick)
    summary = summarize(rows)
    if as_json:
        click.echo(summary_json(summary))
        return
    click.echo(format_summary(summary))
    task = make_task("wide", 0, 0, quick)
    gold, K = gold_table(task), max(Ks)
    curves = {p: quality_curve(run_task(task, p, K, gold=gold)[0], task, gold) for p in POLICIES}
    click.echo(f"\nToyWide {task.instance_id}, K={K}: first tick at which the running table reaches item-F1")
    click.echo(f"{'policy':<16} " + " ".join(f"{int(x * 100):>5}%" for x in (0.3, 0.5, 0.7)))
    for p, c in curves.items():
        click.echo(f"{p:<16} " + " ".join(f"{str(time_to_target(c, x) or '-'):>6}" for x in (0.3, 0.5, 0.7)))
    if plot:
        from k25ref.swarm.plots import quality_vs_time
        with atomic_path(plot) as tmp:
            quality_vs_time(curves, tmp, f'ToyWide {task.instance_id}, K={K}')
        click.echo(f"plot: {plot}")


@swarm.command()
@click.option("--iterations", default=300, show_default=True, type=click.IntRange(5, 100_000),
              help="training steps (the table shows every fifth of them)")
@click.option("--seed", default=0, show_default=True, type=SEED)
def demo(iterations, seed):
    """REINFORCE on the spawn decision: serial collapse with r_perf only, a swarm with PARL's terms."""
    from k25ref.swarm.parl_demo import demo as parl
    click.echo(parl(iterations, seed))


@swarm.command()
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--seeds", default=3, show_default=True, type=SEEDS)
@click.option("--quick", is_flag=True)
@FORCE
def export(folder, seeds, quick, force):
    """Write the built-in tasks (every family, SEEDS worlds each) as tasks.jsonl + gold/*.csv.

    FOLDER must not hold any of the files it writes already, unless --force (then they are replaced)."""
    tasks = [make_task(f, 0, s, quick) for s in range(seeds) for f in FAMILIES]
    there = [p for p in ["tasks.jsonl"] + [f"gold/{t.instance_id}.csv" for t in tasks]
             if os.path.lexists(os.path.join(folder, p))]
    if there and not force:
        raise click.BadParameter(f"{folder!r} already holds {there[0]}" + (f" and {len(there) - 1} more of the files "
                                 "it would write" if len(there) > 1 else "") + "; pass --force to replace them",
                                 param_hint="FOLDER")
    click.echo(f"wrote {len(tasks)} tasks to {write_suite(folder, tasks)}")
