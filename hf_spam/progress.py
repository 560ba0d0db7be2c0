"""Progress bars for the long steps (predict, `cv`'s folds, export, the frozen-trunk pass, held-out scoring),
drawn as Transformers draws its own: tqdm on a terminal only, since in a file or a pipe its carriage returns
leave hundreds of fragments in a log, and never with `--disable_tqdm`."""

from __future__ import annotations

import argparse
import sys


def add_disable_tqdm(parser: argparse.ArgumentParser) -> None:
    """`--disable_tqdm` as `hf-spam train` spells it: bare, or with true/false."""
    parser.add_argument(
        "--disable_tqdm", nargs="?", const=True, default=False, type=_truth, metavar="BOOL",
        help="No progress bars (they are drawn on a terminal only, never into a file or a pipe).",
    )  # fmt: skip


def progress_bar(total: int | None = None, desc: str = "", unit: str = "msg", disable: bool = False, **kwargs):
    """A tqdm bar on stderr, or a silent one (same methods) off a terminal or when `disable`."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=disable or not sys.stderr.isatty(), **kwargs)


def quiet_library_bars(disable: bool = False) -> bool:
    """Turn Transformers' and datasets' own bars (loading weights, map) off where ours are off: off a terminal,
    or when `disable`. Whether bars are off."""
    off = disable or not sys.stderr.isatty()
    if off:
        import datasets
        import transformers

        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()
    return off


def _truth(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
