"""Command-line form of tests/conftest.py's small_run_config, for runs in subprocesses."""

from configs import tiny
from conftest import small_run_config


def _overrides(base: dict, want: dict, prefix: str = ""):
  for key, value in want.items():
    if isinstance(value, dict):
      yield from _overrides(base[key], value, f"{prefix}{key}.")
    elif base.get(key) != value:
      if not isinstance(value, (bool, int, float, str)):
        raise TypeError(f"config.{prefix}{key}={value!r}: no command-line form here")
      yield f"--config.{prefix}{key}={value}"


def small_run_args(data_path: str, workdir: str) -> list[str]:
  """`python -m skyreels_jax.train` arguments that rebuild small_run_config(data_path): the
  fields where it differs from configs/tiny.py, as `--config.*` overrides."""
  base, want = tiny.get_config().to_dict(), small_run_config(data_path).to_dict()
  return (["--config=configs/tiny.py", f"--workdir={workdir}"]
          + sorted(_overrides(base, want)))
