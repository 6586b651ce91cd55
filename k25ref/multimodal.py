"""Putting media into the prompt: each placeholder token's embedding is replaced by one vision feature row.

The chat template writes `<|media_pad|>` once per image or video chunk; the processor expands it to
h*w/4 copies (one per merged 2x2 block of patches, `count_media_tokens`). At embedding time the rows of
`vision_features` replace those positions in order -- the first feature row goes to the first placeholder
of the prompt, and so on across all items [transformers `masked_scatter`; vLLM `merge_multimodal_embeddings`].
Every other position keeps its token embedding. The counts must agree exactly; anything else is a
PromptError, never a silent truncation.
"""
import numpy as np

from k25ref.errors import MediaError, PromptError


def media_token_counts(grid_thw):  # (I, 3) -> [int] * I
    """Tokens of each image / video chunk: h*w/4, independent of t (frames are averaged)."""
    g = np.asarray(grid_thw)
    if g.ndim != 2 or g.shape[1] != 3:
        raise MediaError(f"grid_thw must be rows of [t, h, w], got shape {g.shape}")
    counts = []
    for i, (t, h, w) in enumerate(g.tolist()):
        if min(t, h, w) < 1 or h % 2 or w % 2:
            raise MediaError(f"grid_thw[{i}] = {[t, h, w]}: need t, h, w >= 1 and h, w even")
        counts.append(h * w // 4)
    return counts


def count_media_tokens(grid_thw):  # (I, 3) -> int
    """Placeholder tokens the prompt must hold for these items: sum of h*w/4."""
    return sum(media_token_counts(grid_thw))


def check_rows(slots, rows, placeholder_id):
    """PromptError unless the prompt's `slots` placeholder tokens get exactly `rows` media feature rows."""
    if rows != slots:
        raise PromptError(f"the prompt has {slots} media placeholder tokens (id {placeholder_id}) but the "
                          f"images/video give {rows} feature rows")


def splice(embeds, input_ids, features, placeholder_id):  # (T, D), (T,), (M, D) -> (T, D)
    """A copy of `embeds` with row j of `features` at the j-th position where input_ids == placeholder_id."""
    ids, embeds, features = np.asarray(input_ids), np.asarray(embeds), np.asarray(features)
    if ids.ndim != 1 or embeds.ndim != 2 or embeds.shape[0] != ids.shape[0]:
        raise PromptError(f"splice: embeds {embeds.shape} must be (T, D) for input_ids of shape {ids.shape}")
    slots = np.flatnonzero(ids == placeholder_id)                                   # (M,)
    check_rows(slots.size, features.shape[0] if features.ndim == 2 else features.shape, placeholder_id)
    if features.shape[1] != embeds.shape[1]:
        raise PromptError(f"media features are {features.shape[1]} wide but token embeddings are {embeds.shape[1]}")
    out = embeds.copy()
    out[slots] = features
    return out


def expand_placeholders(input_ids, grid_thw, placeholder_id):  # (T,) -> (T + sum(h*w/4) - I,)
    """Repeat the i-th `<|media_pad|>` of the rendered prompt h_i*w_i/4 times (the processor's job).
    The rendered prompt must hold exactly one placeholder per image / video chunk."""
    ids, counts = list(np.asarray(input_ids).tolist()), media_token_counts(grid_thw)
    slots = [k for k, i in enumerate(ids) if i == placeholder_id]
    if len(slots) != len(counts):
        raise PromptError(f"the prompt has {len(slots)} media placeholders but {len(counts)} images/video chunks")
    out, last = [], 0
    for slot, n in zip(slots, counts):
        out += ids[last:slot] + [placeholder_id] * n
        last = slot + 1
    return np.array(out + ids[last:], np.int64)
