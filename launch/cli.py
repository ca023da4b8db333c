"""Command lines of the launchers: `python -m launch.X [launcher flags] -- <args passed on>`.

argparse rather than absl flags: launchers are imported side by side (tests), and their
flags must not meet in one global registry.
"""

from __future__ import annotations

import argparse


def parser(doc: str | None) -> argparse.ArgumentParser:
  return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                 epilog="Arguments after -- are passed on unchanged.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def parse(p: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
  """(launcher options, the arguments after the first `--`)."""
  split = argv.index("--") if "--" in argv else len(argv)
  return p.parse_args(argv[:split]), list(argv[split + 1:])
