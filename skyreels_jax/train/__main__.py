"""python -m skyreels_jax.train --config=configs/tiny.py --workdir=DIR [--config.x.y=v ...]

Trains (or resumes, when DIR/checkpoints has a step) and writes DIR/metrics.jsonl,
DIR/events.jsonl, DIR/tensorboard/ and DIR/checkpoints/. On several hosts, run the same
command on each (see skyreels_jax/parallel/multihost.py for how the cluster is found, and
launch/ for launchers).

Exit status: 0 done; 2 a usage error (bad flag or config, checkpoints that belong to another
kind of run), one line, no traceback; 3 halted (non-finite steps past
train.max_skipped_steps, or a non-finite state), one line; 75 preempted (SIGTERM / SIGINT:
the current step was saved; rerun the same command to resume); anything else is a crash.
"""

import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from skyreels_jax.parallel import multihost

_STARTED_AT = time.time()
EXIT_USAGE = 2
EXIT_HALTED = 3

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).",
                               required=True)
_RESTORE_STEP = flags.DEFINE_integer(
    "restore_step", None, "Resume from this saved step (default: config.train.restore_step, "
    "-1: the newest that restores); newer checkpoints are moved aside.")
_CLUSTER = multihost.define_flags()


def _usage_error(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USAGE)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, but a bad flag is one line and status 2 (absl prints its help, 1)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _usage_error(str(e))


def main(argv):
  del argv
  multihost.initialize_from_flags(_CLUSTER)  # before any other JAX call
  import jax
  from skyreels_jax import runtime
  runtime.quiet_until_routed()   # JAX's start-up INFO lines: not on the console
  from skyreels_jax.config import ConfigError
  from skyreels_jax.train import goodput
  from skyreels_jax.train.preemption import EXIT_PREEMPTED
  from skyreels_jax.train.resume import ResumeError
  from skyreels_jax.train.trainer import RunHalted, train
  runtime.setup_compilation_cache()
  # Library INFO logs (orbax, grain, absl) to WORKDIR/logs/; the console: warnings, the bar.
  runtime.route_logs(_WORKDIR.value, "train")
  try:
    result = train(_CONFIG.value, _WORKDIR.value, restore_step=_RESTORE_STEP.value,
                   started_at=_STARTED_AT)
  except (ConfigError, ResumeError) as e:
    _usage_error(str(e))
  except RunHalted as e:
    print(f"halted: {e}", file=sys.stderr, flush=True)
    sys.exit(EXIT_HALTED)
  if jax.process_index() == 0:
    try:   # a report: its failure must not turn a finished run into a failed one
      print(goodput.format_summary(goodput.summarize(_WORKDIR.value)), flush=True)
    except Exception:  # pylint: disable=broad-except
      logging.exception("goodput summary failed (the run itself is fine)")
  if result["preempted"]:
    print(f"preempted at step {result['step']}; rerun the same command to resume", flush=True)
    sys.exit(EXIT_PREEMPTED)
  if jax.process_index() == 0:
    print(f"done: step {result['step']} loss {result.get('loss', float('nan')):.4f}")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
