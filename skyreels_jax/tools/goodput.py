"""Goodput of a training run: productive step time / wall time, and where the rest went.

  python -m skyreels_jax.tools.goodput --workdir=RUN

prints one line per bucket of RUN/events.jsonl, then the summary as one JSON line (the
accounting: skyreels_jax/train/goodput.py).
"""

from __future__ import annotations

import argparse
import os
import sys

from skyreels_jax.train.events import FILENAME
from skyreels_jax.train.goodput import format_summary, summarize  # noqa: F401  (re-exported)


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a training run directory")
  args = p.parse_args(argv)
  if not os.path.exists(os.path.join(args.workdir, FILENAME)):
    print(f"--workdir={args.workdir}: no {FILENAME} there (not a training run directory, or "
          "one that has not started)", file=sys.stderr)
    return 2
  print(format_summary(summarize(args.workdir)))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
