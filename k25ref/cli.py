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
from k25ref.model import PREFILL_CHUNK, default_model_path

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


prefill_chunk_option = click.option(
    "--prefill-chunk", default=PREFILL_CHUNK, show_default=True, type=click.IntRange(min=1),
    help="Prompt tokens run through the layers at a time: memory for activations and attention grows with it, "
         "not with the prompt (docs/long-context.md).")
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
@prefill_chunk_option
def generate(prompt, model_dir, max_tokens, temp, top_p, top_k, seed, system, think, raw, stats, max_memory,
             backend, images, videos, prefill_chunk):
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
    model.check_context(len(ids), max_tokens, kw.get("grid_thw"))             # before compiling anything
    if backend == "numba":
        _prepare_kernels()
    out = TextStream(tok, sys.stdout)
    t0 = time.perf_counter()
    first, n = None, 0
    for token in model.generate(ids, max_tokens, temperature=temp, top_p=top_p, top_k=top_k, seed=seed,
                                backend=backend, prefill_chunk=prefill_chunk, progress=True, **kw):
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
@prefill_chunk_option
def chat(model_dir, system, think, show_thinking, max_tokens, temp, seed, prefill_chunk):
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
        new = list(model.generate(ids, max_tokens, temperature=temp, seed=seed, backend="numba",
                                  prefill_chunk=prefill_chunk))
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
              help="tiny | tiny-plain | tiny-groups | k25-context (random weights in the released layout; "
                   "k25-context: K2.5's RoPE/YaRN and 262144 positions at a small width, for long prompts).")
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


if __name__ == "__main__":
    main()
