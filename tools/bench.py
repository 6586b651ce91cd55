"""Side-by-side speed of k25ref (NumPy reference, Numba kernels) and the transformers oracle, same weights and tokens.

    python tools/bench.py                        # tiny + small, table on stdout
    python tools/bench.py --configs tiny,small,medium --json
    python tools/bench.py --markdown > docs/performance.md
    python tools/bench.py --profile small        # cProfile of k25ref decoding (numba path), then exit
    python tools/bench.py --long                 # long prompts: speed and memory against length (bench_long.py)

What one run does:
1. Builds released-layout checkpoints (k25ref.make_tiny with edited hub configs, INT4 experts, text only)
   into --workdir, once; later runs reuse them.
2. Measures the INT4 matvec kernel on a 2048 x 7168 expert matrix against NumPy's float32 GEMV on the same
   (dequantized) matrix, and this machine's memory bandwidth (NumPy copy of a 256 MiB array).
3. For each config, runs every engine in its own subprocess (so peak RSS is that engine's own): k25ref
   `numpy` (the reference), k25ref `numba` (backend="numba": the kernels), and, when torch and
   transformers are installed, the oracle (tools/oracle.py: float32, eager attention) with experts
   "eager" and "grouped_mm". Each engine prefills the same 128 random tokens, then decodes 64 tokens greedily
   with its cache; greedy tokens are compared with the first engine's.
4. Prints prefill tokens/s, decode tokens/s, peak RSS and the ratio k25ref(numba) / each oracle. Engines run
   --repeat times round robin and the best speed of each is kept, so a burst of load from other processes
   does not decide a ratio.

Threads: --threads (default: all cores) for numba, torch and BLAS alike, except that k25ref-numba keeps BLAS
on one thread (its spinning threads compete with numba's). torch and transformers are imported by this tool
only, never by k25ref.
"""
import argparse
import cProfile
import json
import os
import platform
import pstats
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from k25ref.options import ArgumentParser, names_arg, positive_int  # noqa: E402
from k25ref.progress import bar, quiet  # noqa: E402

PREFILL, DECODE = 128, 64
SHAPES = {   # text-decoder hub keys laid over the "tiny" preset (vision removed)
    "tiny": dict(hidden_size=256, num_hidden_layers=4, n_routed_experts=16, num_experts_per_tok=4,
                 moe_intermediate_size=128, intermediate_size=512, num_attention_heads=4, q_lora_rank=128,
                 kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_group=4,
                 topk_group=2, vocab_size=4096),
    "small": dict(hidden_size=1024, num_hidden_layers=8, n_routed_experts=64, num_experts_per_tok=8,
                  moe_intermediate_size=512, intermediate_size=2816, num_attention_heads=16, q_lora_rank=384,
                  kv_lora_rank=256, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_group=8,
                  topk_group=4, vocab_size=32768),
    "medium": dict(hidden_size=2048, num_hidden_layers=8, n_routed_experts=64, num_experts_per_tok=8,
                   moe_intermediate_size=768, intermediate_size=5632, num_attention_heads=16, q_lora_rank=768,
                   kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_group=8,
                   topk_group=4, vocab_size=32768),
}
ENGINES = ["k25ref-numpy", "k25ref-numba", "oracle-eager", "oracle-grouped"]
VISION = dict(vt_hidden_size=384, vt_num_hidden_layers=6, vt_num_attention_heads=6, vt_intermediate_size=1536,
              mm_hidden_size=384, init_pos_emb_height=64, init_pos_emb_width=64)   # "small vision": MoonViT / 3
VISION_ENGINES = ["k25ref-numpy", "k25ref-numba", "oracle-eager"]


# ----------------------------------------------------------------------------
# checkpoints and tokens


def hub_config(name):
    """The hub config.json dict of a bench shape: the tiny preset, text only, dims replaced, max context 512."""
    from k25ref.make_tiny import preset
    hub = preset("tiny")
    hub.pop("vision_config")
    t = hub["text_config"]
    t.update(SHAPES[name], max_position_embeddings=512)
    t["num_key_value_heads"] = t["num_attention_heads"]
    base = t["vocab_size"] - 256                                 # special ids follow the base vocabulary
    for d in (hub, t):
        d.update(bos_token_id=base, eos_token_id=base + 1, pad_token_id=t["vocab_size"] - 1)
    hub["media_placeholder_token_id"] = base + 21
    return hub


def build(name, workdir):
    """Write the checkpoint of shape `name` once (same config -> reuse); return its folder."""
    from k25ref.make_tiny import make_tiny
    out, hub = os.path.join(workdir, name), hub_config(name)
    cfg_file = os.path.join(out, "config.json")
    if os.path.exists(cfg_file):
        with open(cfg_file) as f:
            if json.load(f) == hub:
                return out
    make_tiny(out, seed=0, shards=2, config=hub, tokenizer=False)
    return out


def build_vision(workdir):
    """The small vision config (VISION over the tiny preset's text decoder), written once; its folder."""
    from k25ref.make_tiny import make_tiny, preset
    out, hub = os.path.join(workdir, "vision-small"), preset("tiny")
    hub["vision_config"].update(VISION)
    if not os.path.exists(os.path.join(out, "config.json")):
        make_tiny(out, seed=0, shards=1, config=hub, tokenizer=False)
    return out


def vision_inputs():
    """-> {name: (pixel_values, grid_thw)}: a 448x448 image and one 4-frame 448x448 video chunk."""
    from PIL import Image
    from k25ref.media import preprocess_image, preprocess_video
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)) for _ in range(4)]
    pv, grid, _ = preprocess_video(frames, fps=2.0)
    return {"image 448x448": preprocess_image(frames[0]), "video chunk 4x448x448": (pv, grid)}


def vision_worker(engine, path, threads, n=4, warmups=2):
    """Seconds to encode each vision input (tower + projector), best of n after `warmups` runs: the first runs
    of a process can be slower, for every engine."""
    if engine.startswith("oracle"):
        import torch
        from oracle_vision import load_oracle
        torch.set_num_threads(threads)
        tower, projector, _ = load_oracle(path)

        @torch.no_grad()
        def encode(pv, grid):
            return projector(tower(torch.from_numpy(pv), grid_thw=torch.from_numpy(grid)).pooler_output)
    else:
        from k25ref.model import load_model
        if engine == "k25ref-numba":
            from k25ref.kernels import warmup
            warmup()
        model = load_model(path)

        def encode(pv, grid):
            return model.vision_features(pv, grid, backend=engine.split("-")[1])
    out = {"engine": engine}
    for name, (pv, grid) in vision_inputs().items():
        for _ in range(warmups):
            encode(pv, grid)
        out[name] = best_of(lambda: encode(pv, grid), n)[0]
    out["peak_rss"] = peak_rss()
    return out


def prompt_ids(path):
    """PREFILL seeded random ids of the base vocabulary (no special or media-placeholder ids)."""
    with open(os.path.join(path, "config.json")) as f:
        vocab = json.load(f)["text_config"]["vocab_size"]
    return np.random.default_rng(0).integers(0, vocab - 256, PREFILL)


def peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------
# engines (each runs in its own process: `--worker ENGINE PATH`)


def k25ref_engine(path, backend):
    """-> (prefill(ids) -> (cache, first token), decode(cache, token) -> token)."""
    from k25ref.model import load_model
    model = load_model(path)

    def prefill(ids):
        cache = model.new_cache()
        return cache, int(np.argmax(model.forward(ids, cache, absorbed=True, last_only=True, backend=backend)[-1]))

    def decode(cache, token):
        logits = model.forward(np.array([token]), cache, absorbed=True, last_only=True, backend=backend)
        return int(np.argmax(logits[-1]))
    return prefill, decode


def oracle_engine(path, experts):
    import torch
    from transformers import DynamicCache
    from oracle import load_oracle, text_model
    model = load_oracle(path)
    if experts != "eager":                       # the multimodal wrapper refuses; its text decoder accepts
        text_model(model).set_experts_implementation(experts)

    @torch.no_grad()
    def prefill(ids):
        cache = DynamicCache(config=model.config.get_text_config())
        logits = model(input_ids=torch.as_tensor(ids)[None], past_key_values=cache, use_cache=True,
                       logits_to_keep=1).logits
        return cache, int(logits[0, -1].argmax())

    @torch.no_grad()
    def decode(cache, token):
        logits = model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True).logits
        return int(logits[0, -1].argmax())
    return prefill, decode


def startup_worker():
    """Generate from the embedded model through the kernels; print a line the moment the first token exists."""
    from k25ref.model import default_model_path
    from k25ref.kernels import warmup
    warmup()
    prefill, decode = k25ref_engine(default_model_path(), "numba")
    prefill(np.arange(16))
    print("first-token", flush=True)


def startup_seconds(threads, cache_dir=None):
    """Wall time from process start to the first generated token (imports, cache load or compile, model load)."""
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    if cache_dir:
        env["NUMBA_CACHE_DIR"] = cache_dir
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--startup"], env=env,
                            stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("first-token"):
            break
    seconds = time.perf_counter() - t0
    proc.wait()
    return seconds


def first_compile_seconds(threads):
    """warmup() per kernel with an empty numba cache (a fresh NUMBA_CACHE_DIR): the true first-call cost."""
    import tempfile
    with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as d2:
        env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), NUMBA_CACHE_DIR=d)
        code = "import json; from k25ref.kernels import warmup; print(json.dumps(warmup()))"
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
        cold = json.loads(res.stdout.strip().splitlines()[-1])
        return cold, startup_seconds(threads, d2)


def worker(engine, path, threads):
    """Load, warm up on the same prompt, then time prefill of PREFILL tokens and DECODE greedy steps."""
    t0 = time.perf_counter()
    if engine.startswith("oracle"):
        import torch
        torch.set_num_threads(threads)
        prefill, decode = oracle_engine(path, {"oracle-eager": "eager", "oracle-grouped": "grouped_mm"}[engine])
    else:
        jit = {}
        if engine == "k25ref-numba":
            from k25ref.kernels import warmup
            jit = warmup()
        prefill, decode = k25ref_engine(path, engine.split("-")[1])
    load = time.perf_counter() - t0
    ids = prompt_ids(path)
    cache, token = prefill(ids)      # warm-up: k25ref reads weights on first use (the oracle at load), allocators
    decode(cache, token)
    t1 = time.perf_counter()
    cache, token = prefill(ids)
    t2 = time.perf_counter()
    tokens = [token]
    for _ in range(DECODE):
        tokens.append(decode(cache, tokens[-1]))
    t3 = time.perf_counter()
    out = {"engine": engine, "prefill_tps": PREFILL / (t2 - t1), "decode_tps": DECODE / (t3 - t2),
           "peak_rss": peak_rss(), "load_s": load, "tokens": tokens}
    if engine == "k25ref-numba":
        out["jit_s"] = jit
    return out


def run_worker(engine, path, threads, workdir=None):
    # BLAS threads would compete with numba's in decoding (and stall); the vision path's kernels run on the
    # calling thread between BLAS products (kernels/vision_block.py), so there BLAS gets the threads
    blas = 1 if engine == "k25ref-numba" and path != "vision" else threads
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(blas), MKL_NUM_THREADS=str(blas))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, path, "--threads", str(threads)]
    if workdir:
        cmd += ["--workdir", workdir]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        return {"engine": engine, "error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def best_run(runs):
    """The best prefill and the best decode speed over repeated runs of one engine (the machine's load varies
    from run to run; the best run is the one least disturbed), with the largest peak RSS."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    best = dict(max(ok, key=lambda r: r["decode_tps"]))
    best["prefill_tps"] = max(r["prefill_tps"] for r in ok)
    best["peak_rss"] = max(r["peak_rss"] for r in ok)
    return best


def best_vision(runs):
    """Per input, the fastest of repeated runs of one engine."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    return {k: (min(r[k] for r in ok) if k != "engine" else v) for k, v in ok[0].items()}


def usable_engines(asked, say=True):
    """The engines of `asked` this machine can run; the oracle ones need torch and transformers (a note on
    stderr says when they are skipped; with nothing left to run, an error)."""
    if have_oracle():
        return asked
    skipped = [e for e in asked if e.startswith("oracle")]
    if skipped and say:
        print(f"bench: skipping {', '.join(skipped)}: torch and transformers are not installed "
              "(pip install -e '.[oracle]')", file=sys.stderr)
    left = [e for e in asked if e not in skipped]
    if not left:
        print("bench: no engine left to run: install the oracle extra or ask for k25ref-numpy or k25ref-numba",
              file=sys.stderr)
        sys.exit(2)
    return left


def have_oracle():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        return True
    except ImportError:
        return False


# ----------------------------------------------------------------------------
# the INT4 matvec against NumPy's GEMV and the memory bandwidth


def best_of(fn, n):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), float(np.median(times))


def matvec_bench(O=2048, I=7168, n=40):
    """Fused INT4 matvec vs np.float32 GEMV on the same matrix, warm (one matrix) and cold (8 matrices in turn,
    more bytes than the last-level cache), plus copy bandwidth. Times are best-of-n and median. Run as a
    worker, so numba and BLAS both get --threads threads."""
    from k25ref.int4 import dequantize, quantize
    from k25ref.kernels.int4_matvec import int4_matmul_numba, split_nibbles
    rng = np.random.default_rng(0)
    ws = [quantize(rng.standard_normal((O, I), dtype=np.float32) / np.float32(np.sqrt(I))) for _ in range(8)]
    fs = [dequantize(w) for w in ws]
    x = rng.standard_normal((1, I), dtype=np.float32)
    xs, out = split_nibbles(x), np.empty((1, O), np.float32)
    int4_matmul_numba(ws[0].packed, ws[0].scale, xs, out)
    big = np.ones(64 * 2**20, np.float32)
    dst = np.empty_like(big)
    copy_best, _ = best_of(lambda: np.copyto(dst, big), 10)
    r = {"shape": [O, I], "copy_GBps": 2 * big.nbytes / copy_best / 1e9,
         "packed_bytes": ws[0].packed.nbytes + ws[0].scale.size * 2, "float_bytes": fs[0].nbytes}
    k = iter(range(10**9))
    for name, fn in (("int4_warm", lambda: int4_matmul_numba(ws[0].packed, ws[0].scale, xs, out)),
                     ("numpy_warm", lambda: fs[0] @ x[0]),
                     ("int4_cold", lambda: (lambda w: int4_matmul_numba(w.packed, w.scale, xs, out))(ws[next(k) % 8])),
                     ("numpy_cold", lambda: fs[next(k) % 8] @ x[0])):
        r[name + "_ms"] = [1e3 * t for t in best_of(fn, n)]
    for mode in ("warm", "cold"):
        r[f"speedup_{mode}"] = [a / b for a, b in zip(r[f"numpy_{mode}_ms"], r[f"int4_{mode}_ms"])]
        r[f"int4_{mode}_GBps"] = [r["packed_bytes"] / t / 1e6 for t in r[f"int4_{mode}_ms"]]
        r[f"numpy_{mode}_GBps"] = [r["float_bytes"] / t / 1e6 for t in r[f"numpy_{mode}_ms"]]
    return r


# ----------------------------------------------------------------------------
# report


def ratio(a, b, key):
    return a[key] / b[key] if a and b and key in a and key in b else None


def table_rows(results):
    rows = []
    for name, engines in results.items():
        ours = engines.get("k25ref-numba")
        first = next((e["tokens"] for e in engines.values() if "tokens" in e), None)
        for engine, e in engines.items():
            if "error" in e:
                rows.append([name, engine, "error: " + e["error"][:60], "", "", "", ""])
                continue
            same = sum(a == b for a, b in zip(e["tokens"], first))
            quotient = ""
            if engine.startswith("oracle") and ours and "error" not in ours:        # k25ref-numba over this oracle
                quotient = (f"prefill {ratio(ours, e, 'prefill_tps'):.2f}x, "
                            f"decode {ratio(ours, e, 'decode_tps'):.2f}x")
            rows.append([name, engine, f"{e['prefill_tps']:.1f}", f"{e['decode_tps']:.1f}",
                         f"{e['peak_rss'] / 2**20:.0f}", f"{same}/{len(first)}", quotient])
    return rows


def markdown(reports):
    """docs/performance.md from one or more reports (e.g. one per thread count)."""
    lines = ["# Performance", "",
             "Written by `python tools/bench.py --markdown > docs/performance.md`, or from saved runs with "
             "`--json` and `--from-json A.json B.json --markdown` (do not edit by hand).", "",
             "Reading these numbers: every engine computes in float32 from the same released-layout checkpoint "
             "(INT4 experts); the oracle holds its experts dequantized to float32 (hence its RSS), k25ref keeps "
             "them packed. On a shared machine a parallel region waits for its slowest thread, so multi-thread "
             "runs measure the machine's load as much as the code (torch, OpenBLAS and numba spin-wait "
             "differently); the one-thread table is the comparable one. Method and kernels: docs/kernels.md.", ""]
    for report in reports:
        lines += markdown_section(report)
    return "\n".join(lines) + "\n"


def markdown_section(report):
    m, lines = report["matvec"], [f"## {report['threads']} thread(s)", ""]
    lines += [f"Machine: {report['machine']}; {report['threads']} threads; numpy {report['versions']['numpy']}, "
              f"numba {report['versions'].get('numba')}, torch {report['versions'].get('torch')}, "
              f"transformers {report['versions'].get('transformers')}.", "",
              f"Prefill: {PREFILL} tokens from an empty KV cache, after a warm-up run of the same prompt (k25ref "
              "reads weights on first use, the oracle at load; timing starts with both holding them). "
              f"Decode: {DECODE} greedy tokens after that prompt, one token per forward with the cache. Same "
              "checkpoint and tokens for every engine; each engine in its own process (peak RSS is its own), best of "
              f"{report.get('repeat', 1)} round-robin runs. `same` counts greedy tokens equal to the first "
              "engine's. The last column, on each oracle's row: k25ref-numba's speed over that oracle's.", "",
              "| config | engine | prefill tok/s | decode tok/s | peak RSS MiB | same | k25ref-numba / this |",
              "|---|---|---:|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(report["results"])]
    if report.get("vision"):
        lines += ["", "### Vision encode (tower + projector), small vision config", "",
                  f"MoonViT at a third of K2.5's width: {VISION['vt_num_hidden_layers']} blocks of width "
                  f"{VISION['vt_hidden_size']}, {VISION['vt_num_attention_heads']} heads, 64 x 64 position table. "
                  "Best of 4 after two warm-up runs, seconds; ratio = oracle / k25ref-numba (the path `generate` takes "
                  "with its default backend). Both k25ref paths leave the products to BLAS; k25ref-numba runs "
                  "the passes between them as one-pass kernels (LayerNorm, GELU, RoPE, softmax).",
                  "",
                  "| input | " + " | ".join(report["vision"]) + " | k25ref/oracle speed |",
                  "|---|" + "---:|" * (len(report["vision"]) + 1)]
        lines += ["| " + line + " |" for line in vision_lines(report, sep=" | ")]
    lines += ["", "### INT4 matvec (2048 x 7168, one expert matrix)", "",
              f"Memory bandwidth (NumPy copy of 256 MiB, read + write bytes): {m['copy_GBps']:.1f} GB/s.", "",
              "| | INT4 kernel ms | NumPy float32 GEMV ms | speed-up | INT4 packed GB/s | fraction of copy bandwidth |",
              "|---|---:|---:|---:|---:|---:|"]
    for mode in ("warm", "cold"):
        for j, stat in enumerate(("best", "median")):
            lines.append(f"| {mode}, {stat} | {m[f'int4_{mode}_ms'][j]:.2f} | {m[f'numpy_{mode}_ms'][j]:.2f} | "
                         f"{m[f'speedup_{mode}'][j]:.2f}x | {m[f'int4_{mode}_GBps'][j]:.1f} | "
                         f"{m[f'int4_{mode}_GBps'][j] / m['copy_GBps']:.2f} |")
    lines += ["", "warm: the same matrix every call (it may sit in the last-level cache); cold: 8 different matrices "
              "in turn, as decoding meets experts.", "", "### JIT", ""]
    for name, engines in report["results"].items():
        jit = engines.get("k25ref-numba", {}).get("jit_s")
        if jit:
            lines.append(f"- {name}: `warmup()` " + ", ".join(f"{k} {v:.2f} s" for k, v in jit.items()))
    if report.get("jit_first"):
        lines.append("- first compile with an empty cache: " + ", ".join(f"{k} {v:.2f} s"
                                                                          for k, v in report["jit_first"].items()))
        lines.append(f"- process start to first generated token on the embedded model through the kernels: "
                     f"{report['startup_cached_s']:.2f} s with the cache, {report['startup_uncached_s']:.2f} s "
                     "with an empty one")
    return lines + [""]


def vision_lines(report, sep="  "):
    """One line per vision input: seconds per engine, and the oracle's time over k25ref's numba path."""
    v = report.get("vision") or {}
    ok = {e: r for e, r in v.items() if "error" not in r}
    if not ok:
        return [f"vision: {e} error {r['error'][:60]}" for e, r in v.items()]
    names = [k for k in next(iter(ok.values())) if k not in ("engine", "peak_rss")]
    lines = []
    for name in names:
        cells = [f"{v[e][name]:.3f} s" if e in ok else "error" for e in v]
        speed = (f"{ok['oracle-eager'][name] / ok['k25ref-numba'][name]:.2f}x"
                 if "oracle-eager" in ok and "k25ref-numba" in ok else "")
        lines.append(sep.join([name] + cells + [speed]))
    return lines


def text_table(report):
    out = [f"{'config':8} {'engine':16} {'prefill/s':>10} {'decode/s':>9} {'RSS MiB':>8} {'same':>6}  ratio"]
    out += [f"{r[0]:8} {r[1]:16} {r[2]:>10} {r[3]:>9} {r[4]:>8} {r[5]:>6}  {r[6]}"
            for r in table_rows(report["results"])]
    out += vision_lines(report)
    m = report["matvec"]
    out.append(f"INT4 matvec 2048x7168: warm {m['int4_warm_ms'][0]:.2f} ms vs numpy {m['numpy_warm_ms'][0]:.2f} ms "
               f"({m['speedup_warm'][0]:.2f}x); cold {m['int4_cold_ms'][0]:.2f} vs {m['numpy_cold_ms'][0]:.2f} ms "
               f"({m['speedup_cold'][0]:.2f}x); packed {m['int4_cold_GBps'][0]:.1f} GB/s of "
               f"{m['copy_GBps']:.1f} GB/s copy bandwidth (best of runs)")
    if "jit_first" in report:
        out.append(f"JIT first compile {sum(report['jit_first'].values()):.1f} s; first token on the embedded model "
                   f"{report['startup_cached_s']:.2f} s cached, {report['startup_uncached_s']:.2f} s uncached")
    return "\n".join(out)


def profile(name, workdir, n=16):
    """cProfile of the k25ref numba path decoding n tokens after the prompt; top functions by own time."""
    path = build(name, workdir)
    from k25ref.kernels import warmup
    warmup()
    prefill, decode = k25ref_engine(path, "numba")
    cache, token = prefill(prompt_ids(path))
    decode(cache, token)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        token = decode(cache, token)
    prof.disable()
    pstats.Stats(prof).sort_stats(os.environ.get("K25REF_PROFILE_SORT", "tottime")).print_stats(25)


def main():
    if "--long" in sys.argv[1:]:                       # prompt length sweeps: tools/bench_long.py
        import bench_long
        return bench_long.main([arg for arg in sys.argv[1:] if arg != "--long"])
    ap = ArgumentParser(prog="k25ref bench", description=__doc__.split("\n")[0],
                                 epilog="A progress bar on stderr counts the runs (on a terminal; -q hides it).")
    ap.add_argument("--configs", default="tiny,small", type=names_arg(SHAPES), help=f"comma-separated, of: {', '.join(SHAPES)} "
                                                            "(default: %(default)s)")
    ap.add_argument("--engines", default=",".join(ENGINES), type=names_arg(ENGINES), help=f"comma-separated, of: {', '.join(ENGINES)} "
                    "(default: all; the oracle ones need torch and transformers: pip install -e '.[oracle]')")
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "k25ref-bench"),
                    help="where the checkpoints are written once and reused (default: $TMPDIR/k25ref-bench)")
    ap.add_argument("--threads", type=positive_int, default=os.cpu_count(),
                    help="threads for numba, torch and BLAS (default: all cores)")
    ap.add_argument("--repeat", type=positive_int, default=2, help="runs per engine, round robin; the best is kept "
                                                          "(default: %(default)s)")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    ap.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    ap.add_argument("--markdown", action="store_true", help="docs/performance.md on stdout")
    ap.add_argument("--no-vision", action="store_true", help="skip the vision encode benchmark")
    ap.add_argument("--profile", metavar="CONFIG", choices=SHAPES, help="cProfile k25ref decoding on CONFIG and exit")
    ap.add_argument("--from-json", nargs="+", metavar="FILE", help="render saved --json reports instead of measuring")
    ap.add_argument("--startup", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        if a.worker[0] == "matvec":
            result = matvec_bench()
        elif a.worker[1] == "vision":
            result = vision_worker(a.worker[0], build_vision(a.workdir), a.threads)
        else:
            result = worker(a.worker[0], a.worker[1], a.threads)
        print(json.dumps(result))
        return
    if a.startup:
        startup_worker()
        return
    if a.profile:
        profile(a.profile, a.workdir)
        return
    if a.from_json:
        reports = []
        for name in a.from_json:
            with open(name) as f:
                reports.append(json.load(f))
        print(markdown(reports) if a.markdown else "\n\n".join(text_table(r) for r in reports))
        return
    engines = usable_engines(a.engines.split(","))
    if a.quiet:
        quiet()
    versions = {"numpy": np.__version__, "python": platform.python_version()}
    for mod in ("numba", "torch", "transformers"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "threads": a.threads,
              "versions": versions, "results": {}}
    report["repeat"] = a.repeat
    configs = a.configs.split(",")
    engines_v = [] if a.no_vision else usable_engines(VISION_ENGINES, say=False)
    steps = bar(total=len(configs) * (1 + len(engines) * a.repeat) + len(engines_v) * a.repeat + 3, unit="step",
                delay=0)

    def step(what, fn, *args):
        steps.set_description(what)
        result = fn(*args)
        steps.update()
        return result

    with steps:
        for name in configs:
            path = step(f"{name}: building", build, name, a.workdir)
            runs = [{e: step(f"{name}: {e}", run_worker, e, path, a.threads) for e in engines}
                    for _ in range(a.repeat)]                                                      # round robin
            report["results"][name] = {e: best_run([r[e] for r in runs]) for e in engines}
        if engines_v:
            build_vision(a.workdir)
            runs = [{e: step(f"vision: {e}", run_worker, e, "vision", a.threads, a.workdir) for e in engines_v}
                    for _ in range(a.repeat)]
            report["vision"] = {e: best_vision([r[e] for r in runs]) for e in engines_v}
        report["matvec"] = step("INT4 matvec", run_worker, "matvec", "-", a.threads)
        report["jit_first"], report["startup_uncached_s"] = step("first compile", first_compile_seconds, a.threads)
        report["startup_cached_s"] = step("cached start", startup_seconds, a.threads)
    if a.json:
        print(json.dumps(report, indent=2))
    elif a.markdown:
        print(markdown([report]), end="")
    else:
        print(text_table(report))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # tools/oracle.py
    main()
