"""click parameter types shared by every k25ref command, so each option is checked when it is parsed -- before
any work starts -- and a bad value is one usage line (exit 2) that names the option.

    Finite(0, None)         a float that is not NaN or +-inf, inside a range (click's FloatRange lets NaN through)
    SEED                    an integer seed in [0, 2^63)
    Size()                  bytes: 4G = 4GB = 4e9, 512MiB = 512 * 2^20, 1e9 (decimal K M G T, binary KiB .. TiB)
    OutputFile(".png", ...) a file to write exactly there: that extension, an existing folder, no directory in
                            the way, and no existing file unless --force (the eager FORCE option) was given
"""
import math
import re

import click

from k25ref.files import output_problem


class Finite(click.FloatRange):
    """A finite float in [min, max] (min_open/max_open exclude the bound, as in click.FloatRange)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


SEED = click.IntRange(0, 2**63 - 1)

_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KMGT]?I?B?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
          "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}


class Size(click.ParamType):
    """A byte count written like 4G, 4GB, 512MiB, 1e9 or 0: non-negative and finite, at most 2^63-1."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        match = _SIZE.fullmatch(str(value))
        unit = match and match.group(2).upper().removesuffix("B")
        if not match or unit not in _UNITS:
            self.fail(f"{value!r} is not a size like 4G, 4GB, 512MiB or 1e9", param, ctx)
        number = float(match.group(1)) * _UNITS[unit]
        if not math.isfinite(number) or number > 2**63 - 1:
            self.fail(f"{value!r} is more bytes than any machine has", param, ctx)
        return int(number)


class OutputFile(click.ParamType):
    """A path to write one file to, exactly as given (no extension appended), checked at parse time."""

    name = "file"

    def __init__(self, *extensions):
        self.extensions = extensions

    def convert(self, value, param, ctx):
        problem = output_problem(value, self.extensions, force=bool(ctx and ctx.params.get("force")))
        if problem:
            self.fail(problem, param, ctx)
        return value


FORCE = click.option("--force", is_flag=True, is_eager=True, help="Replace output files that already exist.")
