"""The bottom floor: what every package may import (ARCHITECTURE.md). Config errors and
the constants shared across floors; nothing of ours is imported here."""

from __future__ import annotations

import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MESH_AXES = ("data", "fsdp", "sequence", "tensor")


class ConfigError(ValueError):
  """A config value that cannot work, naming its field (`config.<field>: ...`)."""

  def __init__(self, field: str, message: str):
    super().__init__(f"config.{field}: {message}")
    self.field = field


def check(cond: bool, field: str, message: str) -> None:
  """Raises ConfigError(field, message) unless cond."""
  if not cond:
    raise ConfigError(field, message)
