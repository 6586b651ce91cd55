"""Conformance as a tool: run another runtime on a checkpoint's test inputs and measure it against k25ref.

k25ref is the reference (itself held to transformers at 1e-5 by the goldens). For every input length the
runtime's outputs are compared with k25ref's on the same ids, positions 0..T-1, no cache:

    logits         rel = max|out - ref| / max|ref|, the smallest per-position cosine, argmax agreement
    intermediates  (where the runtime exposes them) in forward order: embed, then per layer attn_out,
                   router choice (MoE layers), mlp_out, hidden; then final_norm. The first one outside its
                   bar is where the runtime departs -- the layer and the block to look at.
    greedy         tokens from a short prompt, decoded with the runtime's cache, equal to k25ref's up to the
                   first step where k25ref's top-1/top-2 logit margin is a near-tie (either token is right)

The bars (BARS) are the goldens' bars for any runtime (tests/goldens/MANIFEST.json): logits 1e-3,
intermediates and router weights 1e-4, embed exact, router sets equal except near-ties (margin < 1e-5).

Runtimes (adapters): `k25ref` (itself: the dump to imitate), `npz` (any runtime's dump, DUMP FORMAT below),
`transformers` (the oracle, tools/oracle.py from a checkout) and `llama.cpp` (llama-cpp-python on a GGUF
written by k25ref.gguf_export; logits of every position, greedy from its own cache).

DUMP FORMAT (what `--runtime npz` reads, and `--save-dump` writes): one .npz of float32 / int64 arrays,

    seq{T}.input_ids      (T,)   int64     the ids the runtime ran (any ids: k25ref runs the same ones)
    seq{T}.logits         (T, V) float32   logits at every position, one sequence, no cache
    seq{T}.embed          (T, D)           optional intermediates, k25ref's capture names:
    seq{T}.layers.{i}.attn_out / .mlp_out / .hidden   (T, D)   attention output, FFN output, residual after
    seq{T}.layers.{i}.router_indices  (T, A) int64    experts chosen per token (any order)
    seq{T}.layers.{i}.router_weights  (T, A)          their mixing weights, in the same order
    seq{T}.final_norm     (T, D)           the last hidden state after the final RMSNorm
    greedy.prompt (P,) int64, greedy.tokens (N,) int64   optional: N greedy tokens decoded with a cache

Any number of lengths; every key but seq{T}.input_ids / seq{T}.logits may be left out.
"""
import json
import os

import numpy as np

from k25ref.errors import K25RefError
from k25ref.nn import rms_norm, sigmoid
from k25ref.progress import bar

BARS = {"logits_rel": 1e-3, "intermediate_rel": 1e-4, "router_weights_rel": 1e-4, "embed_abs": 0.0,
        "router_tie": 1e-5, "greedy_margin": 1e-3}
LENGTHS = (1, 2, 7, 33, 64)             # the goldens' input lengths
GREEDY_PROMPT, GREEDY_NEW = 8, 32
RUNTIMES = ("k25ref", "npz", "transformers", "llama.cpp")
BLOCKS = ("attn_out", "mlp_out", "hidden")


class ConformError(K25RefError):
    """A runtime could not be run or its dump is unusable (exit 2, like any bad input)."""


# ----------------------------------------------------------------------------
# figures


def rel_err(out, ref):
    """max|out - ref| / max|ref| in float64: one scale-free number for the worst element."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    if out.shape != ref.shape:
        raise ConformError(f"shape {out.shape}, k25ref's is {ref.shape}")
    scale = np.abs(ref).max() if ref.size else 0.0
    diff = np.abs(out - ref).max() if ref.size else 0.0
    return float(diff / scale) if scale else float(diff)


def min_cosine(out, ref):  # (T, V), (T, V) -> the smallest per-row cosine
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    cos = (out * ref).sum(-1) / (np.linalg.norm(out, axis=-1) * np.linalg.norm(ref, axis=-1) + 1e-300)
    return float(cos.min())


def router_margins(u, gate_weight, bias, cfg):  # (T, D), (E, D), (E,) -> (T,)
    """How near each token's expert choice is to a tie: the smaller of the gap between the last chosen and
    first rejected group score, and between the A-th and (A+1)-th expert score in the chosen groups."""
    E, A, G, Gk = cfg.n_routed_experts, cfg.num_experts_per_tok, cfg.n_group, cfg.topk_group
    choice = sigmoid(u @ gate_weight.T) + bias                                 # (T, E)
    group = np.sort(choice.reshape(len(u), G, E // G), axis=-1)[..., -2:].sum(-1)   # (T, G)
    g_sorted = -np.sort(-group, axis=-1)
    group_gap = g_sorted[:, Gk - 1] - g_sorted[:, Gk] if Gk < G else np.full(len(u), np.inf)
    allowed = group >= g_sorted[:, Gk - 1:Gk]                                   # (T, G)
    masked = np.where(np.repeat(allowed, E // G, axis=-1), choice, -np.inf)
    e_sorted = -np.sort(-masked, axis=-1)
    expert_gap = e_sorted[:, A - 1] - e_sorted[:, A] if A < E else np.full(len(u), np.inf)
    return np.minimum(group_gap, expert_gap)


# ----------------------------------------------------------------------------
# the reference


def reference(model, ids):
    """k25ref's logits and named intermediates for one input, plus router margins per MoE layer."""
    cap = {}
    cap["logits"] = model.logits(ids, capture=cap)
    t, W = model.cfg.text, model.weights
    for i in range(t.num_hidden_layers):
        if t.is_moe_layer(i):
            before = cap[f"layers.{i - 1}.hidden"] if i else cap["embed"]
            h = before + cap[f"layers.{i}.attn_out"]
            u = rms_norm(h, W.f32(f"language_model.model.layers.{i}.post_attention_layernorm.weight"), t.rms_norm_eps)
            cap[f"layers.{i}.router_margin"] = router_margins(u, *W.router(i), t)
    return cap


def greedy_with_margins(step, prompt, n):  # step(ids) -> last logits (V,); -> (n,) tokens, (n,) margins
    """Greedy decoding through `step` (which keeps its own cache): tokens and each step's top-1 - top-2."""
    tokens, margins, logits = [], [], step(list(prompt))
    for _ in range(n):
        top2 = np.sort(logits)[-2:]
        tokens.append(int(np.argmax(logits)))
        margins.append(float(top2[1] - top2[0]))
        if len(tokens) < n:
            logits = step(tokens[-1:])
    return np.array(tokens, np.int64), np.array(margins, np.float32)


def k25ref_greedy(model, prompt, n):
    cache = model.new_cache()
    return greedy_with_margins(lambda ids: model.forward(np.asarray(ids), cache, last_only=True)[-1], prompt, n)


# ----------------------------------------------------------------------------
# inputs


def golden_case(path):
    """A goldens case folder (checkpoint/ + golden.npz) -> (checkpoint folder, inputs), else None."""
    npz, ckpt = os.path.join(path, "golden.npz"), os.path.join(path, "checkpoint")
    if not (os.path.isfile(npz) and os.path.isdir(ckpt)):
        return None
    with np.load(npz, allow_pickle=False) as z:
        lengths = {int(k[3:].split(".")[0]): z[k] for k in z.files if k.endswith(".input_ids")}
        prompt, n = z["greedy.prompt"], len(z["greedy.tokens"])
    return ckpt, {"lengths": dict(sorted(lengths.items())), "greedy_prompt": prompt, "greedy_new": n}


def random_inputs(cfg, lengths=LENGTHS, seed=0, greedy_new=GREEDY_NEW):
    """Random ids as tools/make_goldens.py draws them: uniform over the vocabulary, media placeholder left out."""
    rng = np.random.default_rng(seed)
    allowed = np.setdiff1d(np.arange(cfg.text.vocab_size), [cfg.media_placeholder_token_id])
    draw = lambda T: rng.choice(allowed, T).astype(np.int64)                   # noqa: E731
    return {"lengths": {T: draw(T) for T in lengths}, "greedy_prompt": draw(GREEDY_PROMPT), "greedy_new": greedy_new}


# ----------------------------------------------------------------------------
# comparison


def forward_order(cfg):
    """Intermediate names in the order the forward pass makes them."""
    names = ["embed"]
    for i in range(cfg.num_hidden_layers):
        names += [f"layers.{i}.attn_out"]
        names += [f"layers.{i}.router_indices"] if cfg.is_moe_layer(i) else []
        names += [f"layers.{i}.mlp_out", f"layers.{i}.hidden"]
    return names + ["final_norm"]


def compare_router(out_idx, out_w, ref, i):  # -> (tokens whose set differs: non-ties, ties; weights rel err)
    p = f"layers.{i}."
    ok = ref[p + "router_margin"] >= BARS["router_tie"]
    flipped = np.array([set(o) != set(r) for o, r in zip(out_idx, ref[p + "router_indices"])], bool)
    differ, ties = np.nonzero(ok & flipped)[0].tolist(), int((~ok & flipped).sum())
    same = ok & ~flipped
    if out_w is None or not same.any():
        return differ, ties, 0.0
    order = lambda idx, w: np.take_along_axis(w, np.argsort(idx, axis=-1), axis=-1)[same]   # noqa: E731
    return differ, ties, rel_err(order(out_idx, out_w), order(ref[p + "router_indices"], ref[p + "router_weights"]))


def compare_one(out, ref, cfg):
    """One input length: logits figures, every intermediate the runtime gave, the first departure."""
    row = {"logits_rel": rel_err(out["logits"], ref["logits"]), "cosine_min": min_cosine(out["logits"], ref["logits"]),
           "argmax_equal": int((np.argmax(out["logits"], -1) == np.argmax(ref["logits"], -1)).sum()),
           "positions": int(len(ref["logits"])), "intermediates": {}, "router_sets_differ": {},
           "router_ties_flipped": {}, "first_departure": None}
    for name in forward_order(cfg):
        if name not in out:
            continue
        if name.endswith("router_indices"):
            i = int(name.split(".")[1])
            differ, ties, err = compare_router(out[name], out.get(f"layers.{i}.router_weights"), ref, i)
            row["router_sets_differ"][name] = len(differ)
            row["router_ties_flipped"][name] = ties              # either choice is right; what follows differs
            row["intermediates"][f"layers.{i}.router_weights"] = err
            bad = None
            if differ:                                         # error: how many tokens chose other experts
                bad = (len(differ), 0)
            elif err > BARS["router_weights_rel"]:
                name, bad = f"layers.{i}.router_weights", (err, BARS["router_weights_rel"])
        else:
            err = rel_err(out[name], ref[name])
            row["intermediates"][name] = err
            bar = BARS["embed_abs"] if name == "embed" else BARS["intermediate_rel"]
            bad = (err, bar) if err > bar else None
        if bad and row["first_departure"] is None:
            row["first_departure"] = {"name": name, "error": float(bad[0]), "bar": bad[1]}
    if row["first_departure"] is None and row["logits_rel"] > BARS["logits_rel"]:
        row["first_departure"] = {"name": "logits", "error": row["logits_rel"], "bar": BARS["logits_rel"]}
    return row


def compare_greedy(tokens, ref_tokens, ref_margins):
    """Tokens equal up to the first near-tie of k25ref's margins; where they first differ, and whether at a tie."""
    n = min(len(tokens), len(ref_tokens))
    close = np.nonzero(ref_margins[:n] < BARS["greedy_margin"])[0]
    clear = int(close[0]) if close.size else n
    differ = np.nonzero(np.asarray(tokens[:n]) != ref_tokens[:n])[0]
    first = int(differ[0]) if differ.size else None
    return {"steps": n, "clear_steps": clear, "first_difference": first,
            "equal_prefix": first if first is not None else n,
            "margin_at_difference": None if first is None else float(ref_margins[first]),
            "passed": first is None or first >= clear}


def run(runtime, model, inputs, memo=None, progress=False, outputs=None):
    """Run `runtime` (an adapter) and k25ref on the inputs; -> the report dict (see format_table). `memo` (a
    dict) keeps k25ref's results for the next runtime on the same inputs; `outputs` (a dict), if given, receives
    the runtime's own results for save_dump: {T: its arrays} and "greedy": its tokens."""
    memo = {} if memo is None else memo
    lengths, greedy_new = [], inputs.get("greedy_new", 0)
    steps = bar(total=len(inputs["lengths"]) + bool(greedy_new), desc=f"conform {runtime.name}", unit="input",
                disable=not progress)
    for T, ids in inputs["lengths"].items():
        out = runtime.forward(ids)
        if outputs is not None:
            outputs[T] = out
        key = ("seq", tuple(int(i) for i in ids))
        ref = memo[key] = memo[key] if key in memo else reference(model, ids)
        lengths.append({"length": int(T), **compare_one(out, ref, model.cfg.text)})
        steps.update()
    report = {"runtime": runtime.name, "versions": runtime.versions(), "bars": BARS, "lengths": lengths,
              "greedy": None}
    tokens = runtime.greedy(inputs["greedy_prompt"], greedy_new) if greedy_new else None
    if outputs is not None:
        outputs["greedy"] = tokens
    if tokens is not None:
        key = ("greedy", tuple(int(i) for i in inputs["greedy_prompt"]), greedy_new)
        ref_tokens, ref_margins = memo[key] = memo[key] if key in memo else \
            k25ref_greedy(model, inputs["greedy_prompt"], greedy_new)
        report["greedy"] = {**compare_greedy(tokens, ref_tokens, ref_margins), "tokens": [int(t) for t in tokens],
                            "k25ref_tokens": ref_tokens.tolist()}
    steps.close()
    report["passed"] = passed(report)
    return report


def passed(report):
    ok = all(r["logits_rel"] <= BARS["logits_rel"] and r["first_departure"] is None for r in report["lengths"])
    return bool(ok and (report["greedy"] is None or report["greedy"]["passed"]))


# ----------------------------------------------------------------------------
# runtimes


class K25ref:
    """k25ref itself, through the same interface: the reference dump other runtimes imitate."""
    name = "k25ref"

    def __init__(self, model):
        self.model = model

    def versions(self):
        from importlib.metadata import PackageNotFoundError, version
        try:
            return {"k25ref": version("k25ref"), "numpy": np.__version__}
        except PackageNotFoundError:
            return {"numpy": np.__version__}

    def forward(self, ids):
        cap = {}
        cap["logits"] = self.model.logits(ids, capture=cap)
        return cap

    def greedy(self, prompt, n):
        return k25ref_greedy(self.model, prompt, n)[0]


class Npz:
    """A dump in the DUMP FORMAT (module doc). Its own input ids are the test inputs."""
    name = "npz"

    def __init__(self, path):
        try:
            with np.load(path, allow_pickle=False) as z:
                self.arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise ConformError(f"{path}: not a readable .npz ({e})") from None
        self.path = path
        self.seqs = {}
        for key, arr in self.arrays.items():
            if key.startswith("seq") and "." in key:
                group, name = key.split(".", 1)
                if not group[3:].isdigit():
                    raise ConformError(f"{path}: key {key!r}: expected seq<length>.<name>")
                self.seqs.setdefault(int(group[3:]), {})[name] = arr
        for T, seq in self.seqs.items():
            for need in ("input_ids", "logits"):
                if need not in seq:
                    raise ConformError(f"{path}: seq{T}.{need} is missing (every length needs input_ids and logits)")
        if not self.seqs:
            raise ConformError(f"{path}: no seq<length>.input_ids / .logits arrays")
        self.by_ids = {tuple(seq["input_ids"].tolist()): seq for seq in self.seqs.values()}

    def inputs(self):
        g = {"greedy_prompt": self.arrays["greedy.prompt"], "greedy_new": len(self.arrays["greedy.tokens"])} \
            if "greedy.tokens" in self.arrays and "greedy.prompt" in self.arrays else {}
        return {"lengths": {T: s["input_ids"] for T, s in sorted(self.seqs.items())}, **g}

    def versions(self):
        return {"dump": os.path.basename(self.path)}

    def forward(self, ids):
        return {k: v for k, v in self.by_ids[tuple(np.asarray(ids).tolist())].items() if k != "input_ids"}

    def greedy(self, prompt, n):
        return self.arrays.get("greedy.tokens")


class Transformers:
    """The transformers oracle (tools/oracle.py, from a checkout of the repository)."""
    name = "transformers"

    def __init__(self, checkpoint):
        import importlib.util
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "oracle.py")
        if not os.path.exists(path):
            raise ConformError(f"{path} not found: the transformers runtime runs from a checkout of the repository")
        try:
            spec = importlib.util.spec_from_file_location("k25ref_oracle", path)
            self.oracle = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(self.oracle)
        except ImportError as e:
            raise ConformError(f"the transformers runtime needs the oracle extra: pip install -e \".[oracle]\" ({e})") \
                from None
        self.model = self.oracle.load_oracle(checkpoint)

    def versions(self):
        return self.oracle.oracle_versions()

    def forward(self, ids):
        out = self.oracle.oracle_intermediates(self.model, ids)
        return {k: v for k, v in out.items() if not k.endswith("router_margin")}

    def greedy(self, prompt, n):
        return self.oracle.oracle_greedy(self.model, prompt, n)[0]


def open_llama(gguf_path, n_ctx, threads=None, kv_cache="f16", logits_all=True):
    """A llama_cpp.Llama on a GGUF: n_ctx positions, a whole n_ctx-token prompt in one batch, `threads` for
    decoding and batches alike, KV cache of type `kv_cache` (f16, llama.cpp's default, or f32); logits of every
    position (logits_all) or of each batch's last token only."""
    try:
        import llama_cpp
    except ImportError:
        raise ConformError("the llama.cpp runtime needs llama-cpp-python: pip install -e \".[peer]\" "
                           "(it builds llama.cpp from source, ~25 min on 2 cores)") from None
    cache = {"f16": llama_cpp.GGML_TYPE_F16, "f32": llama_cpp.GGML_TYPE_F32}[kv_cache]
    return llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                           logits_all=logits_all, n_threads=threads, n_threads_batch=threads, type_k=cache,
                           type_v=cache, verbose=False)


class LlamaCpp:
    """llama.cpp through llama-cpp-python on a deepseek2 GGUF: logits of every position (logits_all), greedy
    decoding with its own KV cache (`kv_cache`: its type, llama.cpp's default f16), and intermediates read
    through llama.cpp's eval callback (`LlamaCppTaps`)."""
    name = "llama.cpp"

    def __init__(self, gguf_path, cfg, inputs, threads=None, kv_cache="f16"):
        longest = max([*inputs["lengths"], len(inputs["greedy_prompt"]) + inputs.get("greedy_new", 0)])
        self.llm = open_llama(gguf_path, max(64, longest + 8), threads, kv_cache)   # room for every input
        self.kv_cache = kv_cache
        self.taps = LlamaCppTaps(self.llm, cfg)

    def versions(self):
        import llama_cpp                                                  # importable: open_llama checked
        return {"llama_cpp_python": llama_cpp.__version__, "kv_cache": self.kv_cache}

    def forward(self, ids):
        self.llm.reset()
        with self.taps as taps:
            self.llm.eval([int(i) for i in ids])
        return {"logits": np.array(self.llm.scores[:len(ids)], np.float32), **taps.intermediates(len(ids))}

    def greedy(self, prompt, n):
        self.llm.reset()

        def step(ids):
            self.llm.eval([int(i) for i in ids])
            return np.array(self.llm.scores[self.llm.n_tokens - 1], np.float32)
        return greedy_with_margins(step, prompt, n)[0]


class LlamaCppTaps:
    """llama.cpp's named graph tensors, copied out by its eval callback (`cb_eval`) while a batch runs, mapped
    to k25ref's capture names (src/models/deepseek2.cpp names them):

        embd -> embed            l_out-i -> layers.i.hidden           result_norm -> final_norm
        ffn_out-i -> layers.i.mlp_out                                 ffn_inp-i - (l_out-(i-1) or embd)
        ffn_moe_argsort-i[:, :A] -> layers.i.router_indices                      -> layers.i.attn_out
        ffn_moe_weights_scaled-i (else _norm / plain) -> layers.i.router_weights

    The callback needs a context created with it, so a second context replaces the Llama's first one."""
    WANTED = ("embd", "l_out", "ffn_out", "ffn_inp", "result_norm", "ffn_moe_argsort", "ffn_moe_weights",
              "ffn_moe_weights_norm", "ffn_moe_weights_scaled")

    def __init__(self, llm, cfg):
        import ctypes
        import llama_cpp
        from llama_cpp import _ggml, _internals
        self.cfg, self.on, self.got, self.ctypes = cfg, False, {}, ctypes
        lib = _ggml.libggml
        lib.ggml_get_name.restype, lib.ggml_get_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
        lib.ggml_nbytes.restype, lib.ggml_nbytes.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
        lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        self.lib = lib
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._tap)   # kept alive with self
        llm.context_params.cb_eval = self.callback
        llm._ctx = llm._stack.enter_context(__import__("contextlib").closing(
            _internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=False)))

    def _tap(self, tensor, ask, user_data):
        name = self.lib.ggml_get_name(tensor).decode()
        base = name.rsplit("-", 1)[0] if name.rsplit("-", 1)[-1].isdigit() else name
        if ask:
            return self.on and base in self.WANTED
        buf = np.empty(self.lib.ggml_nbytes(tensor), np.uint8)
        self.lib.ggml_backend_tensor_get(tensor, buf.ctypes.data, 0, buf.nbytes)
        self.got[name] = buf
        return True

    def __enter__(self):
        self.on, self.got = True, {}
        return self

    def __exit__(self, *exc):
        self.on = False

    def intermediates(self, T):
        """What the last batch left, as (T, ...) arrays under k25ref's names."""
        t, got = self.cfg, self.got
        rows = lambda name, dtype=np.float32: got[name].view(dtype).reshape(T, -1)   # noqa: E731
        out = {}
        if "embd" in got:
            out["embed"] = rows("embd")
        for i in range(t.num_hidden_layers):
            prev = out.get(f"layers.{i - 1}.hidden") if i else out.get("embed")
            if f"ffn_inp-{i}" in got and prev is not None:
                out[f"layers.{i}.attn_out"] = rows(f"ffn_inp-{i}") - prev
            if f"ffn_moe_argsort-{i}" in got:
                out[f"layers.{i}.router_indices"] = rows(f"ffn_moe_argsort-{i}", np.int32)[:, :t.num_experts_per_tok]
                for w in ("ffn_moe_weights_scaled", "ffn_moe_weights_norm", "ffn_moe_weights"):
                    if f"{w}-{i}" in got:
                        scale = 1.0 if w == "ffn_moe_weights_scaled" else t.routed_scaling_factor
                        out[f"layers.{i}.router_weights"] = rows(f"{w}-{i}") * np.float32(scale)
                        break
            for src, dst in ((f"ffn_out-{i}", "mlp_out"), (f"l_out-{i}", "hidden")):
                if src in got:
                    out[f"layers.{i}.{dst}"] = rows(src)
        if "result_norm" in got:
            out["final_norm"] = rows("result_norm")
        return out


# ----------------------------------------------------------------------------
# output


def save_dump(path, outputs, inputs):
    """Write a runtime's results on `inputs` (the `outputs` that run() filled) in the DUMP FORMAT (the reference
    dump, for --runtime k25ref)."""
    arrays = {}
    for T, ids in inputs["lengths"].items():
        arrays[f"seq{T}.input_ids"] = np.asarray(ids, np.int64)
        for k, v in outputs[T].items():
            arrays[f"seq{T}.{k}"] = np.asarray(v, np.int64 if v.dtype.kind in "iu" else np.float32)
    if outputs.get("greedy") is not None:
        arrays["greedy.prompt"], arrays["greedy.tokens"] = np.asarray(inputs["greedy_prompt"], np.int64), \
            outputs["greedy"]
    np.savez(path, **arrays)


def format_table(report):
    """Lines for people: one row per input length, then greedy, then the verdict."""
    lines = [f"runtime {report['runtime']} ({', '.join(f'{k} {v}' for k, v in report['versions'].items())}) "
             f"against k25ref; bars: logits {BARS['logits_rel']:g}, intermediates {BARS['intermediate_rel']:g}",
             f"{'length':>6}  {'logits rel':>10}  {'min cosine':>10}  {'argmax':>9}  first departure"]
    for r in report["lengths"]:
        d = r["first_departure"]
        where = "none" if d is None else (f"{d['name']} ({d['error']:.0f} tokens choose other experts)"
                                          if d["name"].endswith("router_indices") else
                                          f"{d['name']} rel {d['error']:.2e} > {d['bar']:g}")
        where += "" if r["intermediates"] else " (no intermediates exposed)"
        ties = sum(r["router_ties_flipped"].values())
        where += f"; {ties} near-tie router choice(s) went the other way" if ties else ""
        lines.append(f"{r['length']:>6}  {r['logits_rel']:>10.2e}  {r['cosine_min']:>10.6f}  "
                     f"{r['argmax_equal']:>4}/{r['positions']:<4}  {where}")
    g = report["greedy"]
    if g is not None:
        tie = f"; k25ref's first near-tie (margin < {BARS['greedy_margin']:g}) at step {g['clear_steps']}" \
            if g["clear_steps"] < g["steps"] else ""
        at = "" if g["first_difference"] is None else f" (k25ref's margin there {g['margin_at_difference']:.2e})"
        lines.append(f"greedy: {g['equal_prefix']}/{g['steps']} tokens equal before the first difference{at}{tie}")
    lines.append("PASS: within every bar" if report["passed"] else "FAIL: outside the bars above")
    return lines


def plot_layers(report, cfg, out_png):
    """Per-layer relative error of attn_out / mlp_out / hidden for each input length, with the bar (PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    layers = np.arange(cfg.num_hidden_layers)
    for r, color in zip(report["lengths"], ("C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7")):
        for block, style in zip(BLOCKS, ("-", "--", ":")):
            ys = [r["intermediates"].get(f"layers.{i}.{block}", np.nan) for i in layers]
            if not np.all(np.isnan(ys)):
                ax.plot(layers, np.maximum(ys, 1e-12), style, color=color, marker="o", ms=3,
                        label=f"T={r['length']} {block}")
        if not r["intermediates"]:
            ax.axhline(max(r["logits_rel"], 1e-12), color=color, lw=1, label=f"T={r['length']} logits (only)")
    ax.axhline(BARS["intermediate_rel"], color="k", lw=1, ls="-.", label="bar 1e-4")
    ax.set(yscale="log", xlabel="layer", ylabel="max|out - ref| / max|ref|",
           title=f"{report['runtime']} against k25ref, per layer")
    ax.set_xticks(layers)
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    FigureCanvasAgg(fig).print_png(out_png)


def to_json(report):
    return json.dumps(report, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
