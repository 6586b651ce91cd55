"""Splicing vision features into the token embeddings: order, counts, and the errors that keep it honest."""
import numpy as np
import pytest

from k25ref import load_model
from k25ref.errors import MediaError, PromptError
from k25ref.make_tiny import make_tiny
from k25ref.multimodal import count_media_tokens, media_token_counts, splice
from k25ref.projector import vision_features

PAD = 3861


def test_media_token_counts_ignore_time():
    grid = [[1, 4, 6], [4, 4, 6], [3, 2, 2]]
    assert media_token_counts(grid) == [6, 6, 1]             # a 4-frame chunk costs one frame's tokens
    assert count_media_tokens(grid) == 13


@pytest.mark.parametrize("grid", [[[1, 3, 4]], [[0, 2, 2]], [1, 2, 2]])
def test_bad_grid_is_a_media_error(grid):
    with pytest.raises(MediaError):
        count_media_tokens(grid)


def test_splice_puts_rows_in_order_at_placeholders(rng):
    ids = np.array([1, PAD, PAD, 7, PAD, 9])
    embeds = rng.standard_normal((6, 4)).astype(np.float32)
    before = embeds.copy()
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = splice(embeds, ids, features, PAD)
    assert np.array_equal(out[[1, 2, 4]], features)          # row j -> j-th placeholder
    assert np.array_equal(out[[0, 3, 5]], embeds[[0, 3, 5]])  # text rows untouched
    assert np.array_equal(embeds, before)                    # the input is not modified


def test_splice_without_media_is_the_identity(rng):
    embeds = rng.standard_normal((3, 4)).astype(np.float32)
    assert np.array_equal(splice(embeds, [5, 6, 7], np.zeros((0, 4), np.float32), PAD), embeds)


@pytest.mark.parametrize("n_features", [2, 4, 0])
def test_count_mismatch_names_both_counts(rng, n_features):
    ids = np.array([1, PAD, PAD, PAD, 2])
    with pytest.raises(PromptError, match=rf"3 media placeholder tokens \(id {PAD}\) .* {n_features} feature rows"):
        splice(rng.standard_normal((5, 4)), ids, np.zeros((n_features, 4), np.float32), PAD)


def test_width_mismatch_is_a_prompt_error(rng):
    with pytest.raises(PromptError, match="8 wide but token embeddings are 4"):
        splice(rng.standard_normal((2, 4)), [PAD, 1], np.zeros((1, 8), np.float32), PAD)


def test_vision_features_fill_exactly_the_counted_placeholders(rng, tmp_path):
    """End to end on a tiny checkpoint: count_media_tokens rows come out of the tower and fit the prompt."""
    grid = [[1, 2, 4], [3, 4, 2]]
    model = load_model(make_tiny(str(tmp_path), "tiny", seed=3, shards=1, tokenizer=False))
    x = rng.uniform(-1, 1, (8 + 24, 3, 14, 14)).astype(np.float32)
    features = vision_features(model.weights, model.cfg, x, grid)
    n = count_media_tokens(grid)
    pad = model.cfg.media_placeholder_token_id
    ids = np.array([5] + [pad] * n + [6])
    out = splice(np.zeros((n + 2, model.cfg.text.hidden_size), np.float32), ids, features, pad)
    assert features.shape[0] == n == 4 and np.array_equal(out[1:-1], features)
