"""Side-by-side speed of k25ref (NumPy reference, Numba kernels, the Python API's default), the transformers
oracle and llama.cpp, on the same weights, tokens and thread count.

    python tools/bench.py                          # every config, every engine installed, table on stdout
    python tools/bench.py --configs tiny,small --engines k25ref-numba,llama.cpp --threads 1
    python tools/bench.py --threads 1,2 --markdown > docs/performance.md
    python tools/bench.py --threads 1,2 --json > run.json; python tools/bench.py --from-json run.json --markdown
    python tools/bench.py --profile small --threads 1    # where one decode step's time goes, then exit
    python tools/bench.py --long                   # long prompts: speed and memory against length (bench_long.py)

What one run does, for each thread count of --threads:
1. Builds released-layout checkpoints (k25ref.make_tiny with edited hub configs, INT4 experts, text only)
   into --workdir, once; later runs reuse them. `tiny` and `small` are the shapes the kernels were tuned on;
   `h768-e48` and `h512-e32` are neighbours of the same class they were not tuned on (other widths, head
   counts, expert counts and widths, latent ranks), so a gain tuned to one shape shows as a loss on another.
   For llama.cpp the checkpoint is also exported once to GGUF (k25ref.gguf_export: experts repacked bit-exactly
   to Q4_0, everything else F32).
2. Runs every engine in its own subprocess (so peak RSS is that engine's own), --repeat times round robin:
   k25ref-numpy    model.forward(..., backend="numpy"): the plain NumPy reference
   k25ref-numba    model.forward(..., backend="numba"): the kernels
   k25ref-api      k25ref.load_model(p).generate(ids, n): the README's Python example, no backend argument,
                   so whatever the API gives by default (stop_ids=() so that all n tokens are made)
   oracle-eager, oracle-grouped   transformers (tools/oracle.py: float32, eager attention), experts "eager"
                   and "grouped_mm"; need torch and transformers (pip install -e '.[oracle]')
   llama.cpp       llama-cpp-python on the GGUF (pip install -e '.[peer]'): KV cache F32, logits of the last
                   token only, n_threads = n_threads_batch = the thread count, greedy argmax over its logits
   Each engine prefills the same 128 random tokens after one warm-up run of the same prompt, then decodes 64
   tokens greedily with its cache; prefill and decode are timed apart; greedy tokens are compared with the first
   engine's (`same`). Engines that are not installed are skipped with a one-line note.
3. Reports the median of the runs with their range (min-max) beside it, and the speed of k25ref-numba and
   k25ref-api over each transformers engine and llama.cpp (median of the per-round ratios, with their range).
4. Profiles one decode step of k25ref-numba on `small` (every Numba kernel launch timed, the rest split by
   cProfile), measures the INT4 matvec kernel against NumPy's GEMV and the memory bandwidth, the vision
   encoder, and the JIT's first-compile and start-up times.

Threads: numba, torch, llama.cpp and BLAS get the thread count, except that k25ref-numba keeps BLAS on one
thread (its spinning threads compete with numba's). torch, transformers and llama_cpp are imported by this
tool only, never by k25ref.
"""
import argparse
import contextlib
import cProfile
import json
import os
import platform
import pstats
import statistics
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from k25ref.options import ArgumentParser, lengths_arg, names_arg, positive_int  # noqa: E402
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
    # neighbours of tiny/small the kernels were not tuned on
    "h768-e48": dict(hidden_size=768, num_hidden_layers=6, n_routed_experts=48, num_experts_per_tok=6,
                     moe_intermediate_size=384, intermediate_size=2048, num_attention_heads=12, q_lora_rank=384,
                     kv_lora_rank=320, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_group=8,
                     topk_group=4, vocab_size=32768),
    "h512-e32": dict(hidden_size=512, num_hidden_layers=5, n_routed_experts=32, num_experts_per_tok=4,
                     moe_intermediate_size=320, intermediate_size=1408, num_attention_heads=8, q_lora_rank=256,
                     kv_lora_rank=192, qk_nope_head_dim=48, qk_rope_head_dim=16, v_head_dim=48, n_group=4,
                     topk_group=2, vocab_size=16384),
}
CONFIGS = "tiny,small,h768-e48,h512-e32"
ENGINES = ["k25ref-numpy", "k25ref-numba", "k25ref-api", "oracle-eager", "oracle-grouped", "llama.cpp"]
OURS = ["k25ref-numba", "k25ref-api"]                      # the engines whose speed over the others is reported
PEERS = ["oracle-eager", "oracle-grouped", "llama.cpp"]
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
    """Seconds to encode each vision input (tower + projector), median of n after `warmups` runs: the first runs
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
        out[name] = best_of(lambda: encode(pv, grid), n)[1]
    out["peak_rss"] = peak_rss()
    return out


def prompt_ids(path):
    """PREFILL seeded random ids of the base vocabulary (no special or media-placeholder ids)."""
    with open(os.path.join(path, "config.json")) as f:
        vocab = json.load(f)["text_config"]["vocab_size"]
    return np.random.default_rng(0).integers(0, vocab - 256, PREFILL)


def peak_rss():
    """This process's own peak resident set, bytes: VmHWM, which starts afresh at exec. (getrusage's ru_maxrss
    keeps the parent's peak across fork and exec, so a worker would report the bench's own peak as its.)"""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------
# engines (each runs in its own process: `--worker ENGINE PATH`)


def k25ref_engine(path, backend):
    """-> run(ids, n): a generator of n + 1 greedy tokens, the first after prefilling ids, one per forward after."""
    from k25ref.model import load_model
    model = load_model(path)

    def prefill(ids):
        cache = model.new_cache()
        return cache, int(np.argmax(model.forward(ids, cache, absorbed=True, last_only=True, backend=backend)[-1]))

    def decode(cache, token):
        logits = model.forward(np.array([token]), cache, absorbed=True, last_only=True, backend=backend)
        return int(np.argmax(logits[-1]))
    return stream(prefill, decode)


def api_engine(path):
    """The README's Python example: load_model(p).generate(ids, n) with no backend argument (stop_ids=() only so
    that a stop id drawn by random weights does not end the run early)."""
    import k25ref
    model = k25ref.load_model(path)
    return lambda ids, n: model.generate(ids, n + 1, stop_ids=())


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
    return stream(prefill, decode)


def gguf_path(path):
    """Where the GGUF of checkpoint folder `path` is kept: beside it."""
    return path.rstrip(os.sep) + ".q4_0.gguf"


def export(path):
    """The checkpoint as GGUF for llama.cpp (experts Q4_0, bit-exact; the rest F32), written once per checkpoint."""
    from k25ref.gguf_export import export_gguf
    out = gguf_path(path)
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(os.path.join(path, "config.json")):
        export_gguf(path, out, experts="q4_0", dense="f32", overwrite=True)
    return out


def llama_cpp_engine(gguf, threads):
    """llama.cpp on a GGUF: F32 KV cache, logits of each batch's last token only, greedy argmax."""
    import llama_cpp
    from k25ref.conform import open_llama
    llm = open_llama(gguf, PREFILL + DECODE + 8, threads, kv_cache="f32", logits_all=False)
    vocab = llm.n_vocab()

    def last_argmax():
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))))

    def prefill(ids):
        llm.reset()                                     # the next eval drops the cache from position 0
        llm.eval([int(i) for i in ids])
        return None, last_argmax()

    def decode(_, token):
        llm.eval([token])
        return last_argmax()
    return stream(prefill, decode)


def stream(prefill, decode):
    """(prefill, decode) -> run(ids, n): yields the token after the prompt, then n more, one decode step each."""
    def run(ids, n):
        cache, token = prefill(ids)
        yield token
        for _ in range(n):
            token = decode(cache, token)
            yield token
    return run


def engine(name, path, threads):
    """The run(ids, n) of engine `name` on checkpoint `path`."""
    if name.startswith("oracle"):
        import torch
        torch.set_num_threads(threads)
        return oracle_engine(path, {"oracle-eager": "eager", "oracle-grouped": "grouped_mm"}[name])
    if name == "llama.cpp":
        return llama_cpp_engine(gguf_path(path), threads)
    if name == "k25ref-api":
        return api_engine(path)
    return k25ref_engine(path, name.split("-")[1])


def startup_worker():
    """Generate from the embedded model through the kernels; print a line the moment the first token exists."""
    from k25ref.model import default_model_path
    from k25ref.kernels import warmup
    warmup()
    next(k25ref_engine(default_model_path(), "numba")(np.arange(16), 0))
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


def worker(name, path, threads):
    """Load, warm up on the same prompt (prefill and one decode step), then time the prefill of PREFILL tokens
    (to the first token) and DECODE greedy steps after it."""
    t0 = time.perf_counter()
    jit = {}
    if name == "k25ref-numba":
        from k25ref.kernels import warmup
        jit = warmup()
    run = engine(name, path, threads)
    load = time.perf_counter() - t0
    ids = prompt_ids(path)
    list(run(ids, 1))              # warm-up: k25ref reads weights on first use (the oracle at load), allocators
    t1 = time.perf_counter()
    tokens = run(ids, DECODE)
    first = next(tokens)
    t2 = time.perf_counter()
    tokens = [first, *tokens]
    t3 = time.perf_counter()
    out = {"engine": name, "prefill_tps": PREFILL / (t2 - t1), "decode_tps": DECODE / (t3 - t2),
           "peak_rss": peak_rss(), "load_s": load, "tokens": tokens}
    if jit:
        out["jit_s"] = jit
    return out


def worker_env(engine, threads, vision=False):
    """numba, OpenMP and BLAS threads for a worker. BLAS threads would compete with numba's in decoding (and
    stall); the vision path's kernels run on the calling thread between BLAS products (kernels/vision_block.py),
    so there BLAS gets the threads. k25ref-api gets what any user's process gets: BLAS on every thread."""
    blas = 1 if engine in ("k25ref-numba", "profile") and not vision else threads
    return dict(os.environ, NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                OPENBLAS_NUM_THREADS=str(blas), MKL_NUM_THREADS=str(blas))


def run_worker(engine, path, threads, workdir=None):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", engine, path, "--threads", str(threads)]
    if workdir:
        cmd += ["--workdir", workdir]
    res = subprocess.run(cmd, env=worker_env(engine, threads, path == "vision"), capture_output=True, text=True)
    if res.returncode != 0:
        return {"engine": engine, "error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def spread(values):
    """-> (median, min, max) of repeated measurements: the median is the figure, min-max the run-to-run spread."""
    return statistics.median(values), min(values), max(values)


def summarize(runs):
    """One engine's repeated runs -> its median prefill and decode speed with their range ([median, min, max]),
    every run's speeds (to pair rounds when taking ratios), the largest peak RSS, and the first run's tokens."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    for key in ("prefill_tps", "decode_tps"):
        out[key + "_runs"] = [r.get(key) for r in runs]                          # None where a run failed
        out[key] = list(spread([r[key] for r in ok]))
    out["peak_rss"] = max(r["peak_rss"] for r in ok)
    return out


def summarize_vision(runs):
    """Per input, the median seconds over repeated runs of one engine, with min and max ([median, min, max])."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    return {k: (list(spread([r[k] for r in ok])) if k not in ("engine", "peak_rss") else v) for k, v in ok[0].items()}


def paired_ratio(ours, theirs, key):
    """Speed of `ours` over `theirs` in each round-robin round -> [median, min, max], or None."""
    if not ours or not theirs or "error" in ours or "error" in theirs:
        return None
    pairs = [a / b for a, b in zip(ours[key + "_runs"], theirs[key + "_runs"]) if a and b]
    return list(spread(pairs)) if pairs else None


def usable_engines(asked, say=True):
    """The engines of `asked` this machine can run: the oracle ones need torch and transformers, llama.cpp needs
    llama-cpp-python (a one-line note on stderr says what is skipped; with nothing left to run, an error)."""
    missing = {"oracle": (not have("torch", "transformers"), "torch and transformers are not installed "
                                                              "(pip install -e '.[oracle]')"),
               "llama.cpp": (not have("llama_cpp"), "llama-cpp-python is not installed (pip install -e '.[peer]')")}
    left = list(asked)
    for prefix, (absent, why) in missing.items():
        skipped = [e for e in left if e.startswith(prefix)]
        if absent and skipped:
            left = [e for e in left if e not in skipped]
            if say:
                print(f"bench: skipping {', '.join(skipped)}: {why}", file=sys.stderr)
    if not left:
        print("bench: no engine left to run: install the extras named above or ask for the k25ref engines",
              file=sys.stderr)
        sys.exit(2)
    return left


def have(*modules):
    try:
        for m in modules:
            __import__(m)
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
# one decode step, taken apart


@contextlib.contextmanager
def time_kernels():
    """Time every launch of a Numba kernel from Python, by kernel and the model function that asked for it (the
    first caller outside k25ref/kernels and numba), by wrapping numba's Dispatcher.__call__ (a kernel called from
    inside another kernel is compiled in, not launched, and is not counted; numba's typed-List helpers are
    launches too). Yields ({(kernel, caller): [calls, seconds]}, the wrapper); numba's own call is put back on
    exit."""
    import k25ref.kernels
    import numba
    from numba.core.dispatcher import Dispatcher
    inside = (os.path.dirname(k25ref.kernels.__file__), os.path.dirname(numba.__file__))
    launch, clock, callers = Dispatcher.__call__, {}, {}

    def timed(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return launch(self, *args, **kwargs)
        finally:
            seconds, frame = time.perf_counter() - t, sys._getframe(1)
            while frame.f_back and frame.f_code.co_filename.startswith(inside):
                frame = frame.f_back
            if frame.f_code not in callers:
                code = frame.f_code
                callers[code] = f"{os.path.splitext(os.path.basename(code.co_filename))[0]}.{code.co_name}"
            kernel = f"{self.py_func.__module__.rsplit('.', 1)[-1]}.{self.py_func.__name__}"
            entry = clock.setdefault((kernel, callers[frame.f_code]), [0, 0.0])
            entry[0] += 1
            entry[1] += seconds
    Dispatcher.__call__ = timed
    try:
        yield clock, timed
    finally:
        Dispatcher.__call__ = launch


def own_time_label(key):
    """A cProfile entry (file, line, function) -> where its own time is grouped: the k25ref module, the library
    package, or C builtins (NumPy's methods among them) and the standard library."""
    filename = key[0]
    if filename == "~":
        return "C builtins and NumPy methods"
    parts = os.path.normpath(filename).split(os.sep)
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if len(parts) > 1 and parts[-2] in ("k25ref", "kernels", "swarm"):
        return "/".join(parts[parts.index("k25ref"):])
    return "tools/bench.py" if filename == os.path.abspath(__file__) else "Python standard library"


def below(stats, root):
    """The cProfile entries called, at any depth, from the entry `root` (with it)."""
    children = {}
    for key, (*_, callers) in stats.items():
        for caller in callers:
            children.setdefault(caller, []).append(key)
    seen, todo = set(), [root]
    while todo:
        key = todo.pop()
        if key not in seen:
            seen.add(key)
            todo += children.get(key, [])
    return seen


def profile_step(path, steps=16, top=12):
    """One decode step of k25ref-numba after the PREFILL-token prompt, taken apart. Pass 1 (timers only): the
    mean step time and, per kernel and calling function, launches and seconds per step; what is left is the
    Python and NumPy work between the kernels. Pass 2 (cProfile on, same timers): how that remainder divides
    among modules by their functions' own time, as shares (cProfile's per-call cost weighs code with many calls
    up, so shares, not its milliseconds); everything under the timing wrapper (the kernels, as numba reports them
    to cProfile, and numba's dispatch) is already in the kernel rows and left out. Kernel rows plus the
    remainder make the step time."""
    from k25ref.kernels import warmup
    warmup()
    tokens = k25ref_engine(path, "numba")(prompt_ids(path), 2 * steps + 1)
    next(tokens), next(tokens)                                         # prefill, one warm decode step
    with time_kernels() as (clock, timed):
        t = time.perf_counter()
        for _ in range(steps):
            next(tokens)
        step = (time.perf_counter() - t) / steps
        kernels = sorted(([k, c, n / steps, 1e3 * s / steps] for (k, c), (n, s) in clock.items()),
                         key=lambda r: -r[3])
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(steps):
            next(tokens)
        prof.disable()
    stats = pstats.Stats(prof).stats
    wrapper = [k for k in stats if k[0] == timed.__code__.co_filename and k[1] == timed.__code__.co_firstlineno]
    skip, own = (below(stats, wrapper[0]) if wrapper else set()), {}     # no launches without the JIT
    for key, (_, _, tottime, _, _) in stats.items():
        if key not in skip:
            own[own_time_label(key)] = own.get(own_time_label(key), 0.0) + tottime
    total = sum(own.values()) or 1.0
    between = sorted(([k, v / total] for k, v in own.items()), key=lambda r: -r[1])
    between = between[:top] + ([["everything else", sum(v for _, v in between[top:])]] if between[top:] else [])
    return {"config": os.path.basename(path), "steps": steps, "step_ms": 1e3 * step, "kernels": kernels,
            "between_ms": 1e3 * step - sum(r[3] for r in kernels), "between": between}


def profile_lines(p, md=False):
    """The step profile as a table: one row per kernel and calling function, then the work between kernels and
    its split (markdown table with md, else aligned text)."""
    rows = [[f"kernel `{k}` from `{c}`" if md else f"{k} <- {c}", f"{n:g}", f"{ms:.2f}", f"{ms / p['step_ms']:.0%}"]
            for k, c, n, ms in p["kernels"]]
    rows.append(["Python and NumPy between the kernels", "", f"{p['between_ms']:.2f}",
                 f"{p['between_ms'] / p['step_ms']:.0%}"])
    rows += [[f"&nbsp;&nbsp;of which {name}" if md else f"  of which {name}", "",
              f"~{share * p['between_ms']:.2f}", f"{share:.0%} of it"] for name, share in p["between"]]
    rows.append(["**one decode step**" if md else "one decode step", "", f"{p['step_ms']:.2f}", "100%"])
    if md:
        return ["| part | launches per step | ms per step | share |", "|---|---:|---:|---:|"] + \
            ["| " + " | ".join(r) + " |" for r in rows]
    return [f"{'part':64} {'launches':>8} {'ms/step':>8} {'share':>10}"] + \
        [f"{r[0][:64]:64} {r[1]:>8} {r[2]:>8} {r[3]:>10}" for r in rows]


# ----------------------------------------------------------------------------
# report


def figure(m, fmt="{:.1f}"):
    """[median, min, max] -> "median (min–max)"."""
    return f"{fmt.format(m[0])} ({fmt.format(m[1])}–{fmt.format(m[2])})"


def table_rows(results):
    """[config, engine, prefill, decode, peak RSS, same] per engine, figures as median (min–max)."""
    rows = []
    for name, engines in results.items():
        first = next((e["tokens"] for e in engines.values() if "tokens" in e), None)
        for engine, e in engines.items():
            if "error" in e:
                rows.append([name, engine, "error: " + e["error"][:60], "", "", ""])
                continue
            same = sum(a == b for a, b in zip(e["tokens"], first))
            rss = f"{e['peak_rss'] / 2**20:.0f}" if e.get("peak_rss") else "–"          # not measured
            rows.append([name, engine, figure(e["prefill_tps"]), figure(e["decode_tps"]), rss, f"{same}/{len(first)}"])
    return rows


def ratio_rows(results):
    """[config, engine, then prefill and decode speed-ups over each peer present] for k25ref-numba and
    k25ref-api; each cell the median of the per-round ratios (min–max)."""
    peers = [p for p in PEERS if any(p in engines for engines in results.values())]
    rows = []
    for name, engines in results.items():
        for ours in (e for e in OURS if e in engines):
            cells = []
            for peer in peers:
                for key in ("prefill_tps", "decode_tps"):
                    r = paired_ratio(engines[ours], engines.get(peer), key)
                    cells.append(f"{r[0]:.2f}x ({r[1]:.2f}–{r[2]:.2f})" if r else "–")
            rows.append([name, ours] + cells)
    return peers, rows


def markdown(reports):
    """docs/performance.md from one or more reports (e.g. one per thread count)."""
    lines = ["# Performance", "",
             "Written by `python tools/bench.py --threads 1,2 --markdown > docs/performance.md`, or from saved runs "
             "with `--json` and `--from-json A.json [B.json] --markdown` (do not edit by hand). Every section names "
             "the command that measures it alone.", "",
             "Reading these numbers: every engine computes from the same released-layout checkpoint (INT4 experts) "
             "and the same prompt tokens. k25ref and transformers compute in float32; transformers holds its "
             "experts dequantized to float32 (hence its RSS), k25ref keeps them packed. llama.cpp runs k25ref's own "
             "GGUF export (`k25ref export-gguf`): experts repacked bit-exactly to Q4_0, everything else F32, "
             "KV cache F32 (`type_k = type_v = f32`), flash attention off (llama-cpp-python's default), logits of "
             "the last token only; its Q4_0 products round the activations to 8 bits (Q8_0), so its greedy tokens "
             "may part from the others' (`same`) without any engine being wrong. Figures are medians of the "
             "round-robin runs with their range (min–max) in brackets; a ratio is the median of the per-round "
             "ratios, with their range. On a shared machine a parallel region waits for its slowest thread, so "
             "multi-thread runs measure the machine's load as much as the code (torch, OpenBLAS, llama.cpp and "
             "numba spin-wait differently); the one-thread table is the comparable one. The load average printed "
             "with each section says how busy the machine was. Method and kernels: docs/kernels.md.", ""]
    for report in reports:
        lines += markdown_section(report)
    return "\n".join(lines) + "\n"


def markdown_section(report):
    m, t = report["matvec"], report["threads"]
    lines = [f"## {t} thread{'s' if t > 1 else ''}", "", f"Measured by `{report['command']}`.", "",
             f"Machine: {report['machine']}; {t} thread{'s' if t > 1 else ''}; "
             + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
             + (f"; load average (1 min) {report['load'][0]:.2f} at the start, {report['load'][1]:.2f} at the end"
                + (" (above this run's own threads: the machine was shared with other work)"
                   if max(report["load"]) > t + 1 else "") if report.get("load") else "") + ".", "",
             f"Prefill: {PREFILL} tokens from an empty KV cache to the first token, after a warm-up run of the same "
             "prompt (k25ref reads weights on first use, the others at load; timing starts with all holding them). "
             f"Decode: {DECODE} greedy tokens after that prompt, one token per step with the cache. Same checkpoint "
             "and tokens for every engine; each engine in its own process (peak RSS is its own), "
             f"{report.get('repeat', 1)} round-robin runs. `same` counts greedy tokens equal to the first engine's; "
             "`–`: not measured.",
             "", "| config | engine | prefill tok/s | decode tok/s | peak RSS MiB | same |", "|---|---|---:|---:|---:|---:|"]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(report["results"])]
    peers, rows = ratio_rows(report["results"])
    if peers and rows:
        lines += ["", "### Speed of k25ref over the others", "",
                  "k25ref-numba: the kernels, as the CLI runs them; k25ref-api: `k25ref.load_model(p).generate(ids, "
                  "n)` with no backend argument, what the Python API gives by default.", "",
                  "| config | engine | " + " | ".join(f"over {p} {k}" for p in peers for k in ("prefill", "decode"))
                  + " |", "|---|---|" + "---:|" * 2 * len(peers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    if report.get("profile"):
        p = report["profile"]
        lines += ["", f"### One decode step of k25ref-numba on `{p['config']}`, taken apart", "",
                  f"Measured by `{p['command']}`: the mean of {p['steps']} decode steps after the {PREFILL}-token "
                  "prompt, every kernel launch timed (by kernel and the function that launched it); the rest is "
                  "Python and NumPy between the kernels, split by cProfile's own time per function (shares of the "
                  "remainder, so the ms of those rows are estimates).", ""]
        lines += profile_lines(p, md=True)
    if report.get("vision"):
        lines += ["", "### Vision encode (tower + projector), small vision config", "",
                  f"Measured by `{report['command']}` (without `--no-vision`). MoonViT at a third of K2.5's width: "
                  f"{VISION['vt_num_hidden_layers']} blocks of width {VISION['vt_hidden_size']}, "
                  f"{VISION['vt_num_attention_heads']} heads, 64 x 64 position table. Seconds, median (min–max) of "
                  "the runs, each the median of 4 after two warm-up runs; ratio = oracle / k25ref-numba (the path "
                  "`generate` takes with its default backend). Both k25ref paths leave the products to BLAS; "
                  "k25ref-numba runs the passes between them as one-pass kernels (LayerNorm, GELU, RoPE, softmax).",
                  "",
                  "| input | " + " | ".join(report["vision"]) + " | k25ref/oracle speed |",
                  "|---|" + "---:|" * (len(report["vision"]) + 1)]
        lines += ["| " + line + " |" for line in vision_lines(report, sep=" | ")]
    lines += ["", "### INT4 matvec (2048 x 7168, one expert matrix)", "",
              f"Measured by `{report['command']}`. Memory bandwidth (NumPy copy of 256 MiB, read + write bytes): "
              f"{m['copy_GBps']:.1f} GB/s.", "",
              "| | INT4 kernel ms | NumPy float32 GEMV ms | speed-up | INT4 packed GB/s | fraction of copy bandwidth |",
              "|---|---:|---:|---:|---:|---:|"]
    for mode in ("warm", "cold"):
        for j, stat in enumerate(("best", "median")):
            lines.append(f"| {mode}, {stat} | {m[f'int4_{mode}_ms'][j]:.2f} | {m[f'numpy_{mode}_ms'][j]:.2f} | "
                         f"{m[f'speedup_{mode}'][j]:.2f}x | {m[f'int4_{mode}_GBps'][j]:.1f} | "
                         f"{m[f'int4_{mode}_GBps'][j] / m['copy_GBps']:.2f} |")
    lines += ["", "warm: the same matrix every call (it may sit in the last-level cache); cold: 8 different matrices "
              "in turn, as decoding meets experts.", "", "### JIT", "", f"Measured by `{report['command']}`.", ""]
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
    """One line per vision input: seconds per engine, and the oracle's time over k25ref's numba path (medians)."""
    v = report.get("vision") or {}
    ok = {e: r for e, r in v.items() if "error" not in r}
    if not ok:
        return [f"vision: {e} error {r['error'][:60]}" for e, r in v.items()]
    names = [k for k in next(iter(ok.values())) if k not in ("engine", "peak_rss")]
    lines = []
    for name in names:
        cells = [figure(v[e][name], "{:.3f}") + " s" if e in ok else "error" for e in v]
        speed = (f"{ok['oracle-eager'][name][0] / ok['k25ref-numba'][name][0]:.2f}x"
                 if "oracle-eager" in ok and "k25ref-numba" in ok else "")
        lines.append(sep.join([name] + cells + [speed]))
    return lines


def text_table(report):
    out = [f"{report['threads']} thread(s): {report['command']}",
           f"{'config':9} {'engine':15} {'prefill tok/s (min-max)':>26} {'decode tok/s (min-max)':>24} "
           f"{'RSS MiB':>8} {'same':>6}"]
    out += [f"{r[0]:9} {r[1]:15} {r[2]:>26} {r[3]:>24} {r[4]:>8} {r[5]:>6}" for r in table_rows(report["results"])]
    peers, rows = ratio_rows(report["results"])
    if peers and rows:
        out.append("speed over " + ", ".join(peers) + " (prefill, decode each; median of rounds (min-max)):")
        out += ["  " + f"{r[0]:9} {r[1]:13} " + "  ".join(r[2:]) for r in rows]
    if report.get("profile"):
        out += [f"one decode step of k25ref-numba on {report['profile']['config']}:"] + profile_lines(report["profile"])
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


def command(a, threads):
    """The command line that measures one thread count's report alone."""
    cmd = f"python tools/bench.py --threads {threads} --configs {a.configs} --engines {a.engines} --repeat {a.repeat}"
    return cmd + (" --no-vision" if a.no_vision else "")


def measure(a, threads, engines):
    """One report: every config and engine at `threads` threads, round robin, then the step profile, vision,
    INT4 matvec and JIT figures."""
    versions = {"numpy": np.__version__, "python": platform.python_version()}
    for mod in ("numba", "torch", "transformers", "llama_cpp"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "threads": threads, "versions": versions,
              "results": {}, "repeat": a.repeat, "command": command(a, threads), "load": [os.getloadavg()[0]]}
    configs = a.configs.split(",")
    engines_v = [] if a.no_vision else usable_engines(VISION_ENGINES, say=False)
    steps = bar(total=len(configs) * (1 + len(engines) * a.repeat) + len(engines_v) * a.repeat + 4, unit="step",
                delay=0)

    def step(what, fn, *args):
        steps.set_description(f"{threads} thread(s): {what}")
        result = fn(*args)
        steps.update()
        return result

    with steps:
        for name in configs:
            path = step(f"{name}: building", build, name, a.workdir)
            if "llama.cpp" in engines:
                export(path)
            runs = [{e: step(f"{name}: {e}", run_worker, e, path, threads) for e in engines}
                    for _ in range(a.repeat)]                                                      # round robin
            report["results"][name] = {e: summarize([r[e] for r in runs]) for e in engines}
        profiled = "small" if "small" in configs else configs[0]
        report["profile"] = step(f"{profiled}: profile", run_worker, "profile", build(profiled, a.workdir), threads)
        if "error" in report["profile"]:
            report.pop("profile")
        else:
            report["profile"]["command"] = f"python tools/bench.py --profile {profiled} --threads {threads}"
        if engines_v:
            build_vision(a.workdir)
            runs = [{e: step(f"vision: {e}", run_worker, e, "vision", threads, a.workdir) for e in engines_v}
                    for _ in range(a.repeat)]
            report["vision"] = {e: summarize_vision([r[e] for r in runs]) for e in engines_v}
        report["matvec"] = step("INT4 matvec", run_worker, "matvec", "-", threads)
        report["jit_first"], report["startup_uncached_s"] = step("first compile", first_compile_seconds, threads)
        report["startup_cached_s"] = step("cached start", startup_seconds, threads)
    report["load"].append(os.getloadavg()[0])
    return report


def main():
    if "--long" in sys.argv[1:]:                       # prompt length sweeps: tools/bench_long.py
        import bench_long
        return bench_long.main([arg for arg in sys.argv[1:] if arg != "--long"])
    ap = ArgumentParser(prog="k25ref bench", description=__doc__.split("\n\n")[0].replace("\n", " "),
                        epilog="Configs: tiny and small (the shapes the kernels were tuned on), h768-e48 and "
                               "h512-e32 (neighbours they were not). A progress bar on stderr counts the runs (on a "
                               "terminal; -q hides it). The full story: the top of tools/bench.py and "
                               "docs/performance.md.")
    ap.add_argument("--configs", default=CONFIGS, type=names_arg(SHAPES),
                    help=f"comma-separated, of: {', '.join(SHAPES)} (default: %(default)s)")
    ap.add_argument("--engines", default=",".join(ENGINES), type=names_arg(ENGINES),
                    help=f"comma-separated, of: {', '.join(ENGINES)} (default: all; the oracle ones need torch and "
                         "transformers: pip install -e '.[oracle]'; llama.cpp needs llama-cpp-python: "
                         "pip install -e '.[peer]'; those missing are skipped with a note)")
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "k25ref-bench"),
                    help="where the checkpoints (and their GGUF) are written once and reused "
                         "(default: $TMPDIR/k25ref-bench)")
    ap.add_argument("--threads", type=lengths_arg, default=str(os.cpu_count()),
                    help="threads for numba, torch, llama.cpp and BLAS; comma-separated to measure several in turn, "
                         "e.g. 1,2 (default: all cores)")
    ap.add_argument("--repeat", type=positive_int, default=3,
                    help="runs per engine, round robin; medians are reported with the min-max range "
                         "(default: %(default)s)")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    ap.add_argument("--json", action="store_true", help="machine-readable report on stdout (a list, one per thread "
                                                        "count)")
    ap.add_argument("--markdown", action="store_true", help="docs/performance.md on stdout")
    ap.add_argument("--no-vision", action="store_true", help="skip the vision encode benchmark")
    ap.add_argument("--profile", metavar="CONFIG", choices=SHAPES,
                    help="take one decode step of k25ref-numba on CONFIG apart (per kernel, and the Python between "
                         "them) at the first --threads count, print the table and exit")
    ap.add_argument("--from-json", nargs="+", metavar="FILE", help="render saved --json reports instead of measuring")
    ap.add_argument("--startup", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    if a.worker:
        if a.worker[0] == "matvec":
            result = matvec_bench()
        elif a.worker[0] == "profile":
            result = profile_step(a.worker[1])
        elif a.worker[1] == "vision":
            result = vision_worker(a.worker[0], build_vision(a.workdir), threads[0])
        else:
            result = worker(a.worker[0], a.worker[1], threads[0])
        print(json.dumps(result))
        return
    if a.startup:
        startup_worker()
        return
    if a.profile:
        p = run_worker("profile", build(a.profile, a.workdir), threads[0])
        if "error" in p:
            ap.exit(1, f"k25ref: error: profile: {p['error']}\n")
        print(f"one decode step of k25ref-numba on {a.profile}, {threads[0]} thread(s), mean of {p['steps']} steps:")
        print("\n".join(profile_lines(p)))
        return
    if a.from_json:
        reports = []
        for name in a.from_json:
            with open(name) as f:
                data = json.load(f)
            reports += data if isinstance(data, list) else [data]
        print(markdown(reports) if a.markdown else "\n\n".join(text_table(r) for r in reports))
        return
    engines = usable_engines(a.engines.split(","))
    if a.quiet:
        quiet()
    reports = [measure(a, t, engines) for t in threads]
    if a.json:
        print(json.dumps(reports, indent=2))
    elif a.markdown:
        print(markdown(reports), end="")
    else:
        print("\n\n".join(text_table(r) for r in reports))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))   # tools/oracle.py
    main()
