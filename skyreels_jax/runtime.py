"""Process set-up shared by the entry points (called from main(), never at import)."""

from __future__ import annotations

import os

import jax


def setup_compilation_cache() -> None:
  """Persistent XLA cache so a rerun (resume, sampling after training) skips recompiles."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  base = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
  jax.config.update("jax_compilation_cache_dir", os.path.join(base, "skyreels_jax", "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


_VERBOSITY: list[int] = []   # absl's verbosity before quiet_until_routed


def quiet_until_routed() -> None:
  """Until route_logs names the log file, absl writes every INFO line to the console, among
  them the backends' start-up lines (jax's "Unable to initialize backend 'tpu'" on each GPU
  or CPU machine). An entry point calls this first; lines before the file are dropped."""
  from absl import logging  # late: as in route_logs (absl's handler, once flags are parsed)
  if not _VERBOSITY:
    _VERBOSITY.append(logging.get_verbosity())
    logging.set_verbosity(logging.WARNING)


def route_logs(workdir: str, name: str) -> str:
  """Library INFO logs (orbax, grain, absl, ours) go to WORKDIR/logs/<name>.<process>.log;
  the console keeps warnings and errors (absl's stderr threshold). Returns the file. A
  command line calls it once it knows its workdir, so a run's console shows progress, not
  hundreds of checkpointing lines."""
  from absl import flags, logging  # late: absl's handler exists once flags are parsed
  folder = os.path.join(workdir, "logs")
  os.makedirs(folder, exist_ok=True)
  quiet_until_routed()    # the file's name needs the process index: the backends start
  program = f"{name}.{jax.process_index()}"
  logging.get_absl_handler().use_absl_log_file(program_name=program, log_dir=folder)
  logging.set_verbosity(_VERBOSITY.pop())
  if flags.FLAGS.is_parsed():
    flags.FLAGS.stderrthreshold = "warning"
  return os.path.join(folder, f"{program}.INFO")
