"""Configs as the train command builds them, without running it: a config file (with its
`:arg`) plus `--config.path=value` flags, or plain `path=value` overrides (sweeps).

A value is read as the field's own type (str, int, float), anything else (bool, tuple, list,
None) as a Python literal: what `python -m skyreels_jax.train` accepts on its command line.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class UsageError(ValueError):
  pass


def load_file(path: str, what: str):
  """The Python module of a file (a path relative to the repo, or absolute): a config or a
  sweep file; UsageError "<what> ... not found" when there is none."""
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  if not os.path.isfile(full):
    raise UsageError(f"{what}: no such file")
  module_spec = importlib.util.spec_from_file_location("_file_" + re.sub(r"\W", "_", path),
                                                       full)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load(spec: str):
  """The config of "configs/x.py[:arg]"."""
  path, _, arg = spec.partition(":")
  module = load_file(path, f"config file {path!r}")
  return module.get_config(arg) if arg else module.get_config()


def parse_value(old, text: str, name: str):
  """`text` as a value of the type of `old`."""
  try:
    if isinstance(old, (str, int, float)) and not isinstance(old, bool):
      return type(old)(text)
    return ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    raise UsageError(f"{name}={text}: {e}") from None


def set_field(config, path: str, value, *, text: bool = False) -> None:
  """config.<path> = value (a string to parse when `text`); an unknown field is a
  UsageError naming it."""
  *parents, leaf = path.split(".")
  section = config
  try:
    for p in parents:
      section = section[p]
    old = section[leaf]
  except (KeyError, TypeError):
    raise UsageError(f"config.{path}: no such field") from None
  if text:
    value = parse_value(old, value, f"config.{path}")
  try:
    section[leaf] = value
  except TypeError as e:
    raise UsageError(f"config.{path}={value!r}: {e}") from None


def apply_flags(config, args: list[str]):
  """Applies every `--config.path=value` of a train command line; returns the config."""
  for a in args:
    m = re.fullmatch(r"--config\.([\w.]+)=(.*)", a, re.DOTALL)
    if m:
      set_field(config, m.group(1), m.group(2), text=True)
  return config


def flag_value(value) -> str:
  """A Python value as the train command's flag text (parse_value reads it back)."""
  return value if isinstance(value, str) else repr(value)
