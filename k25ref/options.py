"""click parameter types shared by every k25ref command, so each option is checked when it is parsed -- before
any work starts -- and a bad value is one usage line (exit 2) that names the option.

    Finite(0, None)         a float that is not NaN or +-inf, inside a range (click's FloatRange lets NaN through)
    SEED                    an integer seed in [0, 2^63)
    Size()                  bytes: 4G = 4GB = 4e9, 512MiB = 512 * 2^20, 1e9 (decimal K M G T, binary KiB .. TiB)
    OutputFile(".png", ...) a file to write exactly there: that extension, an existing folder, no directory in
                            the way, and no existing file unless --force (the eager FORCE option) was given

and, for the argparse tools behind `k25ref bench`, ArgumentParser (errors in one line, exit 2) with the types
positive_int, nonnegative_int, size_arg, names_arg(allowed) and lengths_arg.
"""
import argparse
import math
import os
import re
import sys

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


def parse_size(text):  # "4G" -> 4_000_000_000
    """A byte count written like 4G, 4GB, 512MiB, 1e9 or 0 -> int; ValueError saying what is wrong."""
    match = _SIZE.fullmatch(str(text))
    unit = match and match.group(2).upper().removesuffix("B")
    if not match or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size like 4G, 4GB, 512MiB or 1e9")
    number = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(number) or number > 2**63 - 1:
        raise ValueError(f"{text!r} is more bytes than any machine has")
    return int(number)


class Size(click.ParamType):
    """A byte count written like 4G, 4GB, 512MiB, 1e9 or 0: non-negative and finite, at most 2^63-1."""

    name = "size"

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


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


# ----------------------------------------------------------------------------
# the same contract for the argparse tools behind `k25ref bench`


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit 2, like every k25ref command's."""

    def error(self, message):
        sys.stderr.write(f"k25ref: error: {self.prog}: {message}\n")
        sys.exit(2)


def _whole(text, least):  # "3" -> 3 when at least `least`, else an argparse error saying so
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < least:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least {least}")
    return n


def positive_int(text):  # argparse type: "3" -> 3, a count of at least 1
    return _whole(text, 1)


def nonnegative_int(text):  # argparse type: "0" -> 0, a count that may be 0
    return _whole(text, 0)


def _number(text, ok, what):  # "0.3" -> 0.3 when ok(0.3), else an argparse error saying what it must be
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not ok(x):                                            # NaN fails every comparison, so it is refused
        raise argparse.ArgumentTypeError(f"{text!r} {what}")
    return x


def share_arg(text):  # argparse type: "0.3" -> 0.3, a fraction from 0 to 1 (NaN refused)
    return _number(text, lambda x: 0.0 <= x <= 1.0, "is a share: from 0 to 1")


def positive_float(text):  # argparse type: "1e-3" -> 0.001, finite and above 0
    return _number(text, lambda x: 0.0 < x < math.inf, "must be a finite number above 0")


def nonnegative_float(text):  # argparse type: "0.5" -> 0.5, finite and 0 or more
    return _number(text, lambda x: 0.0 <= x < math.inf, "must be a finite number, 0 or more")


def size_arg(text):  # argparse type: "4GiB" -> 4 * 2**30
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def names_arg(allowed):
    """argparse type: a comma-separated list of names from `allowed`, checked and returned as written."""
    def convert(text):
        names = text.split(",")
        if not all(n in allowed for n in names):
            raise argparse.ArgumentTypeError(f"{text!r}: comma-separated names from {', '.join(allowed)}")
        return text
    return convert


def lengths_arg(text):  # argparse type: "1024,4096" -> "1024,4096", each a whole number >= 1
    for n in text.split(","):
        positive_int(n)
    return text


def checkpoint_folder(text):  # argparse type: a folder holding a config.json, returned as written
    if not os.path.isfile(os.path.join(text, "config.json")):
        raise argparse.ArgumentTypeError(f"{text!r}: not a checkpoint folder (no config.json)")
    return text
