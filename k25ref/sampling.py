"""Choosing the next token from logits: greedy, or temperature -> top-k -> top-p sampling (transformers' order).

Logits are checked first: NaN or inf in them is a NumericsError naming the first layer whose output was not
finite (`check_logits`), never a silent argmax over NaN nor NumPy's "probabilities contain NaN".
"""
import numpy as np

from k25ref.errors import NumericsError
from k25ref.nn import softmax


def first_nonfinite(capture):  # {name: array} in the order computed -> name or None
    """The first captured intermediate holding NaN or inf (capture dicts keep the order of computation)."""
    for name, value in capture.items():
        a = np.asarray(value)
        if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
            return name
    return None


def check_logits(logits, trace):  # (..., V) -> the same logits, finite
    """Return `logits` if every value is finite; otherwise raise NumericsError naming where the first non-finite
    value appeared. `trace()` -> capture dict of the same pass: called only on this failure path, so a finite
    pass costs one isfinite over the logits."""
    if np.isfinite(logits).all():
        return logits
    where = first_nonfinite(trace()) or "lm_head"
    raise NumericsError(f"the forward pass produced {int((~np.isfinite(logits)).sum())} non-finite logits (NaN or inf); the first "
                        f"non-finite output was {where!r} (a weight with NaN/inf, or an overflow)")


def greedy(logits):  # (V,) -> int
    """argmax; the lowest id wins a tie, like torch.argmax."""
    return int(np.argmax(logits))


def filter_top_k(logits, k):  # (V,) -> (V,)
    """Keep the k largest logits (ties at the k-th value are kept), -inf elsewhere; k <= 0 keeps all."""
    if k <= 0 or k >= logits.size:
        return logits
    kth = np.partition(logits, -k)[-k]
    return np.where(logits >= kth, logits, -np.inf)


def filter_top_p(logits, p):  # (V,) -> (V,)
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p (at least one)."""
    if p >= 1.0:
        return logits
    order = np.argsort(logits)                                  # ascending
    cum = np.cumsum(softmax(logits[order].astype(np.float64)))
    drop = cum <= 1.0 - p                                       # the unlikely tail, as transformers' TopPLogitsWarper
    drop[-1] = False
    out = logits.copy()
    out[order[drop]] = -np.inf
    return out


def sample(logits, temperature, top_k, top_p, rng):  # (V,) -> int
    """temperature 0 is greedy; otherwise scale, filter, and draw from the softmax with `rng`."""
    if temperature == 0:
        return greedy(logits)
    with np.errstate(over="ignore"):
        scaled = logits.astype(np.float64) / temperature
    if not np.isfinite(scaled).all():          # a temperature so small the logits overflow: its limit, greedy
        return greedy(logits)
    scaled = filter_top_p(filter_top_k(scaled, top_k), top_p)
    probs = softmax(scaled)
    return int(rng.choice(probs.size, p=probs / probs.sum()))
