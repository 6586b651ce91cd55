"""tools/bench.py (`k25ref bench`): the figures it reports are medians with their spread, its configs are valid
checkpoints, its engines decode the same greedy tokens (or the table says how many differ), and its profile of
a decode step adds up. No test here times anything: speed is read from the tool's printed figures."""
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import bench  # noqa: E402


def run(prefill, decode, error=False):
    return {"engine": "e", "error": "boom"} if error else \
        {"engine": "e", "prefill_tps": prefill, "decode_tps": decode, "peak_rss": 2**20 * prefill,
         "tokens": [1, 2, 3]}


def test_summary_is_the_median_with_its_range_and_skips_failed_runs():
    s = bench.summarize([run(10, 5), run(30, 1), run(0, 0, error=True), run(20, 9)])
    assert s["prefill_tps"] == [20, 10, 30] and s["decode_tps"] == [5, 1, 9]
    assert s["prefill_tps_runs"] == [10, 30, None, 20] and s["peak_rss"] == 30 * 2**20
    assert bench.summarize([run(0, 0, error=True)])["error"] == "boom"
    assert bench.spread([4.0, 1.0]) == (2.5, 1.0, 4.0)                    # even count: the middle two's mean


def test_ratios_pair_the_rounds_and_leave_out_a_failed_one():
    ours = bench.summarize([run(10, 4), run(30, 6), run(20, 8)])
    theirs = bench.summarize([run(5, 4), run(0, 0, error=True), run(40, 2)])
    assert bench.paired_ratio(ours, theirs, "prefill_tps") == [1.25, 0.5, 2.0]          # rounds 1 and 3 only
    assert bench.paired_ratio(ours, theirs, "decode_tps") == [2.5, 1.0, 4.0]
    assert bench.paired_ratio(ours, {"engine": "x", "error": "no"}, "decode_tps") is None
    peers, rows = bench.ratio_rows({"c": {"k25ref-numba": ours, "llama.cpp": theirs}})
    assert peers == ["llama.cpp"] and rows == [["c", "k25ref-numba", "1.25x (0.50–2.00)", "2.50x (1.00–4.00)"]]


def test_the_markdown_names_the_command_of_every_section():
    results = {"tiny": {e: bench.summarize([run(10, 5)]) for e in ("k25ref-numba", "k25ref-api", "llama.cpp")}}
    results["tiny"]["llama.cpp"]["tokens"] = [1, 2, 4]
    matvec = {"copy_GBps": 10.0}
    for mode in ("warm", "cold"):
        matvec |= {f"int4_{mode}_ms": [1.0, 1.1], f"numpy_{mode}_ms": [2.0, 2.2], f"speedup_{mode}": [2.0, 2.0],
                   f"int4_{mode}_GBps": [5.0, 5.0], f"numpy_{mode}_GBps": [4.0, 4.0]}
    profile = {"config": "tiny", "steps": 4, "step_ms": 2.0, "kernels": [["m.k", "decoder.f", 3, 1.5]],
               "between_ms": 0.5, "between": [["k25ref/nn.py", 1.0]], "command": "python tools/bench.py --profile tiny"}
    report = {"machine": "m", "threads": 1, "versions": {"numpy": "2"}, "results": results, "repeat": 1,
              "command": "python tools/bench.py --threads 1 --configs tiny", "load": [0.5, 0.7], "matvec": matvec,
              "profile": profile}
    text = bench.markdown([report])
    assert text.count("Measured by `python tools/bench.py --threads 1 --configs tiny`") == 3   # speed, matvec, JIT
    assert "Measured by `python tools/bench.py --profile tiny`" in text
    assert "| tiny | llama.cpp | 10.0 (10.0–10.0) | 5.0 (5.0–5.0) | 10 | 2/3 |" in text       # a mismatch, shown
    assert "over llama.cpp prefill" in text and "| tiny | k25ref-api | 1.00x (1.00–1.00)" in text
    assert "kernel `m.k` from `decoder.f` | 3 | 1.50 | 75%" in text and "load average (1 min) 0.50" in text
    assert "the machine was shared" not in text and "the machine was shared" in bench.markdown([report | {"load": [3.5, 1.0]}])


@pytest.mark.parametrize("name", ["h768-e48", "h512-e32"])
def test_the_neighbouring_configs_are_valid_and_not_the_tuned_ones(name):
    from k25ref.config import from_hf
    cfg = from_hf(bench.hub_config(name)).text
    assert cfg.hidden_size == bench.SHAPES[name]["hidden_size"] and name in bench.CONFIGS.split(",")
    for tuned in ("tiny", "small"):
        differ = {k for k, v in bench.SHAPES[name].items() if bench.SHAPES[tuned][k] != v}
        assert {"hidden_size", "n_routed_experts", "moe_intermediate_size", "kv_lora_rank"} <= differ


@pytest.mark.slow
def test_a_neighbouring_config_builds_loads_and_decodes_the_same_on_every_k25ref_engine(tmp_path):
    path = bench.build("h512-e32", str(tmp_path))
    assert bench.build("h512-e32", str(tmp_path)) == path                     # written once, then reused
    ids = bench.prompt_ids(path)[:16]
    tokens = {e: list(bench.engine(e, path, 1)(ids, 4)) for e in ("k25ref-numpy", "k25ref-numba", "k25ref-api")}
    assert len(set(map(tuple, tokens.values()))) == 1 and len(tokens["k25ref-numpy"]) == 5, tokens


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return bench.build("tiny", str(tmp_path_factory.mktemp("bench")))


@pytest.mark.peer
def test_llama_cpp_decodes_k25refs_greedy_tokens_with_f32_experts(tiny, tmp_path):
    """On an F32 export (llama.cpp within 2e-5 of k25ref, docs/conformance.md) its greedy tokens are k25ref's."""
    pytest.importorskip("llama_cpp")
    from k25ref.gguf_export import export_gguf
    export_gguf(tiny, str(tmp_path / "f32.gguf"), experts="f32")
    ids = bench.prompt_ids(tiny)
    ours = list(bench.engine("k25ref-numpy", tiny, 1)(ids, 16))
    theirs = list(bench.llama_cpp_engine(str(tmp_path / "f32.gguf"), 1)(ids, 16))
    assert theirs == ours
    again = bench.llama_cpp_engine(str(tmp_path / "f32.gguf"), 1)
    assert list(again(ids, 3)) == ours[:4] and list(again(ids, 3)) == ours[:4]     # a second prompt: cache reset


@pytest.mark.peer
@pytest.mark.slow
def test_the_q4_0_engine_runs_in_the_benchmark_and_its_differences_are_counted(tiny):
    pytest.importorskip("llama_cpp")
    bench.export(tiny)
    results = {"tiny": {e: bench.summarize([bench.worker(e, tiny, 1)]) for e in ("k25ref-numpy", "llama.cpp")}}
    rows = bench.table_rows(results)
    theirs, ours = results["tiny"]["llama.cpp"]["tokens"], results["tiny"]["k25ref-numpy"]["tokens"]
    same = sum(a == b for a, b in zip(theirs, ours))
    assert rows[1][:2] == ["tiny", "llama.cpp"] and rows[1][5] == f"{same}/{bench.DECODE + 1}"
    assert theirs[0] == ours[0]                       # the first token after the prompt: Q4_0 keeps the argmax here


def test_a_workers_peak_rss_is_its_own_not_its_parents():
    big = np.ones(2**27, np.uint8) + 1                   # 128 MiB held by this (parent) process
    code = "import sys; sys.path.insert(0, 'tools'); import bench; print(bench.peak_rss())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT).stdout)
    assert child < bench.peak_rss() - big.nbytes // 2


def test_the_profile_of_a_decode_step_adds_up(tiny):
    from k25ref.config import load_config
    from k25ref.kernels import compiled
    p = bench.profile_step(tiny, steps=2)
    assert p["between_ms"] > 0 and sum(r[3] for r in p["kernels"]) + p["between_ms"] == pytest.approx(p["step_ms"])
    assert sum(share for _, share in p["between"]) == pytest.approx(1.0)
    named = [share for name, share in p["between"] if name != "everything else"]   # the rest sums the tail
    assert all(share > 0 for _, share in p["between"]) and named == sorted(named, reverse=True)
    if compiled():                                  # every MoE layer launches the experts kernel once per step
        t = load_config(tiny).text
        moe = [r for r in p["kernels"] if "moe_experts" in r[0]]
        assert sum(r[2] for r in moe) == sum(t.is_moe_layer(i) for i in range(t.num_hidden_layers)), p["kernels"]
    from numba.core.dispatcher import Dispatcher
    assert Dispatcher.__call__.__qualname__ != "time_kernels.<locals>.timed"         # numba's own call is back


@pytest.mark.parametrize("args, message", [
    (["--threads", "1,0"], "--threads: '0' must be at least 1"),
    (["--threads", "1,,2"], "--threads: '' is not a whole number"),
    (["--configs", "h768"], "--configs: 'h768'"),
    (["--engines", "llama"], "--engines: 'llama'"),
])
def test_bad_options_are_one_line_usage_errors(args, message):
    r = subprocess.run([sys.executable, "-m", "k25ref.cli", "bench", *args], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("k25ref: error:") and message in r.stderr, r.stderr


def test_help_names_the_engines_and_configs():
    r = subprocess.run([sys.executable, "-m", "k25ref.cli", "bench", "--help"], capture_output=True, text=True,
                       timeout=120, cwd=ROOT)
    assert r.returncode == 0
    for word in ("llama.cpp", "k25ref-api", "h768-e48", "h512-e32", "--profile", "min-max", "1,2"):
        assert word in r.stdout, word
    assert np.all([len(line) <= 120 for line in r.stdout.splitlines()])


@pytest.mark.parametrize("tool, args, message", [
    ("bench_moe_kernel.py", ["--tokens", "1,0"], "--tokens: '0' must be at least 1"),
    ("bench_moe_kernel.py", ["--rounds", "nan"], "--rounds: 'nan' is not a whole number"),
    ("bench_moe_kernel.py", ["--model", "/nonexistent"], "not a checkpoint folder"),
    ("bench_moe_kernel.py", ["--base", "no-such-revision"], "--base no-such-revision:"),
    ("bench_moe_parts.py", ["--shapes", "tiny,huge"], "--shapes"),
    ("bench_moe_parts.py", ["--tokens", "0"], "--tokens: '0' must be at least 1"),
    ("bench_short_rows.py", ["--lengths", "128,x"], "--lengths"),
    ("bench_short_rows.py", ["--rounds", "0"], "--rounds: '0' must be at least 1"),
    ("bench_short_rows.py", ["--model", "/nonexistent"], "not a checkpoint folder"),
    ("bench_short_rows.py", ["--model", "README.md"], "'README.md': not a checkpoint folder"),
    ("nano_failures.py", ["--by-style", "--images", "0"], "not both 0"),
    ("nano_failures.py", ["--by-style", "--images", "-1"], "--images -1"),
    ("nano_failures.py", ["--by-style", "--model", "/nonexistent", "--images", "1"], "/nonexistent"),
    ("nano_failures.py", ["--n", "0"], "--n: '0' must be at least 1"),
    ("nano_failures.py", ["--probe", "a.pt", "--probe", "b.pt"], "2 read-out files for 1 --model"),
    ("nano_failures.py", ["--probe", "/nonexistent.pt"], "--probe /nonexistent.pt: no such file"),
])
def test_tools_bad_options_are_one_line_usage_errors(tool, args, message):
    """The speed and nano tools beside `k25ref bench` answer bad options as it does: one line, exit 2."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), *args], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("k25ref: error:") and message in r.stderr, r.stderr


def test_short_rows_tool_prints_its_grid_and_a_prompt_with_the_rule_off_and_on(tiny):
    env = dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=ROOT)
    tool = os.path.join(ROOT, "tools", "bench_short_rows.py")
    r = subprocess.run([sys.executable, tool, "--tokens", "4,8", "--lengths", "16", "--rounds", "1"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    row = r.stdout.splitlines()[-1]
    assert row.startswith("I=   16") and row.count("/") == 4 and "T=4:" in row and "T=8:" in row, r.stdout
    r = subprocess.run([sys.executable, tool, "--model", tiny, "--rounds", "1"], capture_output=True, text=True,
                       timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0 and "rule off" in r.stdout and "same token: True" in r.stdout, r.stdout + r.stderr


def test_moe_parts_tool_prints_a_share_for_every_part_of_the_kernel():
    """Its source edits still apply to kernels/moe_experts.py (else it stops and names the edit)."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_moe_parts.py"), "--shapes", "tiny",
                        "--tokens", "8", "--rounds", "1"], capture_output=True, text=True, timeout=600, cwd=ROOT,
                       env=dict(os.environ, NUMBA_NUM_THREADS="1", PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    header, _, row = r.stdout.splitlines()
    for part in ("whole kernel", "4x4 tiles", "row dequantization", "SiLU", "scatter into out", "rate"):
        assert part in header
    assert row.startswith("| tiny (256, 128, 16 top-4) |") and row.count("%") == 4 and row.endswith("G/s |")
