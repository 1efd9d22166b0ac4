"""Argument types, output and run keys shared by ``csl.cli`` and the subcommands other modules register."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["number", "print_result", "run_key"]


def number(kind: type, lo: float, hi: float, *, low_open: bool = False):
    """An argparse type: ``kind`` (int or float) within ``lo..hi`` (``(lo, hi]`` with ``low_open``)."""
    span = f"({lo:g}, {hi:g}]" if low_open else f"{lo:g}..{hi:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a {'whole ' if kind is int else ''}number in {span}, got {text!r}") from None
        if not (lo < value if low_open else lo <= value) or value > hi:
            raise argparse.ArgumentTypeError(f"expected a number in {span}, got {value}")
        return value
    return parse


def run_key() -> str:
    """The key of a run started from the command line (``csl_ops`` records name their run):
    ``cli__`` and the UTC time to the microsecond."""
    import datetime

    return "cli__" + datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def print_result(args: argparse.Namespace, payload: Any, human: str) -> None:
    """``payload`` as JSON with ``--json``, else the human text."""
    print(json.dumps(payload, indent=2, default=str) if args.json else human)
