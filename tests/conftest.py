"""Shared fixtures: tiny released-layout checkpoints built once per session, and check_close."""
import numpy as np
import pytest

from k25ref.make_tiny import make_tiny


def check_close(out, ref, *, rtol=0.0, atol=0.0, label="value"):
    """assert_allclose, but on failure show where and by how much (like llm.c's check_tensor)."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, f"{label}: shape {out.shape} != {ref.shape}"
    diff = np.abs(out - ref)
    if not np.all(diff <= atol + rtol * np.abs(ref)):
        where = np.unravel_index(diff.argmax(), diff.shape)
        head = "\n".join(f"  {o:+.6f} {r:+.6f}" for o, r in zip(out.ravel()[:5], ref.ravel()[:5]))
        raise AssertionError(f"{label}: max |diff| {diff.max():.3e} at {where}\n{head}")


def rel_err(out, ref):
    """max |out - ref| / max |ref|: the conformance figure."""
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(out, np.float64) - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """The default tiny preset (yarn, groups, INT4 experts, vision tower), 3 shards."""
    return make_tiny(str(tmp_path_factory.mktemp("tiny")), "tiny", seed=1, shards=3)


@pytest.fixture(scope="session")
def plain_dir(tmp_path_factory):
    """tiny-plain: default rope, q_proj, two dense layers, two shared experts, biases."""
    return make_tiny(str(tmp_path_factory.mktemp("plain")), "tiny-plain", seed=2, shards=2)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
