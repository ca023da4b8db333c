"""The data pipelines' command lines: a user's mistake (a bad flag, a missing or unusable
--src / --data / --records, data that does not fit the config) is one line on stderr and
status 2; a traceback is left for our bugs."""

import sys

USAGE = 2


def fail(message) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(USAGE)


def run(main, user_errors=(FileNotFoundError, NotADirectoryError, ValueError)) -> None:
  """absl's app.run(main), with flag errors and `user_errors` raised by main as one line.
  The pipelines raise ValueError / FileNotFoundError only on their inputs."""
  from absl import app, flags  # pylint: disable=g-import-not-at-top

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      fail(e)

  def wrapped(argv):
    try:
      main(argv)
    except user_errors as e:
      fail(e)

  app.run(wrapped, flags_parser=parse)
