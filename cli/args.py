"""argparse with the project's bad-input convention: one line on stderr, exit 2, never a usage
dump; abbreviations of long options are off (a prefix is not taken for another option); a float
option refuses nan and inf; `--opt=--` gives the option the value `--` (Python 3.11's argparse drops
it and hands the program an empty list, unconverted)."""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

from cli.errors import mask_secrets


def finite_float(text: str) -> float:
    """argparse type: a float that is neither nan nor infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


class ArgParser(argparse.ArgumentParser):
    """argparse with the project's conventions (module docstring)."""

    def __init__(self, *args, allow_abbrev: bool = False, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def add_argument(self, *args, **kwargs):  # type: ignore[override]
        if kwargs.get("type") is float:
            kwargs["type"] = finite_float
        return super().add_argument(*args, **kwargs)

    def _get_values(self, action: argparse.Action, arg_strings: list[str]):
        if action.option_strings and action.nargs is None and arg_strings == ["--"]:
            value = self._get_value(action, "--")  # its type refuses it, or it is the text "--"
            self._check_value(action, value)
            return value
        return super()._get_values(action, arg_strings)

    def error(self, message: str) -> NoReturn:
        print(f"error: {mask_secrets(' '.join(message.split()))} (see --help)", file=sys.stderr)
        sys.exit(2)
