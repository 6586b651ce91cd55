"""Fuzzing the command line: every command, its options' values and the kinds of file its paths name.

For each example (hypothesis draws the options, their values -- in range, out of range, NaN, huge, not
numbers -- and for every path a file of some kind: valid, empty, random bytes, a folder, a FIFO, /dev/zero,
a dangling symlink, a missing parent...), the command runs through click's runner in this process and must:

  * exit 0, or exit with a documented code (docs/trust.md) after exactly one `k25ref: error:` line;
  * never raise out of the command (no traceback);
  * finish in bounded time (an alarm stops a hang) and memory (the address space is capped while fuzzing);
  * touch no file but the outputs it was asked to write: every other file of the sandbox -- including the
    targets of symlinks planted where outputs go -- keeps its bytes.

`pytest -m fuzz tests/test_cli_fuzz.py` runs a few derandomized examples per command (CI);
`K25REF_FUZZ_EXAMPLES=3000 pytest -m fuzz tests/test_cli_fuzz.py` a long random run.
"""
import contextlib
import hashlib
import os
import pathlib
import resource
import shutil
import signal
import time

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from k25ref.cli import main
from k25ref.make_tiny import make_tiny

pytestmark = pytest.mark.fuzz
LONG = "K25REF_FUZZ_EXAMPLES" in os.environ
EXAMPLES = int(os.environ.get("K25REF_FUZZ_EXAMPLES", 12))
fuzz = settings(max_examples=EXAMPLES, deadline=None, derandomize=not LONG, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
DOCUMENTED = {0, 1, 2, 3, 4, 5, 6, 7}        # docs/trust.md: ok, OS, usage, config, checkpoint, media, prompt, numerics
SECONDS = 120                                # per example: the slowest valid run here takes a few seconds
ADDRESS_SPACE = 6 * 2**30                    # added to what the process already maps
EXAMPLES_DIR = pathlib.Path(__file__).parents[1] / "examples"


# ----------------------------------------------------------------------------
# the sandbox: files of every kind, and places outputs may go


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("clifuzz")
    (root / "in").mkdir()
    (root / "out").mkdir()
    (root / "protected").mkdir()
    inputs = root / "in"
    shutil.copy(EXAMPLES_DIR / "red_circle.png", inputs / "image.png")
    shutil.copy(EXAMPLES_DIR / "moving_square.gif", inputs / "video.gif")
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "random.bin").write_bytes(np.random.default_rng(0).bytes(3000))
    (inputs / "text.txt").write_text("hello\n")
    (inputs / "folder").mkdir()
    os.mkfifo(inputs / "fifo")
    os.symlink("/dev/zero", inputs / "zero")
    os.symlink(root / "nowhere", inputs / "dangling")
    make_tiny(str(inputs / "ckpt"), "tiny", seed=5, shards=2)                    # with the bundled tokenizer
    make_tiny(str(inputs / "plain"), "tiny-plain", seed=5, shards=1)             # no tokenizer
    shutil.copytree(inputs / "ckpt", inputs / "ckpt_fifo")
    os.remove(inputs / "ckpt_fifo" / "tokenizer_config.json")
    os.mkfifo(inputs / "ckpt_fifo" / "tokenizer_config.json")
    damaged = {"ckpt_zero_config": lambda d: (os.remove(d / "config.json"), os.symlink("/dev/zero", d / "config.json")),
               "ckpt_nan_config": lambda d: (d / "config.json").write_text(
                   (d / "config.json").read_text().replace('"rope_theta": 50000.0', '"rope_theta": NaN')),
               "ckpt_cut_shard": lambda d: os.truncate(d / "model-00001-of-00002.safetensors", 4000),
               "ckpt_index_only": lambda d: [os.remove(p) for p in d.glob("*.safetensors")],
               "ckpt_inf_norm": lambda d: poison_norm(d)}
    for name, damage in damaged.items():
        shutil.copytree(inputs / "ckpt", inputs / name)
        damage(inputs / name)
    (root / "protected" / "target").write_text("not yours")
    for name in ("link.png", "link.json"):
        os.symlink(root / "protected" / "target", root / "out" / name)
    (root / "out" / "exists.png").write_text("mine")
    (root / "out" / "exists.json").write_text("mine")
    (root / "out" / "full").mkdir()
    (root / "out" / "full" / "notes.txt").write_text("mine")
    os.symlink(root / "protected" / "target", root / "out" / "full" / "config.json")
    return root


def poison_norm(d):
    """Layer 1's post-attention norm weights all +inf (BF16 0x7F80): the forward pass turns non-finite there."""
    import json
    import struct
    name = "language_model.model.layers.1.post_attention_layernorm.weight"
    shard = d / json.loads((d / "model.safetensors.index.json").read_text())["weight_map"][name]
    raw = bytearray(shard.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    begin, end = json.loads(raw[8:8 + n])[name]["data_offsets"]
    raw[8 + n + begin:8 + n + end] = np.full((end - begin) // 2, 0x7F80, "<u2").tobytes()
    shard.write_bytes(bytes(raw))


def inputs(kinds):
    """A path strategy over input kinds (names under in/), plus missing files and folders."""
    return st.sampled_from(list(kinds) + ["missing", "no/such/parent/x"]).map(lambda k: ("in", k))


FILES = inputs(["image.png", "video.gif", "empty.png", "random.bin", "text.txt", "folder", "fifo", "zero",
                "dangling", "ckpt/config.json"])
FOLDERS = inputs(["ckpt", "plain", "ckpt_fifo", "ckpt_zero_config", "ckpt_nan_config", "ckpt_cut_shard",
                  "ckpt_index_only", "ckpt_inf_norm", "folder", "fifo", "zero", "text.txt"])
OUTPUTS = st.sampled_from(["new.png", "new.json", "new", "new.png.txt", "exists.png", "exists.json", "link.png",
                           "link.json", "full", "no/such/x.png", ".", "new.PNG"]).map(lambda k: ("out", k))
MAKE_TINY_OUT = st.sampled_from(["fresh", "full", "exists.png", "no/such/x", "link.png"]).map(lambda k: ("out", k))

# option values: valid ones (half the draws, so whole command lines get past parsing), edges, and junk
JUNK = st.sampled_from(["", "x", "nan", "inf", "-inf", "1e400", "-1", "0x10", "1_000", " 3", "1.5", "\u0663"])


def values(*valid):
    return st.one_of(st.sampled_from(valid), JUNK)


COUNT = values("0", "1", "2", str(2**31), str(2**64), str(-2**63), "-5")
SMALL = st.one_of(st.sampled_from(["0", "1", "2", "3", "-3"]),     # counts whose large values mean long work
                  JUNK.filter(lambda v: v != "1_000"))              # (click reads 1_000 as a thousand)
FLOAT = st.one_of(values("0", "1e-320", "1e308", "0.5", "1", "2", "-0.0"), st.floats().map(repr))
SEED = values("0", "7", str(2**63 - 1), str(2**63), str(2**64), "-1")
SIZE = values("4G", "4GB", "512MiB", "1e9", "0", "5", "10MB", "1 GiB", "4X", "1e30GB", "-1GB")
TEXT = st.one_of(st.sampled_from(["", " ", "ROMEO:", "<|im_end|>", "-", "\x00", "a" * 3000]),
                 st.text(max_size=20).filter(lambda t: "\x00" not in t))

COMMANDS = {  # command -> (positional arguments strategy, {option: value strategy}, flags)
    "generate": (st.lists(TEXT, max_size=1), {
        "--model": FOLDERS, "-n": SMALL, "--temp": FLOAT, "--top-p": FLOAT, "--top-k": COUNT, "--seed": SEED,
        "--system": TEXT, "--max-memory": SIZE, "--backend": st.sampled_from(["numpy", "numba", "torch"]),
        "--image": FILES, "--video": FILES}, ["--think", "--raw", "--stats"]),
    "chat": (st.just([]), {"--model": FOLDERS, "-n": SMALL, "--temp": FLOAT, "--seed": SEED, "--system": TEXT},
             ["--think", "--hide-thinking"]),
    "inspect": (st.lists(FOLDERS, max_size=1), {}, []),
    "tokenize": (st.lists(st.one_of(TEXT, FOLDERS), min_size=0, max_size=3), {"--model": FOLDERS}, []),
    "make-tiny": (st.tuples(MAKE_TINY_OUT).map(list), {
        "--preset": st.sampled_from(["tiny", "tiny-plain", "tiny-groups", "full", "huge", ""]),
        "--seed": SEED, "--shards": COUNT}, ["--force"]),
    "inspect-image": (st.tuples(FILES).map(list), {"--plot": OUTPUTS}, ["--force"]),
    "eval-nano": (st.just([]), {"--model": FOLDERS, "--images": SMALL, "--videos": SMALL,
                                "--text-tokens": SMALL, "--seed": SEED, "--json": OUTPUTS}, ["--force"]),
    "swarm run": (st.lists(st.one_of(st.sampled_from(["wide", "deep", "mixed", "read", "nope"]), FOLDERS),
                           max_size=1), {
        "--policy": st.sampled_from(["single", "swarm-static", "x"]), "-K": COUNT, "--seed": SEED,
        "-B": COUNT, "--overflow": st.sampled_from(["queue", "reject", "drop"]), "--deadline": COUNT,
        "--gantt": OUTPUTS, "--trace": OUTPUTS}, ["--quick", "--fail-fast", "--force"]),
    "swarm bench": (st.just([]), {"--seeds": SMALL, "-K": SMALL, "--plot": OUTPUTS},
                    ["--quick", "--json", "--force"]),
    "swarm demo": (st.just([]), {"--iterations": values("4", "5", "10", "0", str(2**40)),
                                 "--seed": SEED}, []),
    "swarm export": (st.tuples(MAKE_TINY_OUT).map(list), {"--seeds": SMALL}, ["--quick", "--force"]),
}
SLOW_WITHOUT = {"eval-nano": ("--images", "--videos", "--text-tokens"), "swarm bench": ("--quick",),
                "swarm run": ("--quick",)}   # these always pass small values, or the example would run for minutes


@st.composite
def command_lines(draw, command):
    positional, options, flags = COMMANDS[command]
    argv = command.split()
    for flag in draw(st.lists(st.sampled_from(flags), unique=True)) if flags else []:
        argv.append(flag)
    chosen = draw(st.lists(st.sampled_from(sorted(options)), unique=True)) if options else []
    for option in chosen:
        argv += [option, draw(options[option])]
    for needed in SLOW_WITHOUT.get(command, ()):
        if needed not in argv:
            argv += [needed] if needed.startswith("--quick") else [needed, "1"]
    return argv + draw(positional)


# ----------------------------------------------------------------------------
# running one example


def resolve(argv, root):
    """Sandbox path tuples -> paths; also -> the outputs the command may write (given as output options)."""
    out, outputs = [], set()
    for k, a in enumerate(argv):
        if isinstance(a, tuple):
            path = str(root / a[0] / a[1])
            out.append(path)
            if a[0] == "out":
                outputs.add(os.path.normpath(path))
        else:
            out.append(a)
    return out, outputs


def snapshot(root):
    """{path: sha256 of its bytes, or '-> target' for a symlink} for every file and symlink under root."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            p = os.path.join(folder, name)
            if os.path.islink(p):
                state[p] = "-> " + os.readlink(p)
            elif os.path.isfile(p):
                state[p] = hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest()
    return state


WRITTEN_NAMES = ("config.json", "model.safetensors.index.json", "tiktoken.model", "tokenizer_config.json",
                 "tasks.jsonl")         # what make-tiny and swarm export write into their folder (+ shards, gold)


def owned(path, outputs, before):
    """Is `path` the command's to write? An output file itself; inside an output folder, a new file or one
    of the names the command writes there (a user's other files in that folder are not its own)."""
    for o in outputs:
        if path == o:
            return True
        if path.startswith(o + os.sep):
            name = os.path.basename(path)
            return (path not in before or name in WRITTEN_NAMES or name.endswith(".safetensors")
                    or os.sep + "gold" + os.sep in path)
    return False


def saved_outputs(root):
    """The bytes or link targets of everything under out/, to put back after each example."""
    saved = {}
    for folder, dirs, files in os.walk(root / "out"):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            p = os.path.join(folder, name)
            saved[p] = ("link", os.readlink(p)) if os.path.islink(p) else ("bytes", pathlib.Path(p).read_bytes())
    return saved


def restore(root, saved, folders):
    """Put out/ back as it was: remove new files and folders, restore changed ones."""
    for folder, dirs, files in os.walk(root / "out", topdown=False):
        for name in files + dirs:
            p = os.path.join(folder, name)
            if p not in saved and not (name in dirs and p in folders and not os.path.islink(p)):
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
    for p, (kind, value) in saved.items():
        if kind == "link" and (not os.path.islink(p) or os.readlink(p) != value):
            if os.path.lexists(p):
                os.remove(p)
            os.symlink(value, p)
        elif kind == "bytes" and (os.path.islink(p) or not os.path.isfile(p) or pathlib.Path(p).read_bytes() != value):
            if os.path.lexists(p):
                os.remove(p)
            pathlib.Path(p).write_bytes(value)


@contextlib.contextmanager
def limits():
    """An alarm against hangs and an address-space cap against unbounded allocation, for one example."""
    def hang(signum, frame):
        raise TimeoutError(f"no answer within {SECONDS} s")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    cap = mapped + ADDRESS_SPACE if hard == resource.RLIM_INFINITY else min(hard, mapped + ADDRESS_SPACE)
    previous = signal.signal(signal.SIGALRM, hang)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    signal.alarm(SECONDS)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def check(command, argv, root, stdin=None):
    args, outputs = resolve(argv, root)
    before, saved = snapshot(root), saved_outputs(root)
    folders = {os.path.join(f, d) for f, ds, _ in os.walk(root / "out") for d in ds}
    start = time.monotonic()
    try:
        with limits():
            r = CliRunner().invoke(main, args, input=stdin)
        seconds = time.monotonic() - start
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, repr(r.exception))
        assert r.exit_code in DOCUMENTED, (args, r.exit_code, r.output[-500:])
        assert "Traceback" not in r.output, (args, r.output[-2000:])
        errors = [line for line in r.stderr.split("\n") if "k25ref: error:" in line]
        if r.exit_code:
            last = r.stderr.rstrip("\n").split("\n")[-1].split("\r")[-1]
            assert last.startswith("k25ref: error: "), (args, r.stderr[-1000:])
            assert command == "chat" or len(errors) == 1, (args, r.stderr[-1000:])
        else:
            assert command == "chat" or not errors, (args, r.stderr[-1000:])
        assert seconds < SECONDS, (args, seconds)
        after = snapshot(root)
        changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
        foreign = {p for p in changed if not owned(os.path.normpath(p), outputs, before)}
        assert not foreign, (args, sorted(foreign))
        assert r.exit_code == 0 or not [p for p in changed if p not in before], (args, "a failed command left files")
        assert not [p for p in after if ".tmp" in os.path.basename(p)], (args, "a temporary file was left")
        return r.exit_code
    finally:
        restore(root, saved, folders)


# ----------------------------------------------------------------------------
# one test per command


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "chat"])
def test_command_line_fuzz(command, sandbox):
    seen = []

    @fuzz
    @given(command_lines(command))
    def run(argv):
        seen.append(check(command, argv, sandbox))
    run()
    report(command, seen)


def report(command, codes):
    """How many examples ran and how they ended (hypothesis stops early once a small space is exhausted)."""
    counts = {code: codes.count(code) for code in sorted(set(codes))}
    print(f"\n{command}: {len(codes)} examples, exit codes {counts}")


CHAT_LINES = st.lists(st.one_of(st.sampled_from([b"hello", b"/reset", b"", b"\xff\xfe", b"x" * 100_001,
                                                 b"<|im_end|>", b"/exit", b"\x00"]),
                                st.binary(max_size=30).filter(lambda b: b"\n" not in b)), max_size=4)


def test_chat_fuzz(sandbox):
    seen = []

    @fuzz
    @given(command_lines("chat"), CHAT_LINES)
    def run(argv, lines):
        seen.append(check("chat", argv, sandbox, stdin=b"\n".join(lines) + (b"\n" if lines else b"")))
    run()
    report("chat", seen)
