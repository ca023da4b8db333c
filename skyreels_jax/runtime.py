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
