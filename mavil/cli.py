"""What the command-line tools share: the `--config FILE [section.key=value ...]` parser and the refusal line."""

from __future__ import annotations

import argparse
import sys


def config_parser(description: str) -> argparse.ArgumentParser:
    """The command line of every tool that reads a run config: `--config FILE [section.key=value ...]`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a run config (JSON)")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    return parser


REFUSED = 2  # the exit status of bad input: a config, a file, an argument that cannot run


def refuse(err: Exception | str, show: bool = True) -> int:
    """Bad input: prints `error: <err>` on stderr in one line (where `show`: rank 0 of several) -> REFUSED."""
    if show:
        print(f"error: {err}", file=sys.stderr, flush=True)
    return REFUSED
