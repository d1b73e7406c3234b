"""Command-line helpers shared by the scripts: help that shows defaults, and argument types that check their values.

Each type turns a bad value into argparse's one-line usage error (exit
status 2) before the script does anything, so that no mistyped number or
path reaches the code that creates, moves or deletes files.
"""

import argparse
import math
import os
from pathlib import Path


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show (no default, an empty list, an on/off switch)."""

    def _get_help_string(self, action):
        if action.default in (None, []) or isinstance(action, argparse._StoreTrueAction):
            return action.help
        return super()._get_help_string(action)


def bounded_int(low: int, high: int | None = None):
    """An argparse type: a whole number from ``low`` to ``high`` (no upper bound when None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {span}, not {value}")
        return value
    parse.__name__ = "whole number"
    return parse


positive_int = bounded_int(1)
nonnegative_int = bounded_int(0)


def off_or_bounded_int(low: int, high: int):
    """An argparse type: 0 (off), or a whole number from ``low`` to ``high``."""
    whole = bounded_int(-math.inf)

    def parse(text: str) -> int:
        value = whole(text)
        if value != 0 and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be 0 (off) or from {low} to {high}, not {value}")
        return value
    parse.__name__ = "whole number"
    return parse


def positive_float(text: str) -> float:
    """An argparse type: a finite number above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text}")
    return value


def bounded_float(low: float, high: float):
    """An argparse type: a finite number from ``low`` to ``high``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a number from {low:g} to {high:g}, not {text}")
        return value
    parse.__name__ = "number"
    return parse


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    value = positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def names_from(choices):
    """An argparse type: some of ``choices``, comma-separated, each once, as a tuple (train.py and demo.py's
    --recolour NAMES)."""
    def parse(text: str) -> tuple[str, ...]:
        names = text.split(",")
        if not all(name in choices for name in names) or len(set(names)) < len(names):
            raise argparse.ArgumentTypeError(f"expected names from {', '.join(choices)}, comma-separated, each once, "
                                             f"not {text!r}")
        return tuple(names)
    parse.__name__ = "names"
    return parse


def _path(text: str) -> Path:
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset shell variable?)")
    if "\x00" in text:
        raise argparse.ArgumentTypeError("a path cannot contain a NUL character")
    return Path(text)


def existing_file(text: str) -> str:
    """An argparse type: a regular file that exists and can be read."""
    path = _path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text}: file not found")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: not a regular file")
    if not os.access(path, os.R_OK):
        raise argparse.ArgumentTypeError(f"{text}: not readable")
    return text


def existing_dir(text: str) -> str:
    """An argparse type: a folder that exists."""
    path = _path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {'not a folder' if path.exists() else 'folder not found'}")
    return text


def folder_path(text: str) -> str:
    """An argparse type: a folder to write into, which may not exist yet but is not a file."""
    path = _path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: exists and is not a folder")
    return text


def file_path(text: str) -> str:
    """An argparse type: a file to write, which may not exist yet but is not a folder, in a folder that is not a file."""
    path = _path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a folder; name a file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {parent} is not a folder")
            break
    return text


def nonempty_path(text: str) -> str:
    """An argparse type: any path that is not empty (an image, or a folder of images, checked later)."""
    _path(text)
    return text


VGG_WEIGHTS_NAMES = ("imagenet", "synthetic", "none")


def vgg_weights(text: str) -> str:
    """An argparse type: ``imagenet``, ``synthetic``, ``none``, or a local weights file that exists."""
    if text in VGG_WEIGHTS_NAMES:
        return text
    try:
        return existing_file(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error} (expected {', '.join(VGG_WEIGHTS_NAMES)} or a weights file)") from None


def bounded_append(limit: int, what: str):
    """An ``action="append"`` that refuses more than ``limit`` values (e.g. --ensemble's runs)."""

    class BoundedAppend(argparse.Action):
        def __call__(self, parser, namespace, value, option_string=None):
            values = [*(getattr(namespace, self.dest, None) or []), value]
            if len(values) > limit:
                raise argparse.ArgumentError(self, f"at most {limit} {what}")
            setattr(namespace, self.dest, values)

    return BoundedAppend


def add_drawing_options(parser: argparse.ArgumentParser, samples_help: str) -> None:
    """--samples, --judge and --seed: captions drawn per photo and the runs that choose among them (predict.py,
    evaluate.py, app.py); check them after parsing with ``check_drawing_options``."""
    from decoding import JUDGE_HELP, MAX_JUDGES, MAX_SAMPLES

    parser.add_argument("--samples", type=off_or_bounded_int(1, MAX_SAMPLES), default=0, metavar="N",
                        help=samples_help)
    parser.add_argument("--judge", action=bounded_append(MAX_JUDGES, "judges"), default=[], metavar="RUN",
                        type=nonempty_path, help=JUDGE_HELP)
    parser.add_argument("--seed", type=bounded_int(0, 2**32 - 1), help="with --samples: the draws' seed [default: 0]")


def check_drawing_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse's usage error for --seed or --judge without --samples."""
    if args.seed is not None and not args.samples:
        parser.error("--seed sets the draws of --samples; give --samples N too")
    if args.judge and not args.samples:
        parser.error("--judge ranks the captions drawn for a photo; give --samples N too")
