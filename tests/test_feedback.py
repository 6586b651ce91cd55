"""What a newcomer meets: progress bars on long work, streamed chat, make-tiny presets that run, clear small errors."""
import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from k25ref import progress
from k25ref.chat import ReplySplitter, parse_output
from k25ref.cli import main
from k25ref.errors import K25RefError, MediaError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


class Terminal(io.StringIO):
    """A stderr that says it is a terminal, so tqdm draws on it."""

    def isatty(self):
        return True


@pytest.fixture
def terminal(monkeypatch):
    """Bars appear at once, on a stderr that is a terminal: `with terminal as err:` (pytest's capture would undo a
    sys.stderr set before the test body, so it is set on entry)."""
    monkeypatch.setattr(progress, "DELAY", 0.0)
    monkeypatch.setattr(progress, "QUIET", False)
    monkeypatch.setenv("COLUMNS", "100")                  # tqdm's width for a stream without a terminal size
    monkeypatch.setenv("LINES", "24")
    return contextlib.redirect_stderr(Terminal())


# ----------------------------------------------------------------------------
# progress bars


def test_a_bar_draws_on_a_terminal_only(terminal, monkeypatch):
    with terminal as err:
        list(progress.bar(range(3), desc="counting"))
    assert "counting:   0%" in err.getvalue() and "| 0/3 [" in err.getvalue()
    with contextlib.redirect_stderr(io.StringIO()) as piped:
        list(progress.bar(range(3), desc="counting"))
    assert piped.getvalue() == ""


def test_a_bar_draws_while_a_long_first_step_runs(terminal, monkeypatch):
    import time
    monkeypatch.setattr(progress, "DELAY", 0.2)
    with terminal as err:
        for _ in progress.bar(range(2), desc="slow"):
            time.sleep(0.6)
            during = err.getvalue()
            break
    assert "slow:   0%" in during


def test_quiet_silences_bars_and_notices(terminal):
    with terminal as err:
        progress.quiet(True)
        try:
            list(progress.bar(range(3), desc="counting"))
            progress.notice("compiling")
        finally:
            progress.quiet(False)
        assert err.getvalue() == ""
        progress.notice("compiling")
    assert err.getvalue() == "compiling\n"


def test_k25ref_quiet_sets_quiet_for_the_command(monkeypatch):
    seen = []
    monkeypatch.setattr("k25ref.cli.inspect.callback", lambda path: seen.append(progress.QUIET))
    try:
        assert run("--quiet", "inspect").exit_code == 0
    finally:
        progress.quiet(False)
    assert seen == [True]


def test_eval_nano_shows_a_bar_per_text_window_image_and_video(terminal):
    from k25ref.nano_eval import NANO_PATH, caption_accuracy, text_losses
    from k25ref.model import load_model
    from k25ref.tokenizer import Tokenizer
    model, tok = load_model(NANO_PATH), Tokenizer.from_pretrained(NANO_PATH)
    with terminal as err:
        text_losses(model, tok, window=32, max_tokens=64)
        caption_accuracy(model, tok, 1, "image")
        caption_accuracy(model, tok, 1, "video")
    shown = err.getvalue()
    assert "held-out text" in shown and "/2 [" in shown
    assert "image captions" in shown and "video captions" in shown


def test_the_vision_encoder_shows_a_bar_per_block(terminal):
    from k25ref.media import preprocess_image
    from k25ref.model import default_model_path, load_model
    from k25ref.moonvit import vision_config
    model = load_model(default_model_path())
    pv, grid = preprocess_image(np.zeros((56, 84, 3), np.uint8))
    with terminal as err:
        model.vision_features(pv, grid)
    blocks = vision_config(model.cfg).num_hidden_layers
    assert "vision encoder (24 patches)" in err.getvalue() and f"/{blocks} [" in err.getvalue()


def test_shard_headers_show_a_bar(terminal, tmp_path):
    from k25ref.make_tiny import make_tiny
    from k25ref.model import load_model
    folder = make_tiny(str(tmp_path / "t"), "tiny", shards=4)
    with terminal as err:
        load_model(folder, progress=True)
    assert "reading shard headers" in err.getvalue() and "/4 [" in err.getvalue()


def test_the_compile_notice_shows_when_compiling_takes_long(capsys):
    import time
    from types import SimpleNamespace
    from k25ref import cli
    model = lambda name, seconds: SimpleNamespace(ops=SimpleNamespace(name=name, prepare=lambda: time.sleep(seconds)))
    cli._prepare_kernels(model("numba", 2.5))
    assert "compiling kernels (first run only" in capsys.readouterr().err
    cli._prepare_kernels(model("numba", 0))
    cli._prepare_kernels(model("numpy", 2.5))                      # the reference has nothing to compile
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------
# chat: compiled up front, streamed


def test_chat_prepares_the_kernels_before_the_first_reply(monkeypatch):
    calls = []
    monkeypatch.setattr("k25ref.cli._prepare_kernels", lambda model: calls.append(1))
    r = run("chat", "-n", "4", input="Hello\n/exit\n")
    assert r.exit_code == 0 and calls == [1]


def test_chat_writes_each_token_as_it_is_generated(monkeypatch):
    """While the model is still generating, the reply's first tokens are already on stdout."""
    from k25ref.model import Model
    original, seen = Model.generate, []

    def watched(self, *args, **kwargs):
        for k, token in enumerate(original(self, *args, **kwargs)):
            if k == 4:
                sys.stdout.flush()
                seen.append(sys.stdout.buffer.getvalue().decode())
            yield token
    monkeypatch.setattr(Model, "generate", watched)
    r = run("chat", "-n", "12", input="Who art thou?\n/exit\n")
    assert r.exit_code == 0
    reply = r.stdout.split(">>> ")[1]
    assert len(seen) == 1 and seen[0].startswith(">>> ") and len(seen[0]) > len(">>> ")
    assert reply.startswith(seen[0][len(">>> "):])


def test_chat_reply_equals_the_generated_text():
    """The streamed reply is the greedy continuation that generate prints for the same turn."""
    chat = run("chat", "-n", "12", input="Who art thou?\n/exit\n").stdout.split(">>> ")[1].strip()
    generate = run("generate", "Who art thou?", "-n", "12").stdout.strip()
    assert chat == generate


@pytest.mark.parametrize("text", ["Let me see.</think>It is 4.", "  plan </think>\n answer", "no close at all",
                                  "</think>only content", "a</thin", "x</think>y</think>z"])
@pytest.mark.parametrize("thinking", [True, False])
def test_reply_splitter_agrees_with_parse_output_for_every_split(text, thinking):
    """Fed in two pieces at every cut (a tag may be split anywhere), the streamed parts equal parse_output's."""
    expected = parse_output(text, thinking=thinking)
    for cut in range(len(text) + 1):
        splitter = ReplySplitter(thinking)
        pieces = splitter.feed(text[:cut]) + splitter.feed(text[cut:]) + splitter.close()
        got = {part: "".join(t for p, t in pieces if p == part) for part in ("reasoning", "content")}
        assert got["reasoning"].strip() == expected.reasoning.strip(), (cut, pieces)
        assert got["content"].strip() == expected.content.strip(), (cut, pieces)
        assert all(t for _, t in pieces)


def test_hide_thinking_streams_only_the_reply(monkeypatch):
    from k25ref.model import Model

    def scripted(self, ids, *args, **kwargs):
        from k25ref.tokenizer import Tokenizer
        yield from Tokenizer.bundled().encode("secret plan</think>the answer")
    monkeypatch.setattr(Model, "generate", scripted)
    shown = run("chat", "--think", "--show-thinking", input="q\n/exit\n").stdout
    hidden = run("chat", "--think", "--hide-thinking", input="q\n/exit\n").stdout
    assert "secret plan" in shown and "the answer" in shown
    assert "secret plan" not in hidden and "the answer" in hidden


# ----------------------------------------------------------------------------
# make-tiny


def _presets():
    from k25ref.make_tiny import PRESETS
    return sorted(p for p in PRESETS if p != "full")


@pytest.mark.parametrize("preset", _presets())
def test_every_preset_runs_through_generate_and_chat(preset, tmp_path):
    out = str(tmp_path / preset)
    assert run("make-tiny", out, "--preset", preset).exit_code == 0
    assert os.path.exists(os.path.join(out, "tiktoken.model"))
    g = run("generate", "-m", out, "hello", "-n", "3", "--seed", "1")
    assert g.exit_code == 0, g.output
    c = run("chat", "-m", out, "-n", "3", input="hello\n/exit\n")
    assert c.exit_code == 0, c.output


@pytest.mark.parametrize("vocab", [512, 1024, 4096, 163840])
def test_the_shipped_tokenizer_fits_the_vocabulary(vocab, tmp_path):
    from k25ref.make_tiny import ASSETS, copy_tokenizer
    from k25ref.tokenizer import Tokenizer
    copy_tokenizer(str(tmp_path), vocab)
    tok, bundled = Tokenizer.from_pretrained(tmp_path), Tokenizer.bundled()
    text = "To be, or not to be: Ünïcødé 漢字 🙂\n"
    assert tok.vocab_size == vocab
    assert tok.decode(tok.encode(text)) == text
    assert tok.special_id("[BOS]") == vocab - 256                  # the special ids follow the ranks, in order
    assert tok.special_id("<|media_pad|>") - (vocab - 256) == bundled.special_id("<|media_pad|>") - 3840
    assert max(tok.encode(text)) < vocab - 256
    if vocab >= 4096:                                      # the trained ranks, whole: the same ids as the bundle
        assert tok.encode(text) == bundled.encode(text)
    if vocab == 4096:
        assert (tmp_path / "tiktoken.model").read_bytes() == pathlib.Path(ASSETS, "tokenizer", "tiktoken.model").read_bytes()


def test_no_tokenizer_when_the_vocabulary_cannot_hold_the_bytes(tmp_path):
    from k25ref.make_tiny import copy_tokenizer
    copy_tokenizer(str(tmp_path), 511)
    assert list(tmp_path.iterdir()) == []


def test_shards_are_bounded_by_what_the_layout_fills(tmp_path):
    from k25ref.config import from_hf
    from k25ref.make_tiny import max_shards, preset
    most = max_shards(from_hf(preset("tiny")))
    r = run("make-tiny", str(tmp_path / "many"), "--shards", str(most + 1))
    assert r.exit_code == 2 and f"fills 1 to {most}" in r.stderr
    assert not (tmp_path / "many").exists()
    assert run("make-tiny", str(tmp_path / "most"), "--shards", str(most)).exit_code == 0
    with open(tmp_path / "most" / "model.safetensors.index.json") as f:
        used = set(json.load(f)["weight_map"].values())
    assert len(used) == most == len(list((tmp_path / "most").glob("model-*.safetensors")))


@pytest.mark.parametrize("args, message", [
    (["--layers", "2"], "go with --preset full-width"),
    (["--preset", "full-width", "--experts", "4"], "x>=8"),
    (["--preset", "full-width", "--layers", "0"], "x>=1"),
    (["--shards", "0"], "x>=1"),
    (["--preset", "full"], "is not one of"),
])
def test_make_tiny_bad_options_are_usage_errors(tmp_path, args, message):
    r = CliRunner().invoke(main, ["make-tiny", str(tmp_path / "x"), *args])
    assert r.exit_code == 2 and message in r.output
    assert not (tmp_path / "x").exists()


def test_full_width_says_its_size_and_refuses_a_full_disk(tmp_path, monkeypatch):
    import shutil
    from k25ref.make_tiny import full_width_bytes
    size = full_width_bytes(2, 8)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12 - 10**9, 10**9))
    r = CliRunner().invoke(main, ["make-tiny", str(tmp_path / "fw"), "--preset", "full-width"])
    assert r.exit_code == 2 and "writing" not in r.stdout
    assert f"the checkpoint needs {size / 1e9:.1f} GB, the disk has 1.0 GB free" in r.stderr
    assert not (tmp_path / "fw").exists()


def test_full_width_announces_its_size_only_once_every_check_passed(tmp_path, monkeypatch):
    """A non-empty folder or too many shards is refused before the size is announced (and before any write)."""
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("mine")
    for args in (["full"], ["new", "--layers", "1", "--shards", "99"]):
        r = CliRunner().invoke(main, ["make-tiny", str(tmp_path / args[0]), "--preset", "full-width", *args[1:]])
        assert r.exit_code == 2 and "writing" not in r.stdout, r.output
    assert os.listdir(tmp_path / "full") == ["mine.txt"] and not (tmp_path / "new").exists()
    import k25ref.make_tiny as mt
    said = []
    monkeypatch.setattr(mt, "write_shard", lambda *a: None)                # everything but the shards' bytes
    mt.make_full_width(str(tmp_path / "ok"), 1, 8, announce=said.append)
    assert said == [f"writing {mt.full_width_bytes(1, 8) / 1e9:.1f} GB: K2.5's shapes with 1 layer(s) and 8 experts"]


def test_full_width_size_is_what_the_writer_writes():
    from k25ref.checkpoint import DTYPES
    from k25ref.config import from_hf
    from k25ref.make_tiny import _synthetic_entries, full_width_bytes, full_width_config
    for layers, experts in [(1, 8), (3, 16)]:
        entries = _synthetic_entries(from_hf(full_width_config(layers, experts)), 0)
        assert full_width_bytes(layers, experts) == sum(int(np.prod(s)) * DTYPES[d][1] for _, d, s, _ in entries)


@pytest.mark.slow
def test_full_width_preset_runs_through_generate(tmp_path):
    """6.6 GB on disk: K2.5's shapes with one (dense) layer, then a few tokens from it."""
    out = str(tmp_path / "fw")
    cmd = [sys.executable, "-m", "k25ref.cli"]
    made = subprocess.run([*cmd, "make-tiny", out, "--preset", "full-width", "--layers", "1"], capture_output=True,
                          text=True, timeout=900)
    assert made.returncode == 0, made.stderr
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        total = json.load(f)["metadata"]["total_size"]
    assert f"writing {total / 1e9:.1f} GB" in made.stdout
    gen = subprocess.run([*cmd, "generate", "-m", out, "--raw", "Hello", "-n", "2"], capture_output=True, text=True,
                         timeout=900)
    assert gen.returncode == 0 and "tokens/s" in gen.stderr, gen.stderr[-2000:]


# ----------------------------------------------------------------------------
# the small items


def test_version():
    import k25ref
    r = run("--version")
    assert r.exit_code == 0 and r.stdout == f"k25ref {k25ref.__version__}\n"


def test_the_module_runs_as_the_command():
    proc = subprocess.run([sys.executable, "-m", "k25ref.cli", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("k25ref ")


def test_tokenize_dash_reads_stdin():
    piped = run("tokenize", "-", input="Wherefore art thou?")
    given = run("tokenize", "Wherefore art thou?")
    assert piped.exit_code == 0 and piped.stdout == given.stdout
    assert run("tokenize", "-", input="").exit_code == 6
    assert run("tokenize", "-", input=b"\xff\xfe").exit_code == 6


def test_bench_says_the_oracle_is_missing_instead_of_an_empty_table(tmp_path):
    (tmp_path / "torch.py").write_text("raise ImportError('torch hidden for this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench.py"), "--engines", "oracle-eager",
                           "--configs", "tiny", "--workdir", str(tmp_path / "w")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "skipping oracle-eager: torch and transformers are not installed" in proc.stderr
    assert "no engine left to run" in proc.stderr


def test_a_truncated_mp4_says_what_is_wrong(tmp_path):
    pytest.importorskip("av")
    import imageio.v3 as iio
    from k25ref.media import preprocess_video
    frames = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "v.mp4", frames, plugin="pyav", fps=4, codec="libx264")
    data = (tmp_path / "v.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])
    with pytest.raises(MediaError) as e:
        preprocess_video(str(tmp_path / "cut.mp4"))
    message = str(e.value)
    assert "damaged, truncated or unsupported" in message and "Invalid data" in message
    assert "can not handle the given uri" not in message


def test_the_gantt_chart_has_a_legend_for_what_it_shows():
    from k25ref.swarm.bench import run_task
    from k25ref.swarm.plots import _OUTCOME_COLORS, gantt_figure
    from k25ref.swarm.tasks import make_task
    trace = run_task(make_task("wide", 0, 0, quick=True), "swarm-static", 8)[0]
    legend = gantt_figure(trace).axes[0].get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    outcomes = {s["outcome"] for s in trace.spans if s["kind"] not in ("llm", "subagent")}
    assert "model step" in labels and "end of episode" in labels and "sub-agent: finished" in labels
    assert {f"tool call: {o}" for o in outcomes if o in _OUTCOME_COLORS} <= set(labels)
    assert len(set(_OUTCOME_COLORS.values())) == len(_OUTCOME_COLORS), "two outcomes share a colour"


def test_inspect_image_labels_its_numbers():
    r = run("inspect-image", str(ROOT / "examples" / "red_circle.png"))
    assert r.exit_code == 0
    lines = dict(line.split(None, 1) for line in r.stdout.splitlines())
    assert lines["original"] == "300 x 200 px (width x height)"
    assert lines["grid_thw"].startswith("[1, 16, 22] (frames t, rows h, columns w")
    assert lines["tokens"].startswith("88 ")


def test_errors_in_the_library_are_k25ref_errors(tmp_path):
    from k25ref.make_tiny import check_free_space
    with pytest.raises(K25RefError, match="needs 1000000.0 GB"):
        check_free_space(str(tmp_path / "a" / "b"), 10**15)
