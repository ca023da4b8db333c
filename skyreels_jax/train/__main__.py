"""python -m skyreels_jax.train --config=configs/tiny.py --workdir=DIR [--config.x.y=v ...]

Trains (or resumes, when DIR/checkpoints has a step) and writes DIR/metrics.jsonl,
DIR/tensorboard/ and DIR/checkpoints/. On several hosts, run the same command on each (see
skyreels_jax/parallel/multihost.py for how the cluster is found, and launch/ for launchers).
"""

from absl import app, flags
from ml_collections import config_flags

from skyreels_jax.parallel import multihost

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics).",
                               required=True)
_CLUSTER = multihost.define_flags()


def main(argv):
  del argv
  multihost.initialize_from_flags(_CLUSTER)  # before any other JAX call
  import jax
  from skyreels_jax import runtime
  from skyreels_jax.config import ConfigError
  from skyreels_jax.train.trainer import train
  runtime.setup_compilation_cache()
  try:
    result = train(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    raise app.UsageError(str(e)) from None
  if jax.process_index() == 0:
    print(f"done: step {result['step']} loss {result.get('loss', float('nan')):.4f}")


if __name__ == "__main__":
  app.run(main)
