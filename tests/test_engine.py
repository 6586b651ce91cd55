"""The code a model runs is chosen once (k25ref.engine): the kernels by default when numba compiles,
K25REF_BACKEND or load_model(backend=...) to choose, a clear error for a bad name, the same logits either
way, and the first compilation announced once."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import k25ref
from k25ref import engine
from k25ref.errors import ConfigError
from k25ref.kernels import compiled
from conftest import rel_err

IDS = [5, 17, 3, 9, 11, 2, 40]


def test_default_is_the_kernels_when_numba_compiles(tiny_dir, monkeypatch):
    monkeypatch.delenv("K25REF_BACKEND", raising=False)
    assert k25ref.load_model(tiny_dir).ops.name == ("numba" if compiled() else "numpy")
    assert k25ref.load_model(tiny_dir, backend="numpy").ops is engine.NUMPY
    assert k25ref.load_model(tiny_dir, backend="numba").ops is engine.numba_ops()


def test_environment_variable_replaces_auto_only(tiny_dir, monkeypatch):
    monkeypatch.setenv("K25REF_BACKEND", "numpy")
    assert k25ref.load_model(tiny_dir).ops is engine.NUMPY
    assert k25ref.load_model(tiny_dir, backend="numba").ops.name == "numba"      # an explicit argument wins
    monkeypatch.setenv("K25REF_BACKEND", " NUMBA ")
    assert k25ref.load_model(tiny_dir).ops.name == "numba"


@pytest.mark.parametrize("arg, env, where", [("cuda", None, "backend"), ("auto", "torch", "K25REF_BACKEND"),
                                             ("", None, "backend"), (None, None, "backend")])
def test_a_bad_backend_is_a_one_line_config_error(tiny_dir, monkeypatch, arg, env, where):
    monkeypatch.delenv("K25REF_BACKEND", raising=False)
    if env:
        monkeypatch.setenv("K25REF_BACKEND", env)
    with pytest.raises(ConfigError, match=f"^{where} must be one of auto, numba, numpy, got ") as e:
        k25ref.load_model(tiny_dir, backend=arg)
    assert "\n" not in str(e.value)
    model = k25ref.load_model(tiny_dir, backend="numpy")
    with pytest.raises(ConfigError, match="must be one of"):
        model.logits(IDS, backend="fast" if arg is None else arg or "x")


def test_cli_reports_a_bad_environment_value_in_one_line(tiny_dir):
    env = {**os.environ, "K25REF_BACKEND": "gpu"}
    r = subprocess.run([sys.executable, "-m", "k25ref.cli", "generate", "-m", tiny_dir, "-n", "1", "--raw", "x"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "K25REF_BACKEND must be one of auto, numba, numpy, got 'gpu'" in r.stderr


@pytest.mark.kernels
@pytest.mark.parametrize("path", ["tiny_dir", "plain_dir"])
def test_logits_with_the_kernels_equal_the_reference(path, request):
    """Model.logits (full sequence, every intermediate) with the kernels' bundle against the reference's,
    within the kernels' tolerance (rtol 1e-5 of the largest logit)."""
    folder = request.getfixturevalue(path)
    ref_cap, cap = {}, {}
    ref = k25ref.load_model(folder, backend="numpy").logits(IDS, capture=ref_cap)
    out = k25ref.load_model(folder, backend="numba").logits(IDS, capture=cap)
    assert rel_err(out, ref) <= 1e-5
    for name in ref_cap:
        if name.endswith("router_indices"):
            assert np.array_equal(cap[name], ref_cap[name]), name
        else:
            assert rel_err(cap[name], ref_cap[name]) <= 1e-5, name


@pytest.mark.kernels
def test_first_compilation_is_announced_once(tiny_dir, monkeypatch, caplog):
    monkeypatch.setattr(engine, "_prepared", [])                  # as in a fresh process
    caplog.set_level(logging.INFO, logger="k25ref")
    for _ in range(2):
        model = k25ref.load_model(tiny_dir, backend="numba")
        list(model.generate(IDS, 2, stop_ids=()))
    said = [r.getMessage() for r in caplog.records if r.name == "k25ref" and "compiling" in r.getMessage()]
    assert said == ["compiling k25ref kernels (cached after the first run: about 20-40 s once, then ~1 s)"]
    caplog.clear()
    list(k25ref.load_model(tiny_dir, backend="numpy").generate(IDS, 2, stop_ids=()))
    assert not [r for r in caplog.records if "compiling" in r.getMessage()]


@pytest.mark.parametrize("T", [1, 5, 6])
def test_bf16_products_by_rows_match_the_widened_reference(T, monkeypatch):
    """The kernels' bf16 product: the kernel below BLAS_ROWS inputs, widened blocks of rows and BLAS from it
    (blocks of 3 rows here, the last one short) -- either way x W^T of the exactly widened matrix."""
    from k25ref.checkpoint import f32_to_bf16
    from k25ref.nn import widened_matmul
    monkeypatch.setattr(engine, "BLAS_ROWS", 6)
    monkeypatch.setattr(engine, "WIDEN_BYTES", 3 * 4 * 16)
    rng = np.random.default_rng(0)
    raw = f32_to_bf16(rng.standard_normal((11, 16), dtype=np.float32))
    x = rng.standard_normal((T, 16), dtype=np.float32)
    assert rel_err(engine.bf16_by_rows(raw, x), widened_matmul(raw, x)) < 1e-6


def test_prompt_products_with_short_rows_go_to_blas(monkeypatch):
    """From 64 inputs a product whose rows are short (I <= 6 T) is widened and sent to BLAS, with the same
    numbers as the kernel's; long rows stay in the kernel below BLAS_ROWS inputs."""
    from k25ref.checkpoint import f32_to_bf16
    from k25ref.kernels import bf16_matvec
    from k25ref.nn import widened_matmul
    assert engine.blas_pays(64, 384) and engine.blas_pays(128, 768) and engine.blas_pays(256, 7168)
    assert not engine.blas_pays(64, 385) and not engine.blas_pays(63, 32) and not engine.blas_pays(128, 769)
    kernel_calls = []
    monkeypatch.setattr(bf16_matvec, "bf16_matmul", lambda raw, x: kernel_calls.append(x.shape) or 0)
    rng = np.random.default_rng(0)
    raw = f32_to_bf16(rng.standard_normal((24, 32), dtype=np.float32))
    x = rng.standard_normal((64, 32), dtype=np.float32)
    assert rel_err(engine.bf16_by_rows(raw, x), widened_matmul(raw, x)) < 1e-6 and not kernel_calls
    engine.bf16_by_rows(raw, x[:63])
    assert kernel_calls == [(63, 32)]


def test_kernels_run_the_decoder_with_blas_on_one_thread(tiny_dir, monkeypatch):
    """The kernels' bundle runs each decoder pass with BLAS on one thread and gives the threads back after;
    the reference's bundle leaves BLAS alone."""
    from threadpoolctl import threadpool_info
    blas = lambda: [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]   # noqa: E731
    before = blas()
    assert before, "threadpoolctl finds no BLAS in this process"
    with engine.numba_ops().decoder_threads():
        assert set(blas()) <= {1}
    assert blas() == before
    with engine.NUMPY.decoder_threads():
        assert blas() == before
    seen = []
    monkeypatch.setattr(engine, "blas_threads", lambda n: seen.append(n) or engine.contextlib.nullcontext())
    k25ref.load_model(tiny_dir, backend="numba").logits(IDS, prefill_chunk=3)
    assert seen == [1, 1, 1]                                           # one per chunk of the 7-token prompt
