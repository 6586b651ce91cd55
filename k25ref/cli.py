"""The `k25ref` command line (click). Commands are thin: each parses flags and calls library functions.

Bad input (missing folder, malformed checkpoint, empty prompt, undecodable stdin, bad media, an option value
out of range) is one line on stderr and a documented exit code: 1 the system refused (disk full, permission),
2 usage or bad input, 3 config, 4 checkpoint, 5 media, 6 prompt, 7 numerics (see k25ref.errors). Option values
are checked by their click types (k25ref.options) before any work starts.
"""
import codecs
import os
import resource
import sys
import time

import click

from k25ref.errors import K25RefError, PromptError
from k25ref.make_tiny import PRESETS
from k25ref.model import default_model_path
from k25ref.options import FORCE, SEED, Finite, OutputFile, Size

DEFAULT_PROMPT = "ROMEO:"
MAX_CHAT_LINE = 100_000                 # characters of one chat line
TINY_PRESETS = tuple(p for p in PRESETS if p != "full")


NO_ARGS = getattr(click.exceptions, "NoArgsIsHelpError", ())   # click >= 8.2 raises it for a bare group


def fail_line(message, code):
    """Clear any progress bar, print `k25ref: error: message` as one line on stderr, exit with `code`."""
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()                                     # leave=False bars erase themselves
    click.echo("k25ref: error: " + " ".join(str(message).splitlines()), err=True)
    sys.exit(code)


class Group(click.Group):
    """A click group that turns k25ref's own errors -- and click's usage errors -- into one line and a
    documented exit code, never a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NO_ARGS as e:                            # `k25ref` alone: click's help, as it would show it
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
            fail_line(e.format_message() + hint, e.exit_code)
        except click.ClickException as e:
            fail_line(e.format_message(), e.exit_code)
        except click.Abort:
            fail_line("interrupted", 130)
        code = code if isinstance(code, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except K25RefError as e:
            fail_line(e, e.exit_code)
        except OSError as e:                            # the system refused a read or write: exit 1
            if isinstance(e, BrokenPipeError):          # the reader went away (`| head`): nothing to report
                sys.stderr.close()
                ctx.exit(0)
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            fail_line(f"{where}{e.strerror or e}", 1)
        except KeyboardInterrupt:
            click.echo("", err=True)
            ctx.exit(130)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """k25ref: a readable, exact NumPy reference of Kimi K2.5 you can step through.

    \b
    Try:   k25ref generate                 (the embedded tiny model, no download)
           k25ref inspect                  (what a checkpoint holds, from headers only)
           k25ref make-tiny /tmp/tiny      (write a random checkpoint in the released layout)
    """


model_option = click.option("--model", "-m", "model_dir", type=click.Path(exists=True, file_okay=False), default=None,
                            help="Checkpoint folder in the released layout (config.json, index, shards, tokenizer). "
                                 "Default: the embedded tiny model, Kimi-K2.5-nano (6.4 M parameters, trained on "
                                 "Shakespeare and synthetic shapes).")


def _open(model_dir, memory_budget=None):
    """(model, tokenizer) for a folder, with a progress bar over shard headers."""
    from k25ref.model import load_model
    from k25ref.tokenizer import Tokenizer
    path = model_dir or default_model_path()
    model = load_model(path, memory_budget=memory_budget, progress=True)
    tok = Tokenizer.from_pretrained(path)
    tok.require_vocabulary(model.cfg.text.vocab_size, path)
    return model, tok


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
@click.option("--max-tokens", "-n", default=64, show_default=True, type=click.IntRange(0),
              help="New tokens to generate at most.")
@click.option("--temp", "-t", default=0.0, show_default=True, type=Finite(0), help="Sampling temperature; 0 is greedy.")
@click.option("--top-p", default=1.0, show_default=True, type=Finite(0, 1, min_open=True),
              help="Nucleus sampling: keep the top tokens up to this probability mass, in (0, 1].")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(0),
              help="Keep only the k most likely tokens (0: all).")
@click.option("--seed", default=None, type=SEED, help="Seed for sampling, 0 .. 2^63-1 (same seed, same text).")
@click.option("--system", default=None, help="System prompt (default: the model's own).")
@click.option("--think/--no-think", default=False, show_default=True,
              help="Thinking mode: the reply starts inside <think> (K2.5's default is on; off suits tiny models).")
@click.option("--raw", is_flag=True, help="No chat template: continue PROMPT as plain text.")
@click.option("--stats", is_flag=True, help="Print weight-cache and I/O counters after generating.")
@click.option("--max-memory", default=None, type=Size(),
              help="Memory for the model's weights, e.g. 4G, 4GB or 512MiB (G = 10^9, GiB = 2^30): one forward pass's working set (a layer's weights, the "
                   "chosen experts) plus a cache of the rest; the Python process adds ~0.3 GB (default: no limit).")
@click.option("--backend", type=click.Choice(["numba", "numpy"]), default="numba", show_default=True,
              help="numba: the compiled kernels (fast; the first run compiles for ~15 s, then cached); numpy: the "
                   "plain reference. Both give the same tokens.")
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An image to show the model (repeatable); it comes before the prompt text.")
@click.option("--video", "videos", multiple=True, type=click.Path(exists=True, dir_okay=False),
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
    model, tok = _open(model_dir, max_memory)
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
@click.option("--max-tokens", "-n", default=128, show_default=True, type=click.IntRange(0),
              help="New tokens per reply at most.")
@click.option("--temp", "-t", default=0.0, show_default=True, type=Finite(0), help="Sampling temperature; 0 is greedy.")
@click.option("--seed", default=None, type=SEED, help="Seed for sampling, 0 .. 2^63-1.")
def chat(model_dir, system, think, show_thinking, max_tokens, temp, seed):
    """An interactive multi-turn chat. Type /reset to forget the history, /exit (or Ctrl-D) to leave.

    A line that is not UTF-8 or longer than 100,000 characters is refused on its own; the chat goes on."""
    from k25ref.chat import parse_output
    model, tok = _open(model_dir)
    history = [{"role": "system", "content": system}] if system else []
    while True:
        line = _chat_line()
        if line is None:
            return
        if isinstance(line, PromptError):
            click.echo(f"k25ref: error: {line}", err=True)
            continue
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            history = history[:1] if system else []
            click.echo("(history cleared)")
            continue
        if not line.strip():
            continue
        try:
            ids = tok.apply_chat_template(history + [{"role": "user", "content": line}], thinking=think)
            new = list(model.generate(ids, max_tokens, temperature=temp, seed=seed, backend="numba"))
        except PromptError as e:                        # this turn's error; the history stays as it was
            click.echo(f"k25ref: error: {e}", err=True)
            continue
        history.append({"role": "user", "content": line})
        text = ("<think>" if think else "<think></think>") + tok.decode(new)
        reply = parse_output(text)
        if reply.reasoning and show_thinking:
            click.secho(reply.reasoning.strip(), dim=True)
        click.echo(reply.content.strip())
        history.append({"role": "assistant", "content": reply.content, "reasoning_content": reply.reasoning})


def _chat_line(max_chars=MAX_CHAT_LINE):
    """The next line of chat input -> str, None at end of input, or a PromptError for a line that cannot be a
    message (not UTF-8, too long); a too-long line is read to its end so the next line starts clean."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None or sys.stdin.isatty():       # a terminal: input() keeps line editing
        try:
            text = input(">>> ")
        except EOFError:
            return None
        except UnicodeDecodeError as e:
            return PromptError(f"line is not UTF-8 text (byte {e.start}); not sent")
        return text if len(text) <= max_chars else PromptError(f"line is over {max_chars:,} characters; not sent")
    click.echo(">>> ", nl=False)
    raw = stream.readline(4 * max_chars + 1)
    if not raw:
        return None
    if len(raw) > 4 * max_chars and not raw.endswith(b"\n"):
        while (more := stream.readline(1 << 16)) and not more.endswith(b"\n"):
            pass
        return PromptError(f"line is over {max_chars:,} characters; not sent")
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as e:
        return PromptError(f"line is not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); not sent")
    if len(text) > max_chars:
        return PromptError(f"line is over {max_chars:,} characters; not sent")
    return text


@main.command()
@click.argument("path", required=False, type=click.Path(exists=True, file_okay=False))
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
    if not os.path.isdir(folder):
        raise click.BadParameter(f"folder {folder!r} does not exist", param_hint="DIR")
    tok = Tokenizer.from_pretrained(folder)
    ids = tok.encode(args[-1])
    click.echo(f"{len(ids)} tokens")
    for i in ids:
        click.echo(f"{i:>8}  {tok.piece(i)}")


@main.command("make-tiny")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--preset", default="tiny", show_default=True, type=click.Choice(TINY_PRESETS),
              help="Random weights in the released layout, of this size.")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed for the random weights.")
@click.option("--shards", default=2, show_default=True, type=click.IntRange(1, 999),
              help="Number of safetensors shards.")
@FORCE
def make_tiny_cmd(out, preset, seed, shards, force):
    """Write a small random checkpoint in exactly the released layout (for tests and experiments).

    OUT must be new or an empty folder; --force writes into a non-empty one, replacing the files it writes
    (each written under a temporary name and renamed, never through a symlink)."""
    from k25ref.make_tiny import make_tiny
    make_tiny(out, preset, seed=seed, shards=shards, force=force)
    click.echo(f"wrote {out}")


@main.command("inspect-image")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@FORCE
@click.option("--plot", type=OutputFile(".png"), help="Also save a picture of the patch grid and its 2x2 "
                                                    "merge groups to this .png file.")
def inspect_image(path, force, plot):
    """How MoonViT sees an image: original, resized and padded sizes, patch grid and token count."""
    from k25ref import media
    if plot:
        from k25ref.files import atomic_path
        with atomic_path(plot) as tmp:               # complete or absent; a symlink there is replaced, not followed
            info = media.plot_patch_grid(path, tmp)
    else:
        info = media.describe_image(path)
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
