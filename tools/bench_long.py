"""Long prompts: prefill and decode speed and peak RSS against prompt length (`python tools/bench.py --long`).

    python tools/bench.py --long                                     # k25-context, 1K/4K/16K/32K, both paths
    python tools/bench.py --long --checkpoints full-width --lengths 8192 --budget 4GiB
    python tools/bench.py --long --lengths 1024 --engines numba,numba-oneshot     # chunking vs one shot
    python tools/bench.py --long --checkpoints k25-heads --lengths 16384 --engines numba,numba-oneshot --threads 1
    python tools/bench.py --long --json > long.json      # then, for docs/long-context.md:
    python tools/bench.py --long --from-json long.json full.json --plot docs/figures/long_context_bench.png
    python tools/bench.py --long --engines numba --threads 1 --json > numba.json    # the numba path alone:
    python tools/bench.py --long --from-json numba.json --plot docs/figures/long_context_numba.png

What one run does:
1. Builds the checkpoints once into --workdir: `k25-context` (the make-tiny preset: K2.5's RoPE/YaRN, 262144
   positions, small width, 16 heads), `k25-heads` (the same with K2.5's 64 heads and one layer) and
   `full-width` (k25ref.make_tiny.make_full_width with one layer: K2.5's real shapes, 64 heads, Ckv 512,
   vocab 163840).
2. Measures, at each length S, in one worker process one after the other: this machine's float32 GEMM rate
   (NumPy, 2048^3, best of 5) and the blocked attention's rate: one chunk of 512 queries against S cached
   latents (absorbed: the numba path's attend_latent) in useful FLOPs (visible query-key pairs only), best
   of 3; prints both and their ratio.
3. For each checkpoint, engine and length, a worker process (so peak RSS is that run's own) generates from
   a random prompt of that length with `Model.generate` (absorbed attention, as the CLI does): prefill
   tokens/s (prompt to first token), decode tokens/s over 8 more tokens at that context, peak RSS, and the
   budget estimate of weights.context_bytes + working_set. Engines: `numpy` (the reference) and `numba`
   (kernels), chunked as shipped; `numpy-oneshot` and `numba-oneshot` run the same code the way it ran before
   chunking (whole prompt at once; one-shot attention: einsum over (H, T, S), or mla_decode's kernel at
   every size).
Threads: --threads for numba; BLAS gets one (see run_worker). The machine may be shared: ratios are only
meaningful within one run.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from k25ref.options import ArgumentParser, lengths_arg, names_arg, positive_int, size_arg  # noqa: E402
from bench import peak_rss  # noqa: E402   (the worker's own peak: VmHWM)

DECODE, CHUNK = 8, 512
ENGINES = ["numpy", "numba", "numpy-oneshot", "numba-oneshot"]
CHECKPOINTS = ["k25-context", "k25-heads", "full-width"]


def build(name, workdir):
    """The checkpoint folder of `name`, written once."""
    from k25ref.make_tiny import make_full_width, make_tiny, preset
    out = os.path.join(workdir, name)
    if not os.path.exists(os.path.join(out, "config.json")):
        if name == "full-width":
            make_full_width(out, layers=1, progress=True)
        elif name == "k25-heads":                 # K2.5's 64 heads at the k25-context width, one layer
            hub = preset("k25-context")
            hub["text_config"].update(num_attention_heads=64, num_key_value_heads=64, num_hidden_layers=1)
            make_tiny(out, config=hub, seed=0, shards=2, tokenizer=False)
        else:
            make_tiny(out, name, seed=0, shards=2, tokenizer=False)
    return out


def worker(engine, path, length, budget):
    """Generate DECODE + 1 tokens after a random prompt of `length` tokens -> figures (one process per call)."""
    from k25ref import engine as engines
    from k25ref.kernels import mla_blocked, warmup
    from k25ref.model import load_model
    from k25ref.weights import context_bytes
    backend, oneshot = engine.split("-")[0], engine.endswith("oneshot")
    if oneshot:                               # before chunking: one pass, attention over the whole (H, T, S)
        mla_blocked.DECODE_ROWS = mla_blocked.DECODE_WORK = 1 << 62
    if backend == "numba":
        warmup()
    model = load_model(path, memory_budget=budget)
    ids = np.random.default_rng(0).integers(0, model.cfg.text.vocab_size - 256, length)
    t0 = time.perf_counter()
    ops = engines.one_shot() if oneshot and backend == "numpy" else engines.ops(backend)
    tokens = model.generate(ids, DECODE + 1, backend=ops, stop_ids=(), prefill_chunk=None if oneshot else CHUNK)
    next(tokens)
    t1 = time.perf_counter()
    for _ in range(DECODE):
        next(tokens)
    t2 = time.perf_counter()
    cache, activations = context_bytes(model.cfg, length + DECODE + 1, None if oneshot else CHUNK)
    return {"engine": engine, "length": length, "prefill_s": t1 - t0, "prefill_tps": length / (t1 - t0),
            "decode_tps": DECODE / (t2 - t1), "peak_rss": peak_rss(),
            "estimate": cache + activations + model.working_set}


def run_worker(engine, path, length, budget, threads):
    """One worker process, BLAS on one thread (as tools/bench.py does for k25ref-numba): OpenBLAS's threads and
    numba's spin after their parallel regions and on a shared two-core machine stall each other (blocked
    attention at 1K tokens took 6x as long with two BLAS threads, a decoding step's (16, 128) @ (128, 512)
    product 400x)."""
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, path, str(length), str(budget or 0)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"
        return {"engine": engine, "length": length, "error": last}
    return json.loads(res.stdout.strip().splitlines()[-1])


def gemm_rate(n=2048, repeat=5):  # -> float32 FLOP/s of NumPy's (BLAS) n x n x n product, best of `repeat`
    a, b = (np.random.default_rng(0).standard_normal((n, n), dtype=np.float32) for _ in range(2))
    best = min(_seconds(lambda: a @ b) for _ in range(repeat))
    return 2 * n ** 3 / best


def _seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def attention_rate(cfg, S, C=CHUNK, repeat=3):  # -> useful FLOP/s of blocked absorbed attention, C queries, S keys
    """The last prefill chunk of an S-token prompt: C queries against S latents. Useful FLOPs: per visible
    (query, key, head) 2 (Ckv + Dr) for the score and 2 Ckv for the weighted sum, + the absorptions."""
    from k25ref.kernels.mla_blocked import attend
    from k25ref.mla import MLAWeights
    t = cfg.text
    H, Dn, Dr, Dv, Ckv = t.num_attention_heads, t.qk_nope_head_dim, t.qk_rope_head_dim, t.v_head_dim, t.kv_lora_rank
    C = min(C, S)
    r = np.random.default_rng(0)
    f = lambda *shape: r.standard_normal(shape, dtype=np.float32)                  # noqa: E731
    w = MLAWeights(None, None, f(H * (Dn + Dv), Ckv) / np.float32(np.sqrt(Ckv)), None)
    args = (f(C, H, Dn), f(C, H, Dr), f(S, Ckv), f(S, Dr), w, t, 0.1, True)
    attend(*args)
    best = min(_seconds(lambda: attend(*args)) for _ in range(repeat))
    pairs = C * (S - C) + C * (C + 1) // 2
    return (pairs * H * (4 * Ckv + 2 * Dr) + 2 * C * H * Ckv * (Dn + Dv)) / best


def human(n):
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def table(report):
    lines = [f"float32 GEMM (NumPy/BLAS, 2048^3, one BLAS thread): best {report['gemm'] / 1e9:.1f} GFLOP/s; "
             f"threads {report['threads']}"]
    for name, ck in report["checkpoints"].items():
        lines += ["", f"{name}: {ck['describe']}",
                  "  blocked attention (512 queries against S latents, absorbed, attend_latent):"]
        lines += [f"    S={int(s):>6}: {r['attention'] / 1e9:5.1f} GFLOP/s, {r['attention'] / r['gemm']:.0%} of the "
                  f"GEMM rate measured beside it ({r['gemm'] / 1e9:.1f} GFLOP/s)" for s, r in ck["attention"].items()]
        lines.append(f"  {'engine':<14}{'tokens':>7}{'prefill tok/s':>15}{'prefill s':>11}{'decode tok/s':>14}"
                     f"{'peak RSS':>11}{'estimate':>11}")
        for r in ck["runs"]:
            if "error" in r:
                lines.append(f"  {r['engine']:<14}{r['length']:>7}  failed: {r['error']}")
                continue
            lines.append(f"  {r['engine']:<14}{r['length']:>7}{r['prefill_tps']:>15.1f}{r['prefill_s']:>11.1f}"
                         f"{r['decode_tps']:>14.2f}{human(r['peak_rss']):>11}{human(r['estimate']):>11}")
    return "\n".join(lines)


def plot(report, path):
    """Log-log: prefill seconds and peak RSS against prompt length, per checkpoint and engine, with T and T^2
    guide lines through the first point of the numba runs."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, ck in report["checkpoints"].items():
        for engine in dict.fromkeys(r["engine"] for r in ck["runs"]):
            rows = sorted((r["length"], r["prefill_s"], r["peak_rss"]) for r in ck["runs"]
                          if r["engine"] == engine and "error" not in r)
            if rows:
                T, s, m = (np.array(c, float) for c in zip(*rows))
                ax_t.loglog(T, s, "o-", label=f"{name} {engine}")
                ax_m.loglog(T, m / 2**30, "o-", label=f"{name} {engine}")
    T = np.array(sorted({r["length"] for ck in report["checkpoints"].values() for r in ck["runs"]}), float)
    if T.size > 1:
        y0 = min(r["prefill_s"] for ck in report["checkpoints"].values() for r in ck["runs"] if "error" not in r)
        ax_t.loglog(T, y0 * T / T[0], "k:", label="∝ T (linear parts)")
        ax_t.loglog(T, y0 * (T / T[0]) ** 2, "k--", label="∝ T² (attention)")
    ax_t.set(xlabel="prompt tokens", ylabel="prefill seconds", title="time")
    ax_m.set(xlabel="prompt tokens", ylabel="peak RSS (GiB)", title="memory")
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def describe(path):
    from k25ref.config import load_config
    t = load_config(path).text
    return (f"{t.num_hidden_layers} layer(s), D={t.hidden_size}, H={t.num_attention_heads}, Ckv={t.kv_lora_rank}, "
            f"Dr={t.qk_rope_head_dim}, {t.max_position_embeddings} positions")


def read_report(ap, name):
    """A saved --json report, or a one-line usage error naming what is wrong with it."""
    try:
        with open(name) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        ap.error(f"--from-json {name}: {getattr(e, 'strerror', None) or e}")
    if not (isinstance(saved, dict) and {"threads", "gemm", "checkpoints"} <= saved.keys()):
        ap.error(f"--from-json {name}: not a report of `bench.py --long --json` (threads, gemm, checkpoints)")
    return saved


def main(argv=None):
    ap = ArgumentParser(prog="k25ref bench --long", description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoints", default="k25-context", type=names_arg(CHECKPOINTS), help=f"comma-separated, of: {', '.join(CHECKPOINTS)}")
    ap.add_argument("--lengths", default="1024,4096,16384,32768", type=lengths_arg, help="prompt lengths, comma-separated")
    ap.add_argument("--engines", default="numpy,numba", type=names_arg(ENGINES), help=f"comma-separated, of: {', '.join(ENGINES)}")
    ap.add_argument("--budget", default=None, type=size_arg, help="memory_budget for the workers, e.g. 4GiB (default: none)")
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "k25ref-bench"))
    ap.add_argument("--threads", type=positive_int, default=os.cpu_count())
    ap.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    ap.add_argument("--plot", metavar="PNG", help="also save the log-log plot of time and memory here")
    ap.add_argument("--from-json", nargs="+", metavar="FILE", help="render saved --json reports (their checkpoints "
                                                                     "merged) instead of measuring")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        engine, path, length, budget = a.worker
        if engine == "rates":
            from k25ref.config import load_config
            from k25ref.kernels import warmup
            warmup()
            result = {"gemm": gemm_rate(), "attention": attention_rate(load_config(path), int(length))}
        else:
            result = worker(engine, path, int(length), int(budget) or None)
        print(json.dumps(result))
        return
    if a.from_json:
        report = {"checkpoints": {}, "gemm": 0.0}
        for name in a.from_json:
            saved = read_report(ap, name)
            report.update(threads=saved["threads"], gemm=max(report["gemm"], saved["gemm"]))
            report["checkpoints"].update(saved["checkpoints"])
    else:
        budget = a.budget
        lengths = [int(n) for n in a.lengths.split(",")]
        report = {"threads": a.threads, "budget": budget, "gemm": 0.0, "checkpoints": {}}
        for name in a.checkpoints.split(","):
            path = build(name, a.workdir)
            ck = report["checkpoints"][name] = {"describe": describe(path), "runs": [], "attention": {}}
            for length in lengths:
                rates = run_worker("rates", path, length, None, a.threads)
                if "error" in rates:
                    ap.error(f"measuring the GEMM and attention rates at {length} tokens failed: {rates['error']}")
                report["gemm"] = max(report["gemm"], rates["gemm"])
                ck["attention"][str(length)] = rates
                for engine in a.engines.split(","):
                    ck["runs"].append(run_worker(engine, path, length, budget, a.threads))
                    print(f"[{name} {engine} {length} done]", file=sys.stderr)
    if a.plot:
        plot(report, a.plot)
    print(json.dumps(report, indent=2) if a.json else table(report))


if __name__ == "__main__":
    main()
