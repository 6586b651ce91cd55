"""Write docs/cli.md: `k25ref --help`, every command's --help, and example runs, all captured, never typed.

    python tools/make_cli_docs.py                # the whole page: --help blocks and the examples, run for real
    python tools/make_cli_docs.py --help-only    # only the --help blocks (seconds); the examples are kept as they are
    python tools/make_cli_docs.py --check        # exit 1 naming each --help that differs from docs/cli.md

After a merge that adds or changes options, `python tools/make_cli_docs.py --help-only` brings the page back in
line; `tests/test_cli_docs.py` fails until it does. The --help texts are captured in this process at a fixed
width (click's CliRunner, COLUMNS=100), so they are the same on every machine; the examples run in fresh
interpreters, so their timings are the machine's that ran them.
"""
import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)                                     # run from a checkout without installing
PAGE = os.path.join(ROOT, "docs", "cli.md")
EXAMPLES = "## Examples, run for real\n"
ENV = {"MPLBACKEND": "Agg", "COLUMNS": "100"}

HEADER = [
    "# The `k25ref` command line\n",
    "Written by `python tools/make_cli_docs.py` from the commands themselves: every `--help` below is captured, and "
    "every example was run for real (timings are from the machine that ran it). Edit the commands or the tool, "
    "not this page; `python tools/make_cli_docs.py --help-only` refreshes the help blocks alone. The embedded model "
    "is the trained Kimi-K2.5-nano ([nano.md](nano.md)): 6.4 M parameters, so its text is Shakespeare-shaped "
    "rather than sensible.\n",
    "The commands are thin wrappers over library calls: [`k25ref/cli.py`](../k25ref/cli.py), and "
    "[`k25ref/swarm/cli.py`](../k25ref/swarm/cli.py) for `k25ref swarm`. Work that takes more than a second shows a "
    "progress bar on stderr when stderr is a terminal ([`k25ref/progress.py`](../k25ref/progress.py)); "
    "`k25ref --quiet` hides bars and notices.\n",
    "Exit codes: 0 ok, 1 the system refused a read or write, 2 bad input or usage, 3 config, 4 checkpoint, "
    "5 media, 6 prompt, 7 numerics ([`k25ref/errors.py`](../k25ref/errors.py), [trust.md](trust.md)); "
    "8 from `conform` when the runtime departs from k25ref; 130 on Ctrl-C.\n",
]


def block(text, limit=40):
    """A fenced code block of `text`, cut to `limit` lines with a note of how many were left out."""
    lines = text.rstrip("\n").splitlines()
    if len(lines) > limit:
        lines = lines[:limit - 3] + ["...", f"({len(lines) - limit + 3} more lines)"] + lines[-1:]
    return "```\n" + "\n".join(lines) + "\n```\n"


def help_text(args):
    """`k25ref ARGS --help` as printed at COLUMNS=100 (click wraps at 78 there, argparse at 98)."""
    from click.testing import CliRunner
    from k25ref.cli import main
    saved = sys.argv[:]                                      # `bench` hands its arguments to tools/bench.py via argv
    try:
        result = CliRunner(env=ENV).invoke(main, [*args, "--help"], prog_name="k25ref", catch_exceptions=False,
                                           terminal_width=78)      # what click picks at COLUMNS=100
    finally:
        sys.argv[:] = saved
    return result.stdout


def help_sections():
    """{heading: block} for `k25ref --help` and every command's and subcommand's --help, in page order."""
    from k25ref.cli import main
    sections = {"## `k25ref --help`\n": block(help_text([]))}
    for name, cmd in sorted(main.commands.items()):
        for args in [[name]] + [[name, sub] for sub in sorted(getattr(cmd, "commands", {}))]:
            sections[f"### `k25ref {' '.join(args)} --help`\n"] = block(help_text(args), limit=60)
    return sections


def help_part():
    """The page above its examples: header, the top-level help, then every command's help."""
    sections = list(help_sections().items())
    return "\n".join(HEADER + [*sections[0], "## Commands\n"] + [text for pair in sections[1:] for text in pair])


# ----------------------------------------------------------------------------
# the examples: each runs in a fresh interpreter


def k25ref(args, stdin=None):
    """Run `k25ref ARGS` in a fresh interpreter; return (exit code, stdout, stderr)."""
    code = "import sys; from k25ref.cli import main; sys.exit(main(sys.argv[1:], prog_name=\"k25ref\"))"
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, input=stdin, capture_output=True, text=True,
                          env={**os.environ, **ENV})
    return proc.returncode, proc.stdout, proc.stderr


def progress_free(text):
    """Drop tqdm's progress lines (they redraw with carriage returns) from captured stderr."""
    bar = re.compile(r"\|\s*\d+/\d+ \[")
    return "\n".join(line for line in text.replace("\r", "\n").splitlines() if line.strip() and not bar.search(line))


def examples(tmp):
    """(heading, why, args, stdin) for each example run; run in this order (make-tiny before its users)."""
    tiny = os.path.join(tmp, "tiny")
    return [
        ("make-tiny", "A random checkpoint in the released layout, with a tokenizer (the image example below uses it).",
         ["make-tiny", tiny, "--preset", "tiny", "--shards", "2"], None),
        ("generate", "The embedded model continues a prompt, greedy by default. Text goes to stdout, speed to stderr.",
         ["generate", "ROMEO:", "-n", "24"], None),
        ("generate --raw --stats --max-memory", "No chat template, a 10 MB budget (the checkpoint is 7.8 MB; one "
         "forward pass's working set takes 7.5 MB of the budget, the rest caches weights), and the streaming counters.",
         ["generate", "--raw", "To be, or not to be", "-n", "12", "--stats", "--max-memory", "10MB"], None),
        ("generate --image", "An image before the prompt (needs a checkpoint with a vision tower: the tiny preset).",
         ["generate", "-m", tiny, "--image", "examples/red_circle.png", "What is this?", "-n", "8"], None),
        ("chat", "A multi-turn chat on stdin, replies streamed as they are generated; /exit leaves.",
         ["chat", "-n", "12"], "Who art thou?\n/exit\n"),
        ("inspect", "What a checkpoint holds, from headers only (here: the embedded model).", ["inspect"], None),
        ("tokenize", "Ids and pieces of a text under the embedded tokenizer ('-' reads the text from stdin).",
         ["tokenize", "Wherefore art thou?"], None),
        ("inspect-image", "How MoonViT sees an image: sizes, grid and token count.",
         ["inspect-image", "examples/red_circle.png"], None),
        ("swarm run", "One toy Agent Swarm episode (docs/swarm.md).", ["swarm", "run", "wide", "--quick", "-K", "8"], None),
        ("swarm demo", "PARL in miniature: serial collapse with r_perf alone, parallelism with r_parallel.",
         ["swarm", "demo", "--iterations", "100"], None),
        ("errors", "Bad input is one line on stderr and an exit code, never a traceback.",
         ["generate", "-m", os.path.join(tmp, "no-such-folder")], None),
    ]


def examples_part():
    """The examples section, every command run now, after `k25ref warmup` (so the kernel cache is warm)."""
    k25ref(["warmup"])
    out = [EXAMPLES, f"Run on {platform.machine()}, {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} "
                     "when this page was written), Numba kernel cache warm (`k25ref warmup` ran first): speeds "
                     "vary with the machine and its load.\n"]
    with tempfile.TemporaryDirectory() as tmp:
        for heading, why, args, stdin in examples(tmp):
            code, stdout, stderr = k25ref(args, stdin)
            shown = " ".join(a if " " not in a else repr(a) for a in args).replace(tmp, "/tmp/k25ref-docs")
            text = (stdout + ("\n[stderr]\n" + progress_free(stderr) if progress_free(stderr) else "")).replace(
                tmp, "/tmp/k25ref-docs")
            out += [f"### {heading}\n", why + "\n", f"`k25ref {shown}`" + (f" (stdin: `{stdin!r}`)" if stdin else "")
                    + f" -> exit code {code}\n", block(text)]
    return "\n".join(out)


def split_page(text):
    """docs/cli.md -> (the part above the examples, the examples section)."""
    at = text.find(EXAMPLES)
    return (text, "") if at < 0 else (text[:at], text[at:])


def stale_helps(page=PAGE):
    """Headings of the --help blocks that differ from (or are missing in, or are extra to) the page."""
    with open(page, encoding="utf-8") as f:
        documented = split_page(f.read())[0]
    fresh = help_sections()
    shown = dict(re.findall(r"^(#+ `k25ref[^`]*--help`\n)\n(```\n.*?\n```\n)", documented, re.M | re.S))
    return sorted({h for h in fresh if shown.get(h) != fresh[h]} | (set(shown) - set(fresh)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--help-only", action="store_true", help="rewrite the --help blocks, keep the examples")
    mode.add_argument("--check", action="store_true", help="exit 1 if any --help differs from docs/cli.md")
    a = ap.parse_args()
    if a.check:
        stale = stale_helps()
        for heading in stale:
            print(f"docs/cli.md: {heading.strip()} differs from the command", file=sys.stderr)
        sys.exit(1 if stale else 0)
    kept = ""
    if a.help_only:
        with open(PAGE, encoding="utf-8") as f:
            kept = split_page(f.read())[1]
    text = help_part() + "\n" + (kept or examples_part())
    with open(PAGE, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"wrote {os.path.relpath(PAGE, ROOT)}" + (" (help blocks; examples kept)" if a.help_only else ""))


if __name__ == "__main__":
    main()
