"""The `k25ref` command line (click). Commands are thin: each parses flags and calls library functions.

Bad input (missing folder, malformed checkpoint, empty prompt, undecodable stdin, bad media) is one line on
stderr and a non-zero exit code: 2 bad input, 3 config, 4 checkpoint, 5 media, 6 prompt (see k25ref.errors).
"""
import codecs
import os
import resource
import sys
import time

import click

from k25ref.errors import K25RefError, PromptError
from k25ref.model import default_model_path

DEFAULT_PROMPT = "ROMEO:"


class Group(click.Group):
    """A click group that turns k25ref's own errors into one line and an exit code, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except K25RefError as e:
            click.echo(f"k25ref: error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            sys.stderr.close()
            ctx.exit(0)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """k25ref: a readable, exact NumPy reference of Kimi K2.5 you can step through.

    \b
    Try:   k25ref generate                 (the embedded tiny model, no download)
           k25ref inspect                  (what a checkpoint holds, from headers only)
           k25ref make-tiny /tmp/tiny      (write a random checkpoint in the released layout)
    """


model_option = click.option("--model", "-m", "model_dir", type=click.Path(file_okay=False), default=None,
                            help="Checkpoint folder in the released layout (config.json, index, shards, tokenizer). "
                                 "Default: the embedded tiny model, Kimi-K2.5-nano (6.4 M parameters, trained on "
                                 "Shakespeare and synthetic shapes).")


def _open(model_dir, memory_budget=None):
    """(model, tokenizer) for a folder, with a progress bar over shard headers."""
    from k25ref.model import load_model
    from k25ref.tokenizer import Tokenizer
    path = model_dir or default_model_path()
    if not os.path.isdir(path):
        raise K25RefError(f"{path}: no such checkpoint folder")
    model = load_model(path, memory_budget=memory_budget, progress=True)
    return model, Tokenizer.from_pretrained(path)


def _prepare_kernels():
    """Compile the Numba kernels (or load them from the cache) before the clock starts; say so if it takes long."""
    import threading
    from k25ref.kernels import warmup as compile_all
    done = threading.Event()
    notice = threading.Timer(1.0, lambda: done.is_set() or click.echo(
        "compiling kernels (first run only, about 15 s; `k25ref warmup` does it ahead)...", err=True))
    notice.start()
    try:
        compile_all()
    finally:
        done.set()
        notice.cancel()


def _read_prompt(prompt):
    """PROMPT as given, '-' for stdin (must be UTF-8), or the default; never empty."""
    if prompt == "-":
        raw = sys.stdin.buffer.read()
        try:
            prompt = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PromptError(f"stdin is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r})") from None
    prompt = DEFAULT_PROMPT if prompt is None else prompt
    if not prompt.strip():
        raise PromptError("the prompt is empty")
    return prompt


def _parse_bytes(text):
    """'4GB', '512MiB', '1e9' -> bytes."""
    units = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    num = t.rstrip("KMGTIB")
    try:
        return int(float(num) * units[t[len(num):]])
    except (ValueError, KeyError):
        raise click.BadParameter(f"{text!r} is not a size like 4GB or 512MiB") from None


def peak_rss_bytes():
    """Peak resident set size of this process, from the OS."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class TextStream:
    """Print token ids as text as they arrive; multi-byte characters split across tokens wait for their end."""

    def __init__(self, tokenizer, out):
        self.tok, self.out = tokenizer, out
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, token):
        self.out.write(self.utf8.decode(self.tok.decode_bytes([token])))
        self.out.flush()

    def close(self):
        self.out.write(self.utf8.decode(b"", final=True))
        self.out.flush()


@main.command()
@click.argument("prompt", required=False)
@model_option
@click.option("--max-tokens", "-n", default=64, show_default=True, help="New tokens to generate at most.")
@click.option("--temp", "-t", default=0.0, show_default=True, help="Sampling temperature; 0 is greedy.")
@click.option("--top-p", default=1.0, show_default=True, help="Nucleus sampling: keep the top tokens up to this "
                                                              "probability mass.")
@click.option("--top-k", default=0, show_default=True, help="Keep only the k most likely tokens (0: all).")
@click.option("--seed", default=None, type=int, help="Seed for sampling (same seed, same text).")
@click.option("--system", default=None, help="System prompt (default: the model's own).")
@click.option("--think/--no-think", default=False, show_default=True,
              help="Thinking mode: the reply starts inside <think> (K2.5's default is on; off suits tiny models).")
@click.option("--raw", is_flag=True, help="No chat template: continue PROMPT as plain text.")
@click.option("--stats", is_flag=True, help="Print weight-cache and I/O counters after generating.")
@click.option("--max-memory", default=None,
              help="Memory for the model's weights, e.g. 4GB: one forward pass's working set (a layer's weights, the "
                   "chosen experts) plus a cache of the rest; the Python process adds ~0.3 GB (default: no limit).")
@click.option("--backend", type=click.Choice(["numba", "numpy"]), default="numba", show_default=True,
              help="numba: the compiled kernels (fast; the first run compiles for ~15 s, then cached); numpy: the "
                   "plain reference. Both give the same tokens.")
@click.option("--image", "images", multiple=True, type=click.Path(dir_okay=False),
              help="An image to show the model (repeatable); it comes before the prompt text.")
@click.option("--video", "videos", multiple=True, type=click.Path(dir_okay=False),
              help="A video (mp4/webm need the 'video' extra; GIF works as is), sampled at 2 fps in 4-frame chunks.")
def generate(prompt, model_dir, max_tokens, temp, top_p, top_k, seed, system, think, raw, stats, max_memory,
             backend, images, videos):
    """Stream a reply to PROMPT ('-' reads stdin; default 'ROMEO:').

    Speeds and peak memory go to stderr, the text to stdout, so `k25ref generate ... > out.txt` keeps
    only the text.
    """
    prompt = _read_prompt(prompt)
    if raw and (images or videos):
        raise click.UsageError("--image/--video need the chat template: drop --raw")
    parts, pixels, grids = _media_parts(images, videos)
    model, tok = _open(model_dir, _parse_bytes(max_memory) if max_memory else None)
    if raw:
        ids = tok.encode(prompt)
    else:
        content = parts + [{"type": "text", "text": prompt}] if parts else prompt
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        ids = tok.apply_chat_template(messages, thinking=think)
    kw = {}
    if pixels:
        import numpy as np
        from k25ref.multimodal import expand_placeholders
        kw = {"pixel_values": np.concatenate(pixels), "grid_thw": np.concatenate(grids)}
        ids = expand_placeholders(ids, kw["grid_thw"], model.cfg.media_placeholder_token_id)
    if backend == "numba":
        _prepare_kernels()
    out = TextStream(tok, sys.stdout)
    t0 = time.perf_counter()
    first, n = None, 0
    for token in model.generate(ids, max_tokens, temperature=temp, top_p=top_p, top_k=top_k, seed=seed,
                                backend=backend, **kw):
        first = first or time.perf_counter()
        out.write(token)
        n += 1
    out.close()
    t1 = time.perf_counter()
    click.echo("", err=False)
    prefill = (first or t1) - t0
    click.echo(f"prompt: {len(ids)} tokens, {len(ids) / max(prefill, 1e-9):.1f} tokens/s | generation: {n} tokens, "
               f"{max(n - 1, 0) / max(t1 - (first or t1), 1e-9):.1f} tokens/s | peak memory "
               f"{peak_rss_bytes() / 2**20:.0f} MiB", err=True)
    if stats:
        for line in format_stats(model, t1 - t0, len(ids) + n):
            click.echo(line, err=True)


def _media_parts(images, videos):
    """Preprocess --image/--video files -> chat content parts, pixel blocks and grid rows, in prompt order."""
    from k25ref import media
    parts, pixels, grids = [], [], []
    for path in images:
        pv, grid = media.preprocess_image(path)
        parts.append({"type": "image"})
        pixels.append(pv)
        grids.append(grid)
    for path in videos:
        pv, grid, stamps = media.preprocess_video(path)
        parts.append({"type": "video", "timestamps": stamps})
        pixels.append(pv)
        grids.append(grid)
    return parts, pixels, grids


def format_stats(model, seconds, tokens):
    """Lines of weight-streaming counters: bytes read, I/O vs compute time, cache and per-layer expert hits."""
    from k25ref.summary import human
    s, c = model.stats.snapshot(), model.cache
    lines = [f"read {human(s['bytes_read'])}B in {s['reads']} reads ({human(s['bytes_read'] / tokens)}B/token), "
             f"I/O {s['io_seconds']:.2f} s of {seconds:.2f} s",
             f"weight cache: {c.hits} hits, {c.misses} misses, {human(c.bytes)}B held"
             + (f" of {human(c.budget)}B (the budget less a {human(model.working_set)}B working set)"
                if c.budget is not None else "")]
    for layer in sorted(set(s["expert_hits"]) | set(s["expert_misses"])):
        h, m = s["expert_hits"].get(layer, 0), s["expert_misses"].get(layer, 0)
        lines.append(f"  layer {layer:>3} experts: {h} hits / {h + m} uses ({h / (h + m):.0%})")
    return lines


@main.command()
@model_option
@click.option("--system", default=None, help="System prompt (default: the model's own).")
@click.option("--think/--no-think", default=False, show_default=True, help="Let the model think before replying.")
@click.option("--show-thinking/--hide-thinking", default=True, show_default=True,
              help="Show the reasoning (dimmed) or hide it.")
@click.option("--max-tokens", "-n", default=128, show_default=True, help="New tokens per reply at most.")
@click.option("--temp", "-t", default=0.0, show_default=True, help="Sampling temperature; 0 is greedy.")
@click.option("--seed", default=None, type=int, help="Seed for sampling.")
def chat(model_dir, system, think, show_thinking, max_tokens, temp, seed):
    """An interactive multi-turn chat. Type /reset to forget the history, /exit (or Ctrl-D) to leave."""
    from k25ref.chat import parse_output
    model, tok = _open(model_dir)
    history = [{"role": "system", "content": system}] if system else []
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            history = history[:1] if system else []
            click.echo("(history cleared)")
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        ids = tok.apply_chat_template(history, thinking=think)
        new = list(model.generate(ids, max_tokens, temperature=temp, seed=seed, backend="numba"))
        text = ("<think>" if think else "<think></think>") + tok.decode(new)
        reply = parse_output(text)
        if reply.reasoning and show_thinking:
            click.secho(reply.reasoning.strip(), dim=True)
        click.echo(reply.content.strip())
        history.append({"role": "assistant", "content": reply.content, "reasoning_content": reply.reasoning})


@main.command()
@click.argument("path", required=False, type=click.Path(file_okay=False))
def inspect(path):
    """Summarise a checkpoint from config.json and headers alone (no tensor data is read).

    Works on an index without shards too (config.json + model.safetensors.index.json), and reports
    parameters, bytes by dtype, KV-cache bytes per token and what a decoded token must read from disk.
    Exits non-zero if any tensor disagrees with the config.
    """
    from k25ref.summary import format_summary, summarize
    s = summarize(path or default_model_path())
    for line in format_summary(s):
        click.echo(line)
    if s["problems"]:
        sys.exit(4)


@main.command()
@click.argument("args", nargs=-1, required=True)
@model_option
def tokenize(args, model_dir):
    """Show the ids and pieces of TEXT: `k25ref tokenize TEXT` or `k25ref tokenize DIR TEXT`."""
    from k25ref.tokenizer import Tokenizer
    if len(args) > 2:
        raise click.UsageError("give TEXT, or DIR TEXT (quote text with spaces)")
    folder = args[0] if len(args) == 2 else (model_dir or default_model_path())
    tok = Tokenizer.from_pretrained(folder)
    ids = tok.encode(args[-1])
    click.echo(f"{len(ids)} tokens")
    for i in ids:
        click.echo(f"{i:>8}  {tok.piece(i)}")


@main.command("make-tiny")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--preset", default="tiny", show_default=True,
              help="tiny | tiny-plain | tiny-groups (random weights in the released layout).")
@click.option("--seed", default=0, show_default=True, help="Seed for the random weights.")
@click.option("--shards", default=2, show_default=True, help="Number of safetensors shards.")
def make_tiny_cmd(out, preset, seed, shards):
    """Write a small random checkpoint in exactly the released layout (for tests and experiments)."""
    from k25ref.make_tiny import PRESETS, make_tiny
    if preset not in PRESETS or preset == "full":
        raise click.BadParameter(f"choose one of {sorted(p for p in PRESETS if p != 'full')}", param_hint="--preset")
    if shards < 1:
        raise click.BadParameter("must be >= 1", param_hint="--shards")
    make_tiny(out, preset, seed=seed, shards=shards)
    click.echo(f"wrote {out}")


@main.command("inspect-image")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--plot", type=click.Path(dir_okay=False), help="Also save a picture of the patch grid and its 2x2 "
                                                            "merge groups here (PNG).")
def inspect_image(path, plot):
    """How MoonViT sees an image: original, resized and padded sizes, patch grid and token count."""
    from k25ref import media
    info = media.plot_patch_grid(path, plot) if plot else media.describe_image(path)
    for key, value in info.items():
        click.echo(f"{key:14} {value}")


@main.command()
def warmup():
    """Compile every Numba kernel now (or load it from the cache), so generation starts at once."""
    from k25ref.kernels import warmup as compile_all
    for name, seconds in compile_all().items():
        click.echo(f"{name:18} {seconds:.2f} s")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.pass_context
def bench(ctx):
    """Speed side by side with transformers (runs tools/bench.py from a repository checkout; its --help lists
    the options: --configs, --threads, --json, --markdown, ...)."""
    import runpy
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "bench.py")
    if not os.path.exists(path):
        raise K25RefError(f"{path} not found: `k25ref bench` runs from a checkout of the repository")
    sys.argv = [path, *ctx.args]
    runpy.run_path(path, run_name="__main__")


from k25ref.nano_eval import eval_nano  # noqa: E402  (held-out loss and caption accuracy of the nano model)
from k25ref.swarm.cli import swarm  # noqa: E402  (the toy Agent Swarm's own command group)

main.add_command(eval_nano)
main.add_command(swarm)


@main.command("export-gguf")
@click.argument("ckpt", type=click.Path(file_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--experts", type=click.Choice(["q4_0", "bf16", "f32"]), default=None,
              help="Routed experts: q4_0 repacks the INT4 codes bit for bit (a Q4_0 block is an INT4 group with "
                   "its scale as float16); bf16 / f32 write bf16(q * scale), the values k25ref computes with. "
                   "Default: q4_0 for INT4 experts, bf16 for BF16 ones.")
@click.option("--dense", type=click.Choice(["f32", "bf16", "f16"]), default="f32", show_default=True,
              help="Every other matrix: f32 (exact, and llama.cpp then multiplies in float32), bf16 (the stored "
                   "bits; llama.cpp rounds activations to bf16 for it) or f16 (rounded). Norms and the router "
                   "are always F32.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def export_gguf_cmd(ckpt, out, experts, dense, force):
    """Write CKPT's text decoder to OUT.gguf for llama.cpp (its `deepseek2` architecture, MLA absorbed).

    Text only: the vision tower and projector stay in k25ref. Metadata comes from config.json, the
    tokenizer from tiktoken.model (llama.cpp's `kimi-k2` pre-tokenizer). Reports how many INT4 groups
    lose precision in Q4_0 (a bf16 scale that float16 cannot hold) and what llama.cpp computes
    differently from the checkpoint's model. Needs the `gguf` package (pip install gguf).
    """
    from k25ref.gguf_export import export_gguf, format_report
    report = export_gguf(ckpt, out, experts=experts, dense=dense, overwrite=force, progress=True)
    for line in format_report(report):
        click.echo(line)


def _lengths(text):
    try:
        lengths = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of lengths like 1,7,33") from None
    if not lengths or min(lengths) < 1:
        raise click.BadParameter("lengths must be >= 1")
    return lengths


def _new_file(path, force, option):
    if path and os.path.exists(path) and not force:
        raise click.BadParameter(f"{path} exists (pass --force to replace it)", param_hint=option)


@main.command()
@click.argument("ckpt", type=click.Path(file_okay=False, exists=True))
@click.option("--runtime", "-r", type=click.Choice(["llama.cpp", "transformers", "npz", "k25ref"]), required=True,
              help="What to check: llama.cpp (llama-cpp-python on a GGUF), transformers (the oracle), npz (a dump "
                   "written by any runtime, see --dump) or k25ref itself (to write the reference dump).")
@click.option("--dump", type=click.Path(dir_okay=False, exists=True),
              help="npz runtime: the dump to check (format: docs/conformance.md; its input ids are the inputs).")
@click.option("--gguf", "gguf_path", type=click.Path(dir_okay=False, exists=True),
              help="llama.cpp runtime: this GGUF (default: export CKPT to a temporary one with --experts/--dense).")
@click.option("--experts", type=click.Choice(["q4_0", "bf16", "f32"]), default=None,
              help="llama.cpp runtime, when exporting: routed experts' type (see export-gguf).")
@click.option("--dense", type=click.Choice(["f32", "bf16", "f16"]), default="f32", show_default=True,
              help="llama.cpp runtime, when exporting: other matrices' type.")
@click.option("--kv-cache", type=click.Choice(["f16", "f32"]), default="f16", show_default=True,
              help="llama.cpp runtime: its KV cache type (f16 is llama.cpp's default).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="llama.cpp runtime: threads.")
@click.option("--lengths", default=",".join(str(x) for x in (1, 2, 7, 33, 64)), show_default=True,
              help="Random input lengths (ignored for a goldens case folder and for --dump, which carry their ids).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--greedy", "greedy_new", type=click.IntRange(min=0), default=32, show_default=True,
              help="Greedy tokens to compare from an 8-token prompt (0: none).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for machines).")
@click.option("--plot", type=click.Path(dir_okay=False), help="Save a per-layer error plot here (PNG).")
@click.option("--save-dump", type=click.Path(dir_okay=False), help="Also save the runtime's outputs as a dump.")
@click.option("--force", is_flag=True, help="Replace --plot / --save-dump files that exist.")
def conform(ckpt, runtime, dump, gguf_path, experts, dense, kv_cache, threads, lengths, seed, greedy_new, as_json,
            plot, save_dump, force):
    """Check a runtime against k25ref on CKPT's test inputs, and say where it departs.

    CKPT is a checkpoint folder (random inputs, drawn as tools/make_goldens.py draws them) or a goldens
    case folder (tests/goldens/<case>: its committed inputs). For every input length: logits relative
    error, smallest cosine and argmax agreement, and -- where the runtime exposes them -- the first
    intermediate (embed, attn_out, router choice, mlp_out, hidden, final_norm) outside its bar; then
    greedy tokens up to k25ref's first near-tie. Exit 0 when every bar holds, 1 when the runtime departs.

    \b
    k25ref conform tests/goldens/yarn-groups -r llama.cpp --experts f32 --kv-cache f32
    k25ref conform CKPT -r k25ref --save-dump ref.npz    (the dump format, filled by k25ref)
    k25ref conform CKPT -r npz --dump theirs.npz --plot layers.png
    """
    from k25ref import conform as cf
    from k25ref.model import load_model
    lengths = _lengths(lengths)
    _new_file(plot, force, "--plot")
    _new_file(save_dump, force, "--save-dump")
    if (runtime == "npz") != (dump is not None):
        raise click.UsageError("--dump goes with --runtime npz, and --runtime npz needs --dump")
    if gguf_path and runtime != "llama.cpp":
        raise click.UsageError("--gguf goes with --runtime llama.cpp")
    case = cf.golden_case(ckpt)
    folder = case[0] if case else ckpt
    model = load_model(folder)
    inputs = case[1] if case else cf.random_inputs(model.cfg, lengths, seed, greedy_new)
    inputs["greedy_new"] = min(inputs.get("greedy_new", 0), greedy_new)
    with _runtime(runtime, folder, model, dump, gguf_path, experts, dense, kv_cache, threads, inputs) as rt:
        if runtime == "npz":
            inputs = {**rt.inputs(), **({"greedy_new": 0} if not greedy_new else {})}
        report = cf.run(rt, model, inputs, progress=True)
        report["checkpoint"] = folder
        if save_dump:
            cf.save_dump(save_dump, rt, inputs)
    if plot:
        cf.plot_layers(report, model.cfg.text, plot)
    click.echo(cf.to_json(report) if as_json else "\n".join(cf.format_table(report)))
    sys.exit(0 if report["passed"] else 1)


class _runtime:
    """The chosen runtime adapter, with a temporary GGUF for llama.cpp removed afterwards."""

    def __init__(self, name, folder, model, dump, gguf_path, experts, dense, kv_cache, threads, inputs):
        self.args = (name, folder, model, dump, gguf_path, experts, dense, kv_cache, threads, inputs)
        self.tmp = None

    def __enter__(self):
        from k25ref import conform as cf
        name, folder, model, dump, gguf_path, experts, dense, kv_cache, threads, inputs = self.args
        if name == "k25ref":
            return cf.K25ref(model)
        if name == "npz":
            return cf.Npz(dump)
        if name == "transformers":
            return cf.Transformers(folder)
        if gguf_path is None:
            import tempfile
            from k25ref.gguf_export import export_gguf
            self.tmp = tempfile.TemporaryDirectory()
            gguf_path = os.path.join(self.tmp.name, "model.gguf")
            for line in export_gguf(folder, gguf_path, experts, dense).notes:
                click.echo(f"note: {line}", err=True)
        longest = max([*inputs["lengths"].keys(), len(inputs["greedy_prompt"]) + inputs.get("greedy_new", 0)])
        return cf.LlamaCpp(gguf_path, model.cfg.text, n_ctx=max(64, longest + 8), threads=threads,
                           kv_cache=kv_cache)

    def __exit__(self, *exc):
        if self.tmp is not None:
            self.tmp.cleanup()
