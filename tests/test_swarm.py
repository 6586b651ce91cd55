"""The toy Agent Swarm: accounting, scheduler semantics, failures, determinism, the headline claims."""
import hashlib
import json
from dataclasses import asdict

import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from k25ref import chat
from k25ref.errors import ConfigError, K25RefError
from k25ref.swarm.accounting import (capped_critical_steps, check_bounds, critical_steps, list_schedule,
                                     quality_curve, time_to_target, total_work)
from k25ref.swarm.bench import RunOptions, run_task
from k25ref.swarm.cli import swarm
from k25ref.swarm.events import Episode, SwarmConfig
from k25ref.swarm.policies import POLICIES, Worker, _Speaker
from k25ref.swarm.tasks import (gold_table, make_task, parse_table, read_suite, score_table, write_suite)
from k25ref.swarm.world import FaultPlan, RateLimiter, World, WorldConfig, canonical, stable_hash

WIDE = make_task("wide", 0, 0)
WIDE_Q = make_task("wide", 0, 0, quick=True)
DEEP = make_task("deep", 0, 0)
READ = make_task("read", 0, 0)


def digest(trace):
    return hashlib.sha256(json.dumps(asdict(trace), sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------
# accounting


def test_critical_steps_paper_definition():
    stages = [{"main": 1, "subs": [3, 5, 2]}, {"main": 1, "subs": []}, {"main": 1, "subs": [4]}]
    assert critical_steps(stages) == (1 + 5) + (1 + 0) + (1 + 4) == 12
    assert total_work(stages) == 3 + 10 + 4
    assert capped_critical_steps(stages, 1) == total_work(stages)       # K = 1 serialises every group
    assert capped_critical_steps(stages, 2) == 12                        # [3,5,2] on 2 slots: 3+2 | 5
    assert list_schedule([3, 5, 2], 2) == 5 and list_schedule([4, 4, 4], 2) == 8 and list_schedule([], 4) == 0


stage_lists = st.lists(st.fixed_dictionaries({"main": st.integers(1, 3),
                                              "subs": st.lists(st.integers(1, 30), max_size=12)}),
                       min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(stage_lists, st.integers(1, 16))
def test_scheduling_bounds_hold(stages, K):
    T1, Tinf, TK = check_bounds(stages, K)
    assert max(T1 / K, Tinf) <= TK <= T1 / K + Tinf
    assert Tinf <= TK <= T1


def test_bounds_check_catches_a_wrong_makespan(monkeypatch):
    import k25ref.swarm.accounting as acc
    monkeypatch.setattr(acc, "capped_critical_steps", lambda stages, K: 10_000)
    with pytest.raises(RuntimeError, match="scheduling bound violated"):
        acc.check_bounds([{"main": 1, "subs": [2, 2]}], 2)


# ----------------------------------------------------------------------------
# world


def test_stable_hash_is_not_pythons_hash():
    import subprocess
    import sys
    code = "from k25ref.swarm.world import stable_hash; print(stable_hash('lookup', {'a': 1}))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=__import__("os").getcwd())
    assert int(other.stdout) == stable_hash("lookup", {"a": 1})
    assert canonical({"b": 1, "a": 2}) == '{"a":2,"b":1}'


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 20), max_size=200), st.integers(0, 5))
def test_rate_limiter_admits_at_most_R_per_tick(ticks, R):
    limiter = RateLimiter(R)
    admitted = {}
    for t in sorted(ticks):
        if limiter.admit(t):
            admitted[t] = admitted.get(t, 0) + 1
    for t in set(ticks):
        asked = ticks.count(t)
        assert admitted.get(t, 0) == (asked if R == 0 else min(R, asked))


def test_episode_respects_the_rate_limit_and_counts_429s():
    trace, m = run_task(WIDE, "swarm-static", 16)
    starts = {}
    for s in trace.spans:
        if s["kind"] == "tool":
            starts[s["start"]] = starts.get(s["start"], 0) + 1
    assert max(starts.values()) <= WorldConfig().rate_limit
    assert m.rate_limited > 0
    assert run_task(WIDE, "swarm-static", 16)[1].rate_limited == m.rate_limited


def test_world_config_is_checked():
    with pytest.raises(ConfigError, match="p_hang"):
        WorldConfig(p_hang=1.5)
    with pytest.raises(ConfigError, match="overflow"):
        SwarmConfig(overflow="drop")


# ----------------------------------------------------------------------------
# determinism and invariance


def test_same_seed_same_trace_byte_for_byte():
    assert digest(run_task(WIDE_Q, "swarm-pages", 4)[0]) == digest(run_task(WIDE_Q, "swarm-pages", 4)[0])
    assert digest(run_task(WIDE_Q, "single", 1)[0]) != digest(run_task(make_task("wide", 0, 1, True), "single", 1)[0])


def test_world_answers_equal_across_policies_and_K():
    answers, tables = {}, []
    for policy in POLICIES:
        for K in (1, 4, 16):
            trace, m = run_task(WIDE_Q, policy, K)
            for key, value in trace.world_answers.items():
                assert answers.setdefault(key, value) == value, key
            tables.append(parse_table(trace.final))
    cells = {}
    for table in tables:
        for row in table:
            for col, v in row.items():
                if v:
                    assert cells.setdefault((row["name"], col), v) == v
    assert len(answers) > 24 * 3


# ----------------------------------------------------------------------------
# the done-when claims


def test_wide_swarm_beats_single_agent_in_critical_steps_at_equal_f1():
    single = run_task(WIDE, "single", 1)[1]
    swarm_ = run_task(WIDE, "swarm-static", 16)[1]
    assert single.critical_steps >= 3 * swarm_.critical_steps
    assert swarm_.item_f1 >= single.item_f1
    assert swarm_.wall_ticks * 3 < single.wall_ticks
    assert swarm_.input_tokens < single.input_tokens        # no single long context re-read every step


def test_deep_swarm_gains_little():
    single = run_task(DEEP, "single", 1)[1]
    swarm_ = run_task(DEEP, "swarm-static", 16)[1]
    assert single.critical_steps / swarm_.critical_steps < 1.3
    assert swarm_.item_f1 == single.item_f1 == 1.0


def test_broken_orchestrators_are_visibly_worse():
    good = run_task(WIDE, "swarm-static", 16)[1]
    collapse = run_task(WIDE, "serial-collapse", 16)[1]
    spurious = run_task(WIDE, "spurious", 16)[1]
    assert collapse.critical_steps > 3 * good.critical_steps and collapse.r_parallel == 1.0
    assert spurious.critical_steps > 3 * good.critical_steps
    assert spurious.r_finish < 0.1 and good.r_finish == 1.0
    assert spurious.input_tokens > 10 * good.input_tokens


def test_context_sharding_on_long_documents():
    single = run_task(READ, "single-parallel", 1)[1]
    swarm_ = run_task(READ, "swarm-static", 16)[1]
    assert single.discarded > 0 and swarm_.discarded == 0
    assert swarm_.item_f1 == 1.0 > single.item_f1
    assert swarm_.peak_context < single.peak_context


# ----------------------------------------------------------------------------
# loop semantics


def test_single_agent_critical_steps_are_its_steps():
    trace, m = run_task(DEEP, "single", 1)
    assert m.critical_steps == m.work == m.llm_calls == len(trace.stages)
    assert all(s["subs"] == [] for s in trace.stages)


def test_k1_swarm_capped_critical_steps_equal_work():
    m = run_task(make_task("mixed", 0, 0), "swarm-static", 1)[1]
    assert m.critical_steps_capped == m.work


def _max_overlap(trace):
    events = sorted([(s["start"], 1) for s in trace.spans if s["kind"] == "subagent"] +
                    [(s["end"], -1) for s in trace.spans if s["kind"] == "subagent"])
    n = peak = 0
    for _, d in events:
        n += d
        peak = max(peak, n)
    return peak


def test_cap_with_queue_is_fifo_and_never_exceeded():
    trace, m = run_task(WIDE, "swarm-pages", 3)
    assert trace.counters["queued"] > 0 and _max_overlap(trace) == 3
    starts = [s["start"] for s in sorted(trace.subagents, key=lambda s: int(s["name"].split("-")[1]))]
    assert starts == sorted(starts)
    assert m.item_f1 == run_task(WIDE, "swarm-pages", 16)[1].item_f1


def test_cap_with_reject_returns_the_error_and_the_orchestrator_retries():
    opts = RunOptions(swarm=SwarmConfig(overflow="reject"))
    trace, m = run_task(WIDE, "swarm-pages", 3, opts)
    assert trace.counters["rejected"] > 0 and trace.counters["queued"] == 0
    assert _max_overlap(trace) <= 3
    assert m.item_f1 == run_task(WIDE, "swarm-pages", 16)[1].item_f1


class Script:
    """A main or sub-agent policy that says fixed texts, then answers; it remembers what it saw."""

    def __init__(self, texts, answer="| name |\n|---|\n| x |"):
        self.texts, self.answer, self.seen = list(texts), answer, []

    def act(self, view):
        self.seen = list(view)
        return self.texts.pop(0) if self.texts else "done</think>" + self.answer

    def partial_answer(self, view):
        return self.answer


def calls(*pairs, start=0):
    return "plan</think>" + chat.format_tool_calls(
        [{"id": f"functions.{n}:{start + i}", "type": "function", "function": {"name": n, "arguments": a}}
         for i, (n, a) in enumerate(pairs)])


def test_reject_error_text_and_depth_one():
    spawn = Script([calls(("create_subagent", {"name": "x", "system_prompt": "s"}))])
    main = Script([calls(*[("create_subagent", {"name": f"w{i}", "system_prompt": "s"}) for i in range(3)],
                         *[("assign_task", {"agent": f"w{i}", "prompt": "p"}) for i in range(3)])])
    ep = Episode(World(WIDE_Q), main, lambda system, prompt: spawn, SwarmConfig(max_subagents=2, overflow="reject"))
    ep.run()
    results = [m.content for m in main.seen if m.role == "tool"]
    assert results[5] == ("ERROR: assign_task: 2 sub-agents are running (max_subagents=2); "
                          "assign 'w2' again later")
    assert any(m.content.startswith("ERROR: create_subagent: sub-agents cannot create") for m in spawn.seen)


def test_same_step_duplicates_run_once():
    lookup = ("lookup", {"entity": "Valpel", "attribute": "founded"})
    main = Script([calls(lookup, lookup, ("lookup", {"attribute": "founded", "entity": "Valpel"}))])
    ep = Episode(World(WIDE_Q), main, None)
    trace = ep.run()
    assert trace.counters["merged_calls"] == 2 and trace.counters["tool_calls"] == 3
    results = [m for m in main.seen if m.role == "tool"]
    assert [m.call_id for m in results] == ["functions.lookup:0", "functions.lookup:1", "functions.lookup:2"]
    assert len({m.content for m in results}) == 1


# ----------------------------------------------------------------------------
# failures, timeouts, cancellation


def test_no_transient_errors_no_retries():
    quiet = WorldConfig(p_transient=0.0, p_hang=0.0, latency={t: __import__("k25ref.swarm.world", fromlist=["x"])
                        .ToolLatency(2.0, 0.5, 0.0) for t in ("search", "lookup", "hop", "fetch")})
    m = run_task(WIDE_Q, "single-parallel", 1, RunOptions(world=quiet))[1]
    assert m.retries == 0 and m.tool_timeouts == 0


def test_fault_plan_fail_once_gives_one_retry_and_the_right_cell():
    quiet = WorldConfig(p_transient=0.0, p_hang=0.0, p_not_found=0.0)
    world = World(WIDE_Q, quiet)
    entity = world.catalog[0]
    call = ("lookup", canonical({"entity": entity, "attribute": "founded"}))
    trace, m = run_task(WIDE_Q, "single-parallel", 1, RunOptions(world=quiet, faults=FaultPlan(fail={call: 1})))
    assert m.retries - run_task(WIDE_Q, "single-parallel", 1, RunOptions(world=quiet))[1].retries == 1
    row = next(r for r in parse_table(trace.final) if r["name"] == entity)
    assert row["founded"] == str(world.cell(entity, "founded"))


def _hang_everything_of(task, entity):
    return FaultPlan(hang={("lookup", canonical({"entity": entity, "attribute": a})): 99
                           for a in task.spec["attributes"]})


def test_hung_tool_times_out_the_subagent_and_keeps_partial_items():
    entity = World(WIDE).catalog[0]
    opts = RunOptions(swarm=SwarmConfig(subagent_timeout=150, tool_timeout=400), faults=_hang_everything_of(WIDE, entity))
    trace, m = run_task(WIDE, "swarm-static", 16, opts)
    assert m.subagent_timeouts == 1 and m.r_finish == 15 / 16 and m.orphans == 0
    timed_out = next(s for s in trace.subagents if s["status"] == "timeout")
    assert timed_out["end"] - timed_out["start"] == 150
    assert 0.9 < m.item_f1 < 1.0                       # the stuck worker's other rows still arrived


def test_collect_all_keeps_siblings_fail_fast_drops_them():
    faults = FaultPlan(corrupt={("worker-3", 2): "crash"})
    keep = run_task(WIDE, "swarm-static", 16, RunOptions(faults=faults))[1]
    drop = run_task(WIDE, "swarm-static", 16, RunOptions(swarm=SwarmConfig(failure_mode="fail-fast"), faults=faults))[1]
    assert keep.cancelled == 0 and keep.finished == 15 and keep.r_finish == 15 / 16
    assert drop.cancelled == 15 and drop.finished == 0
    assert drop.item_f1 < 0.5 < 0.9 < keep.item_f1
    assert drop.orphans == keep.orphans == 0


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 400), st.sampled_from(["swarm-static", "swarm-pages", "spurious", "single-parallel"]))
def test_deadline_cancels_everything_and_nothing_fires_after(deadline, policy):
    trace, m = run_task(WIDE_Q, policy, 4, RunOptions(swarm=SwarmConfig(deadline=deadline)))
    assert trace.end <= deadline and m.orphans == 0
    assert all(t <= trace.end for t, *_ in trace.log)
    assert all(s["end"] <= trace.end for s in trace.spans if s["kind"] != "llm")
    assert all(s["status"] != "running" for s in trace.subagents)


# ----------------------------------------------------------------------------
# the K2.5 text round trip


def test_tool_call_text_round_trips_through_the_chat_parser():
    speaker = _Speaker()
    args = [{"query": "a}{b \"quoted\" <|tool_call_end|>", "page": 2}, {"entity": "Ö", "attribute": "x"}]
    text = speaker.say("thinking", [("search", args[0]), ("lookup", args[1])])
    out = chat.parse_output(text)
    assert out.problems == () and out.reasoning == "thinking"
    assert [(c.id, c.name, c.arguments) for c in out.tool_calls] == [
        ("functions.search:0", "search", args[0]), ("functions.lookup:1", "lookup", args[1])]


def test_truncated_generation_becomes_a_tool_error_and_is_repaired():
    clean = run_task(WIDE_Q, "single-parallel", 1)
    opts = RunOptions(faults=FaultPlan(corrupt={("main", 3): "truncate"}))
    trace, m = run_task(WIDE_Q, "single-parallel", 1, opts)
    assert trace.counters["parse_errors"] >= 1
    assert m.item_f1 == clean[1].item_f1 == 1.0                     # the lost call was said again
    assert trace.counters["tool_calls"] > clean[0].counters["tool_calls"]
    ep_main = Script([calls(("search", {"query": "x", "page": 1}), ("lookup", {"entity": "a", "attribute": "b"}))[:-40]])
    Episode(World(WIDE_Q), ep_main, None).run()
    errors = [m.content for m in ep_main.seen if m.role == "tool"]
    assert errors and all(e.startswith("ERROR") for e in errors[-1:])


# ----------------------------------------------------------------------------
# tasks and scoring


def test_widesearch_scoring_by_hand():
    ev = {"required": ["name", "n", "c"], "unique_columns": ["name"],
          "eval_pipeline": {"n": {"metric": ["number_near"], "criterion": 0.1}, "c": {"metric": ["exact_match"]}}}
    gold = [{"name": "A", "n": "100", "c": "x"}, {"name": "B", "n": "50", "c": "y"}, {"name": "C", "n": "1", "c": "z"}]
    pred = [{"name": "a ", "n": "105", "c": "X"},        # matches after normalising, 5% off is near
            {"name": "A", "n": "0", "c": "q"},           # duplicate key: dropped
            {"name": "B", "n": "80", "c": "y"},          # one cell wrong
            {"name": "D", "n": "1", "c": "z"}]           # not in gold
    s = score_table(pred, gold, ev)
    assert (s.precision_by_row, s.recall_by_row) == (1 / 3, 1 / 3)
    assert s.precision_by_item == pytest.approx(5 / 9) and s.recall_by_item == pytest.approx(5 / 9)
    assert s.success == 0
    assert score_table(gold, gold, ev).success == 1
    assert score_table([{"name": "A"}], gold, ev).f1_by_item == 0.0


def test_suite_files_round_trip(tmp_path):
    tasks = [make_task(f, 0, 0, quick=True) for f in ("wide", "deep", "mixed", "read")]
    back = read_suite(write_suite(tmp_path, tasks))
    assert [t for t, _ in back] == tasks
    assert all(gold == gold_table(t) for t, gold in back)
    (tmp_path / "tasks.jsonl").write_text("{not json\n")
    with pytest.raises(K25RefError, match="tasks.jsonl:1"):
        read_suite(tmp_path)


def test_quality_curve_reaches_targets_sooner_with_a_swarm():
    gold = gold_table(WIDE)
    single = quality_curve(run_task(WIDE, "single-parallel", 1)[0], WIDE, gold)
    swarm_ = quality_curve(run_task(WIDE, "swarm-static", 16)[0], WIDE, gold)
    assert time_to_target(swarm_, 0.7) * 2 < time_to_target(single, 0.7)


# ----------------------------------------------------------------------------
# CLI and demo


def test_cli_run_is_deterministic_and_draws(tmp_path):
    runner = CliRunner()
    a = runner.invoke(swarm, ["run", "--quick", "--gantt", str(tmp_path / "g.png")])
    b = runner.invoke(swarm, ["run", "--quick", "--force", "--gantt", str(tmp_path / "g.png")])
    assert a.exit_code == 0, a.output
    assert a.output == b.output and "critical_steps: " in a.output and "orphans: 0" in a.output
    assert (tmp_path / "g.png").stat().st_size > 10_000
    bad = runner.invoke(swarm, ["run", "nowhere"])
    assert isinstance(bad.exception, K25RefError)


def test_cli_bench_json_quick(tmp_path):
    r = CliRunner().invoke(swarm, ["bench", "--quick", "--json", "-K", "8"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert {x["policy"] for x in rows} == set(POLICIES) and all(x["orphans"] == 0 for x in rows)
    r = CliRunner().invoke(swarm, ["bench", "--quick", "-K", "8", "--plot", str(tmp_path / "q.png")])
    assert r.exit_code == 0 and "70%" in r.output and (tmp_path / "q.png").exists()


def test_parl_demo_shows_serial_collapse_without_r_parallel():
    from k25ref.swarm.parl_demo import measure_rewards, train
    perf = measure_rewards()
    assert perf[0] < perf[-1]                                   # a coordinated swarm is better
    alone = train(perf, 0.0, 0.0, 300)[-1]
    parl = train(perf, 0.5, 0.5, 300)[-1]
    assert alone["mean_k"] < 1.5 and parl["mean_k"] > 4 and parl["r_perf"] > alone["r_perf"]


def test_a_text_generator_can_drive_the_orchestrator():
    """ModelPolicy: the socket for a real model. Here the 'model' replays a scripted worker's text."""
    from k25ref.swarm.policies import TOOL_SCHEMAS, ModelPolicy
    from k25ref.swarm.tasks import job_of
    scripted, seen = Worker(job_of(DEEP.query), 1), []

    def generate(messages):
        seen.append(chat.render(messages, tools=TOOL_SCHEMAS))
        return scripted.act(ep.main.context)

    ep = Episode(World(DEEP), ModelPolicy(generate, DEEP.columns), None)
    trace = ep.run()
    assert score_table(parse_table(trace.final), gold_table(DEEP), DEEP.evaluation).success == 1
    assert "assign_task" in seen[0] and "functions.hop:0" in seen[1] and len(seen) == trace.counters["llm_calls"]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(spec=None), "spec must be an object"),
    (lambda d: d.update(spec={}), "spec does not describe a wide world"),
    (lambda d: d.update(evaluation={}), "evaluation needs required"),
    (lambda d: d.update(world_seed="x"), "world_seed must be an integer"),
    (lambda d: d.update(family="nope"), "family must be one of"),
    (lambda d: d.update(instance_id="../../x"), "instance_id must be a plain file name"),
])
def test_a_hand_edited_task_row_is_one_line_naming_its_line(tmp_path, edit, message):
    from k25ref.cli import main
    assert CliRunner().invoke(main, ["swarm", "export", str(tmp_path / "s"), "--quick", "--seeds", "1"]).exit_code == 0
    rows = (tmp_path / "s" / "tasks.jsonl").read_text().splitlines()
    row = json.loads(rows[0])
    edit(row)
    (tmp_path / "s" / "tasks.jsonl").write_text("\n".join([json.dumps(row)] + rows[1:]) + "\n")
    r = CliRunner().invoke(main, ["swarm", "run", str(tmp_path / "s"), "--quick"])
    assert r.exit_code == 2 and "tasks.jsonl:1: " + message in r.output, r.output


def test_export_never_replaces_a_gold_table_unasked(tmp_path):
    from k25ref.swarm.cli import swarm
    assert CliRunner().invoke(swarm, ["export", str(tmp_path / "s"), "--quick", "--seeds", "1"]).exit_code == 0
    (tmp_path / "s" / "tasks.jsonl").unlink()
    gold = sorted((tmp_path / "s" / "gold").iterdir())[0]
    gold.write_text("mine")
    r = CliRunner().invoke(swarm, ["export", str(tmp_path / "s"), "--quick", "--seeds", "1"])
    assert r.exit_code == 2 and "already holds gold/" in r.output and gold.read_text() == "mine"
