"""Feedback on work a person waits for: progress bars and one-line notices, on stderr.

A bar is tqdm on stderr that is drawn only on a terminal (piped or captured output stays clean), appears
only once the work has taken DELAY seconds (so quick runs stay silent), and vanishes when done.
`k25ref --quiet` (or `quiet(True)`) silences bars and notices alike; results and errors still print.
"""
import sys
import threading

from tqdm import tqdm

QUIET = False                   # set by quiet()
DELAY = 1.0                     # seconds of work before a bar appears


def quiet(on=True):
    """Silence (or restore) every bar and notice of this process."""
    global QUIET
    QUIET = bool(on)


class Bar(tqdm):
    """tqdm that also draws itself once `delay` seconds have passed while its first step still runs (tqdm alone
    draws only when a step ends, so one long first step would be silent)."""

    first_draw = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not self.disable:
            self.first_draw = threading.Timer(self.delay, self._draw_if_silent)
            self.first_draw.daemon = True
            self.first_draw.start()

    def _draw_if_silent(self):
        if not self.disable and self.last_print_t == self.start_t:    # nothing drawn yet
            self.refresh()

    def close(self):
        if self.first_draw is not None:
            self.first_draw.cancel()
        super().close()


def bar(iterable=None, desc=None, total=None, unit="it", unit_scale=False, delay=None, disable=False):
    """A Bar over `iterable` (or a manual bar of `total` steps: call .update(n)) on stderr, terminal only."""
    return Bar(iterable, desc=desc, total=total, unit=unit, unit_scale=unit_scale, file=sys.stderr, leave=False,
               delay=DELAY if delay is None else delay, dynamic_ncols=True,
               disable=True if QUIET or disable else None)            # None: tqdm draws on a terminal only


def notice(text):
    """One line on stderr, e.g. what a long silent step is doing, unless quiet."""
    if not QUIET:
        print(text, file=sys.stderr, flush=True)
