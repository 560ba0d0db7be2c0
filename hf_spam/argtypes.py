"""argparse types for the commands' own flags: a bad value is argparse's one-line error and exit code 2."""

from __future__ import annotations

import argparse
import math


def _checked(text: str, parse, accept, expected: str):
    try:
        value = parse(text)
    except ValueError:
        value = None
    if value is None or not accept(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _checked(text, int, lambda v: v >= 1, "a whole number of at least 1")


def non_negative_int(text: str) -> int:
    return _checked(text, int, lambda v: v >= 0, "a whole number of at least 0")


def unit_fraction(text: str) -> float:
    return _checked(text, float, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def positive_float(text: str) -> float:
    return _checked(text, float, lambda v: 0 < v < float("inf"), "a positive number")


def non_negative_float(text: str) -> float:
    return _checked(text, float, lambda v: 0 <= v < float("inf"), "a finite number of at least 0")


def finite_float(text: str) -> float:
    return _checked(text, float, math.isfinite, "a finite number")


def port_number(text: str) -> int:
    return _checked(text, int, lambda v: 1 <= v <= 65535, "a TCP port in 1-65535")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad flag reported as one line: `prog: error: ...` (and `--help` for the usage), and no
    abbreviated flags: `--num_train_epoch` must not quietly mean another flag."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
