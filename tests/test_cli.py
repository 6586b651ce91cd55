"""The CLI through click's CliRunner: it works on the embedded model and bad input is one line + an exit code."""
import json
import pathlib
import os

import pytest
from click.testing import CliRunner

from k25ref.cli import default_model_path, main


def run(*args, input=None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_generate_default_model_no_arguments():
    r = run("generate", "-n", "8")
    assert r.exit_code == 0, r.output
    assert "tokens/s" in r.stderr and "peak memory" in r.stderr
    assert r.stdout.strip()


def test_generate_is_reproducible_with_seed():
    a = run("generate", "ROMEO:", "--raw", "-n", "12", "--temp", "0.9", "--seed", "7").stdout
    b = run("generate", "ROMEO:", "--raw", "-n", "12", "--temp", "0.9", "--seed", "7").stdout
    assert a == b


def test_generate_reads_stdin():
    r = run("generate", "-", "-n", "4", "--raw", input="JULIET:")
    assert r.exit_code == 0


@pytest.mark.parametrize("args, stdin, code", [
    (("generate", ""), None, 6),
    (("generate", "-"), b"\xff\xfe\xfd", 6),
    (("generate", "--model", "/no/such/dir"), None, 2),
    (("inspect", "/no/such/dir"), None, 2),          # a missing folder is a usage error in every command
])
def test_bad_input_is_one_line(args, stdin, code):
    r = CliRunner().invoke(main, list(args), input=stdin)
    assert r.exit_code == code, r.output
    assert r.stderr.startswith("k25ref: error:") and r.stderr.count("\n") == 1
    assert "Traceback" not in r.output


def test_malformed_checkpoint_is_one_line(tmp_path):
    d = tmp_path / "ck"
    run("make-tiny", str(d), "--preset", "tiny-plain", "--shards", "1")
    shard = d / "model-00001-of-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])
    r = CliRunner().invoke(main, ["generate", "--model", str(d)])
    assert r.exit_code == 4 and "truncated" in r.stderr and str(shard) in r.stderr


def test_inspect_reports_cache_and_params():
    r = run("inspect")
    assert r.exit_code == 0
    assert "KV cache per token" in r.stdout and "active per token" in r.stdout and "problems: none" in r.stdout


def test_inspect_index_only(tmp_path):
    from k25ref.make_tiny import preset
    cfg = preset("full")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    # an index with exactly the expected names, no shards on disk
    from k25ref.config import from_hf
    from k25ref.weights import expected_tensors
    names = expected_tensors(from_hf(cfg))
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {n: "model-00001-of-00064.safetensors" for n in names}}))
    r = run("inspect", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert "index only" in r.stdout and "T total" in r.stdout


def test_tokenize_shows_pieces():
    r = run("tokenize", "Hello world")
    assert r.exit_code == 0 and "tokens" in r.stdout
    r2 = run("tokenize", default_model_path(), "Hello world")
    assert r2.stdout == r.stdout


def test_make_tiny_rejects_bad_preset(tmp_path):
    r = CliRunner().invoke(main, ["make-tiny", str(tmp_path / "x"), "--preset", "huge"])
    assert r.exit_code == 2 and "is not one of" in r.output and r.stderr.count("\n") == 1
    assert not os.path.exists(tmp_path / "x")


def test_help_teaches():
    r = run("--help")
    assert "generate" in r.stdout and "k25ref generate" in r.stdout
    assert "embedded tiny model" in run("generate", "--help").stdout


def test_generate_image_never_prints_a_traceback(tmp_path):
    """Random and truncated files given to `generate --image`: a one-line MediaError, never a traceback."""
    import numpy as np
    rng = np.random.default_rng(5)
    good = (pathlib.Path(__file__).parents[1] / "examples" / "red_circle.png").read_bytes()
    files = {"random.png": rng.bytes(300), "empty.jpg": b"", "cut.png": good[: len(good) // 2],
             "header_only.png": good[:40], "text.gif": b"GIF89a not really"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        r = CliRunner().invoke(main, ["generate", "--image", str(tmp_path / name), "-n", "1"])
        assert r.exit_code == 5, (name, r.output)
        assert "Traceback" not in r.output and r.stderr.count("\n") == 1


def test_a_bare_group_shows_its_help():
    for argv in ([], ["swarm"]):
        r = CliRunner().invoke(main, argv)
        assert r.exit_code == 2 and "Commands:" in r.output and "k25ref: error" not in r.output


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "--threads: '0' must be at least 1"),
    (["--repeat", "two"], "--repeat: 'two' is not a whole number"),
    (["--configs", "tiny,huge"], "--configs: 'tiny,huge'"),
    (["--engines", ""], "--engines: ''"),
    (["--profile", "huge"], "--profile: invalid choice"),
    (["--long", "--lengths", "1024,-5"], "--lengths: '-5' must be at least 1"),
    (["--long", "--budget", "4 bananas"], "--budget: '4 bananas' is not a size"),
    (["--long", "--checkpoints", "nope"], "--checkpoints: 'nope'"),
    (["--long", "--from-json", "/no/such/report.json"], "No such file or directory"),
    (["--long", "--from-json", "setup.cfg"], "--from-json setup.cfg: "),
])
def test_bench_options_are_one_line_usage_errors(args, message):
    """`k25ref bench` hands its options to tools/bench.py (argparse): the same contract as click's commands."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "k25ref.cli", "bench", *args], capture_output=True, text=True,
                       timeout=120, cwd=pathlib.Path(__file__).parents[1])
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("k25ref: error:") and message in r.stderr, r.stderr


def test_a_folder_in_the_way_of_an_output_is_named_not_its_temporary_file(tmp_path):
    out = tmp_path / "t"
    assert CliRunner().invoke(main, ["make-tiny", str(out)]).exit_code == 0
    (out / "config.json").unlink()
    (out / "config.json").mkdir()
    r = CliRunner().invoke(main, ["make-tiny", str(out), "--force"])
    assert r.exit_code == 1 and r.stderr.strip().endswith(f"{out / 'config.json'}: Is a directory"), r.stderr
    assert ".tmp" not in r.stderr and not [p for p in os.listdir(out) if ".tmp" in p]


def test_generate_with_no_new_tokens_reports_no_prompt_speed():
    r = CliRunner().invoke(main, ["generate", "-n", "0"])
    assert r.exit_code == 0 and "not run (no new tokens asked)" in r.stderr, r.stderr
