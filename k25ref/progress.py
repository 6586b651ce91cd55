"""Feedback on work a person waits for: progress bars and one-line notices, on stderr.

A bar is tqdm on stderr that is drawn only on a terminal (piped or captured output stays clean), appears
only once the work has taken DELAY seconds (so quick runs stay silent), and vanishes when done.
`k25ref --quiet` (or `quiet(True)`) silences bars and notices alike; results and errors still print.
"""
import sys

from tqdm import tqdm

QUIET = False                   # set by quiet()
DELAY = 1.0                     # seconds of work before a bar appears


def quiet(on=True):
    """Silence (or restore) every bar and notice of this process."""
    global QUIET
    QUIET = bool(on)


def bar(iterable=None, desc=None, total=None, unit="it", unit_scale=False, delay=None, disable=False):
    """tqdm over `iterable` (or a manual bar of `total` steps: call .update(n)) on stderr, terminal only."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, unit_scale=unit_scale, file=sys.stderr, leave=False,
                delay=DELAY if delay is None else delay, dynamic_ncols=True,
                disable=True if QUIET or disable else None)           # None: tqdm draws on a terminal only


def notice(text):
    """One line on stderr, e.g. what a long silent step is doing, unless quiet."""
    if not QUIET:
        print(text, file=sys.stderr, flush=True)
