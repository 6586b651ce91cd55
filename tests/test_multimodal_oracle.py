"""Multimodal logits against the live oracle: two images and two video chunks of different t in one prompt.

transformers' own image path cannot take video chunks with t > 1 (k25-facts §8), so the oracle side computes
each item's features with the tower and projector called directly (tools/oracle_vision.py), scatters them over
the placeholder rows of its own embedding, and runs its language model on those embeddings.
"""
import importlib.util
import pathlib

import numpy as np
import pytest

from conftest import rel_err
from k25ref import load_model
from k25ref.make_tiny import make_tiny, preset
from k25ref.multimodal import expand_placeholders

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


UNSEEN = [  # (text width, heads, vision width, vision heads, frames per chunk) -- not the goldens' shapes
    (32, 2, 24, 2, 4),
    (96, 2, 40, 2, 3),
]


@pytest.mark.oracle
@pytest.mark.parametrize("seed, dims", list(enumerate(UNSEEN, start=31)))
def test_images_and_video_chunks_in_one_prompt(tmp_path, seed, dims):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    oracle, oracle_vision = _tool("oracle"), _tool("oracle_vision")
    D, H, Dvis, Hvis, frames = dims
    hub = preset("tiny")
    hub["text_config"].update(hidden_size=D, num_attention_heads=H, num_key_value_heads=H)
    hub["vision_config"].update(vt_hidden_size=Dvis, mm_hidden_size=Dvis, vt_num_attention_heads=Hvis,
                                vt_intermediate_size=2 * Dvis, init_pos_emb_time=frames, text_hidden_size=D)
    make_tiny(str(tmp_path), config=hub, seed=seed, shards=2)
    model = load_model(str(tmp_path))
    rng = np.random.default_rng(seed)
    grid = np.array([[1, 4, 6], [1, 6, 2], [frames, 4, 4], [2, 4, 4]])      # 2 images, 2 chunks (t = frames, 2)
    pixels = rng.uniform(-1, 1, (int(np.prod(grid, axis=1).sum()), 3, 14, 14)).astype(np.float32)
    pad = model.cfg.media_placeholder_token_id
    text = rng.integers(0, 3800, 30)
    ids = np.concatenate([text[:5], [pad], text[5:9], [pad], text[9:15], [pad], [pad], text[15:]])
    ids = expand_placeholders(ids, grid, pad)

    ours = model.logits(ids, pixel_values=pixels, grid_thw=grid)

    tower, projector, _ = oracle_vision.load_oracle(str(tmp_path))
    features = oracle_vision.run_oracle(tower, projector, pixels, grid)["vision.features"]
    for backend in ("numpy", "numba"):                      # the reference and the one-pass kernels
        assert rel_err(model.vision_features(pixels, grid, backend=backend), features) < 1e-5, backend
    full = oracle.load_oracle(str(tmp_path))
    lm = oracle.text_model(full)
    with torch.no_grad():
        embeds = lm.embed_tokens(torch.as_tensor(np.where(ids == pad, 0, ids))[None]).clone()
        embeds[0, torch.as_tensor(ids == pad)] = torch.from_numpy(features)
        ref = full.lm_head(lm(inputs_embeds=embeds, use_cache=False).last_hidden_state)[0].numpy()
    err = rel_err(ours, ref)
    print(f"multimodal logits, config {dims}: max rel err {err:.2e}")
    assert err < 1e-5
