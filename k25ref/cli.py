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

from k25ref import __version__
from k25ref.errors import K25RefError, PromptError
from k25ref.files import atomic_path
from k25ref.make_tiny import PRESETS
from k25ref.model import PREFILL_CHUNK, default_model_path
from k25ref.options import FORCE, SEED, Finite, OutputFile, Size

DEFAULT_PROMPT = "ROMEO:"
DEPARTS = 8                             # `conform`: the runtime left a bar (not an error of the input)
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
@click.version_option(__version__, "--version", "-V", message="k25ref %(version)s")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or notices on stderr (results and errors "
                                                  "still print); bars are drawn only on a terminal anyway.")
def main(quiet):
    """k25ref: a readable, exact NumPy reference of Kimi K2.5 you can step through.

    \b
    Try:   k25ref generate                 (the embedded tiny model, no download)
           k25ref inspect                  (what a checkpoint holds, from headers only)
           k25ref make-tiny /tmp/tiny      (write a random checkpoint in the released layout)
    """
    from k25ref import progress
    progress.quiet(quiet)


prefill_chunk_option = click.option(
    "--prefill-chunk", default=PREFILL_CHUNK, show_default=True, type=click.IntRange(min=1),
    help="Prompt tokens run through the layers at a time: memory for activations and attention grows with it, "
         "not with the prompt (docs/long-context.md).")
model_option = click.option("--model", "-m", "model_dir", type=click.Path(exists=True, file_okay=False), default=None,
                            help="Checkpoint folder in the released layout (config.json, index, shards, tokenizer). "
                                 "Default: the embedded tiny model, Kimi-K2.5-nano (6.4 M parameters, trained on "
                                 "Shakespeare and synthetic shapes).")


def _open(model_dir, memory_budget=None, backend="auto"):
    """(model, tokenizer) for a folder, with a progress bar over shard headers."""
    from k25ref.model import load_model
    from k25ref.tokenizer import Tokenizer
    path = model_dir or default_model_path()
    model = load_model(path, memory_budget=memory_budget, progress=True, backend=backend)
    tok = Tokenizer.from_pretrained(path)
    tok.require_vocabulary(model.cfg.text.vocab_size, path)
    return model, tok


FIRST_COMPILE = "about 20-40 s on 2 cores"     # `NUMBA_CACHE_DIR=$(mktemp -d) k25ref warmup` (docs/kernels.md)


def _prepare_kernels(model):
    """The model's kernels compiled (or loaded from the cache) before the clock starts; say so if it takes long."""
    import threading
    from k25ref.progress import notice as say
    if model.ops.name != "numba":
        return
    done = threading.Event()
    notice = threading.Timer(2.0, lambda: done.is_set() or say(
        f"compiling kernels (first run only, {FIRST_COMPILE}; `k25ref warmup` does it ahead)..."))
    notice.start()
    try:
        model.ops.prepare()
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
@click.option("--backend", type=click.Choice(["auto", "numba", "numpy"]), default="auto", show_default=True,
              help=f"numba: the compiled kernels (fast; the first run compiles them, {FIRST_COMPILE}, then they are "
                   "cached); numpy: the plain reference; auto: numba, or numpy under NUMBA_DISABLE_JIT=1 "
                   "(K25REF_BACKEND replaces auto). Both give the same tokens.")
@click.option("--image", "images", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="An image to show the model (repeatable); it comes before the prompt text.")
@click.option("--video", "videos", multiple=True, type=click.Path(exists=True, dir_okay=False),
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
    model, tok = _open(model_dir, max_memory, backend)
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
    tokens = model.generate(ids, max_tokens, temperature=temp, top_p=top_p, top_k=top_k, seed=seed,
                            prefill_chunk=prefill_chunk, progress=True, **kw)   # checks the prompt
    _prepare_kernels(model)
    t0 = time.perf_counter()
    new, first = _stream(tokens, TextStream(tok, sys.stdout))
    t1 = time.perf_counter()
    click.echo("", err=False)
    n = len(new)
    prompt_rate = f"{len(ids) / max(first - t0, 1e-9):.1f} tokens/s" if n else "not run (no new tokens asked)"
    click.echo(f"prompt: {len(ids)} tokens, {prompt_rate} | generation: {n} tokens, "
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
@prefill_chunk_option
def chat(model_dir, system, think, show_thinking, max_tokens, temp, seed, prefill_chunk):
    """An interactive multi-turn chat, replies streamed as they are generated. Type /reset to forget the
    history, /exit (or Ctrl-D) to leave.

    A line that is not UTF-8 or longer than 100,000 characters is refused on its own; the chat goes on."""
    from k25ref.chat import parse_output
    model, tok = _open(model_dir)
    _prepare_kernels(model)
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
            shown = ReplyOut(think, show_thinking)
            new, _ = _stream(model.generate(ids, max_tokens, temperature=temp, seed=seed,
                                            prefill_chunk=prefill_chunk), TextStream(tok, shown))
            shown.end()
        except PromptError as e:                        # this turn's error; the history stays as it was
            click.echo(f"k25ref: error: {e}", err=True)
            continue
        history.append({"role": "user", "content": line})
        reply = parse_output(("<think>" if think else "<think></think>") + tok.decode(new))
        history.append({"role": "assistant", "content": reply.content, "reasoning_content": reply.reasoning})


def _stream(tokens, out: TextStream):  # -> (token ids, time.perf_counter() of the first, None without any)
    """Write each token to `out` as it arrives."""
    new, first = [], None
    for token in tokens:
        first = first or time.perf_counter()
        new.append(token)
        out.write(token)
    out.close()
    return new, first


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


class ReplyOut:
    """Where chat's TextStream writes: reasoning dimmed (or hidden), then the reply, as the text arrives."""

    def __init__(self, think, show_thinking):
        from k25ref.chat import ReplySplitter
        self.split, self.show_thinking, self.last = ReplySplitter(think), show_thinking, None

    def write(self, text):
        self._show(self.split.feed(text))

    def flush(self):
        sys.stdout.flush()

    def end(self):
        """The reply is over: its held-back tail, then a newline."""
        self._show(self.split.close())
        click.echo("")

    def _show(self, pieces):
        for part, piece in pieces:
            if part == "reasoning" and not self.show_thinking:
                continue
            if self.last not in (None, part):
                click.echo("")
            click.secho(piece, dim=part == "reasoning", nl=False)
            self.last = part


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
    """Show the ids and pieces of TEXT: `k25ref tokenize TEXT` or `k25ref tokenize DIR TEXT` (TEXT '-' reads
    stdin)."""
    from k25ref.tokenizer import Tokenizer
    if len(args) > 2:
        raise click.UsageError("give TEXT, or DIR TEXT (quote text with spaces)")
    folder = args[0] if len(args) == 2 else (model_dir or default_model_path())
    if not os.path.isdir(folder):
        raise click.BadParameter(f"folder {folder!r} does not exist", param_hint="DIR")
    tok = Tokenizer.from_pretrained(folder)
    ids = tok.encode(_read_prompt(args[-1]) if args[-1] == "-" else args[-1])
    click.echo(f"{len(ids)} tokens")
    for i in ids:
        click.echo(f"{i:>8}  {tok.piece(i)}")


@main.command("make-tiny")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--preset", default="tiny", show_default=True, type=click.Choice(TINY_PRESETS + ("full-width",)),
              help="Random weights in the released layout: tiny | tiny-plain | tiny-groups | k25-context (K2.5's "
                   "RoPE/YaRN and 262144 positions at a small width, for long prompts), or full-width (the real "
                   "K2.5 tensor shapes, fewer layers and experts: several GB).")
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed for the random weights.")
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Number of safetensors shards, at most one per layer plus the parts outside the layers "
                   "[default: 2; full-width: that most, like the release].")
@click.option("--layers", type=click.IntRange(min=1), default=None,
              help="full-width only: text layers, the first dense (K2.5: 61) [default: 2].")
@click.option("--experts", type=click.IntRange(min=8), default=None,
              help="full-width only: routed experts, top-8 of them per token (K2.5: 384) [default: 8].")
@FORCE
def make_tiny_cmd(out, preset, seed, shards, layers, experts, force):
    """Write a random checkpoint in exactly the released layout, with a tokenizer (for tests and experiments).

    OUT must be new or an empty folder; --force writes into a non-empty one, replacing the files it writes
    (each written under a temporary name and renamed, never through a symlink)."""
    from k25ref.make_tiny import make_full_width, make_tiny
    if preset != "full-width" and (layers or experts):
        raise click.UsageError("--layers and --experts go with --preset full-width")
    if preset == "full-width":
        make_full_width(out, layers or 2, experts or 8, seed=seed, shards=shards, progress=True, force=force,
                        announce=click.echo)
    else:
        make_tiny(out, preset, seed=seed, shards=shards or 2, force=force)
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
        with atomic_path(plot) as tmp:               # complete or absent; a symlink there is replaced, not followed
            info = media.plot_patch_grid(path, tmp)
    else:
        info = media.describe_image(path)
    (w, h), (rw, rh), (pw, ph), (t, gh, gw) = (info[k] for k in ("original_size", "resized_size", "padded_size",
                                                                  "grid_thw"))
    click.echo(f"original       {w} x {h} px (width x height)")
    click.echo(f"resized        {rw} x {rh} px (width x height), to fit the patch limits")
    click.echo(f"padded         {pw} x {ph} px (width x height), to whole 28 px merge groups")
    click.echo(f"grid_thw       [{t}, {gh}, {gw}] (frames t, rows h, columns w of 14 px patches)")
    click.echo(f"patches        {info['patches']} (h x w)")
    click.echo(f"tokens         {info['tokens']} (one per 2 x 2 patch group)")
    if plot:
        click.echo(f"plot           {plot}")


@main.command()
def warmup():
    """Compile every Numba kernel now (or load it from the cache), so generation starts at once."""
    from k25ref.kernels import warmup as compile_all
    times = compile_all()
    for name, seconds in times.items():
        click.echo(f"{name:18} {seconds:.2f} s")
    click.echo(f"{'total':18} {sum(times.values()):.2f} s")


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
@FORCE
@click.argument("ckpt", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=OutputFile(".gguf"))
@click.option("--experts", type=click.Choice(["q4_0", "bf16", "f32"]), default=None,
              help="Routed experts: q4_0 repacks the INT4 codes bit for bit (a Q4_0 block is an INT4 group with "
                   "its scale as float16); bf16 / f32 write bf16(q * scale), the values k25ref computes with. "
                   "Default: q4_0 for INT4 experts, bf16 for BF16 ones.")
@click.option("--dense", type=click.Choice(["f32", "bf16", "f16"]), default="f32", show_default=True,
              help="Every other matrix: f32 (exact, and llama.cpp then multiplies in float32), bf16 (the stored "
                   "bits; llama.cpp rounds activations to bf16 for it) or f16 (rounded). Norms and the router "
                   "are always F32.")
def export_gguf_cmd(force, ckpt, out, experts, dense):
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
@click.option("--seed", default=0, show_default=True, type=SEED, help="Seed of the random inputs.")
@click.option("--greedy", "greedy_new", type=click.IntRange(min=0), default=32, show_default=True,
              help="Greedy tokens to compare from an 8-token prompt (0: none).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for machines).")
@FORCE
@click.option("--plot", type=OutputFile(".png"), help="Save a per-layer error plot to this .png file.")
@click.option("--save-dump", type=OutputFile(".npz"), help="Also save the runtime's outputs as a dump (.npz).")
def conform(ckpt, runtime, dump, gguf_path, experts, dense, kv_cache, threads, lengths, seed, greedy_new, as_json,
            plot, save_dump, force):
    """Check a runtime against k25ref on CKPT's test inputs, and say where it departs.

    CKPT is a checkpoint folder (random inputs, drawn as tools/make_goldens.py draws them) or a goldens
    case folder (tests/goldens/<case>: its committed inputs). For every input length: logits relative
    error, smallest cosine and argmax agreement, and -- where the runtime exposes them -- the first
    intermediate (embed, attn_out, router choice, mlp_out, hidden, final_norm) outside its bar; then
    greedy tokens up to k25ref's first near-tie. Exit 0 when every bar holds, 8 when the runtime departs.

    \b
    k25ref conform tests/goldens/yarn-groups -r llama.cpp --experts f32 --kv-cache f32
    k25ref conform CKPT -r k25ref --save-dump ref.npz    (the dump format, filled by k25ref)
    k25ref conform CKPT -r npz --dump theirs.npz --plot layers.png
    """
    from k25ref import conform as cf
    from k25ref.model import load_model
    lengths = _lengths(lengths)
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
        outputs = {} if save_dump else None
        report = cf.run(rt, model, inputs, progress=True, outputs=outputs)
        report["checkpoint"] = folder
        if save_dump:
            with atomic_path(save_dump) as tmp:          # complete or absent; a symlink there is replaced
                cf.save_dump(tmp, outputs, inputs)
    if plot:
        with atomic_path(plot) as tmp:
            cf.plot_layers(report, model.cfg.text, tmp)
    click.echo(cf.to_json(report) if as_json else "\n".join(cf.format_table(report)))
    sys.exit(0 if report["passed"] else DEPARTS)


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
        return cf.LlamaCpp(gguf_path, model.cfg.text, inputs, threads=threads,
                           kv_cache=kv_cache)

    def __exit__(self, *exc):
        if self.tmp is not None:
            self.tmp.cleanup()


if __name__ == "__main__":                     # python -m k25ref.cli, as the installed `k25ref`
    main(prog_name="k25ref")
