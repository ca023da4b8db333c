"""Matching a source tree of weights onto a target tree by name and shape, with a report.

Names are '/'-joined parameter paths ("mmdit/dual_blocks/attn/qkv/kernel"). A target leaf
whose name and shape a source leaf has is loaded; a target leaf no source leaf names stays as
initialised (new); a source leaf that fits nowhere (no such target, or another shape) is an
error naming it, unless one of the `ignore` regexes matches its name (ignored). Used to start
a run from another run's or a converted checkpoint's weights (train.init_from).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

from flax import nnx


class MatchError(ValueError):
  """Source weights that fit no target parameter."""


@dataclasses.dataclass
class Report:
  loaded: list[str]
  new: list[str]
  ignored: list[str]

  def to_json(self) -> dict[str, Any]:
    return {"counts": {k: len(v) for k, v in dataclasses.asdict(self).items()},
            **dataclasses.asdict(self)}

  def summary(self, limit: int = 8) -> str:
    def names(xs):
      return ", ".join(xs[:limit]) + (f", ... ({len(xs) - limit} more)" if len(xs) > limit
                                      else "")
    lines = [f"loaded {len(self.loaded)}, new {len(self.new)}, ignored {len(self.ignored)}"]
    lines += [f"  new: {names(self.new)}"] if self.new else []
    lines += [f"  ignored: {names(self.ignored)}"] if self.ignored else []
    return "\n".join(lines)


def name(path) -> str:
  return "/".join(str(getattr(p, "key", p)) for p in path)


def flat(state: nnx.State) -> dict[str, Any]:
  """{name: leaf value} of an nnx.State (values, or ShapeDtypeStructs of an abstract one)."""
  return {name(p): v.get_value() if isinstance(v, nnx.Variable) else v
          for p, v in nnx.to_flat_state(state)}


def match(target: Mapping[str, Any], source: Mapping[str, Any],
          ignore: Sequence[str] = ()) -> tuple[dict[str, Any], Report]:
  """({target name: source value} to load, the report). `target` and `source` map names to
  anything with a `.shape`. Raises MatchError naming the source leaves that fit nowhere."""
  patterns = [re.compile(p) for p in ignore]
  ignored = lambda n: any(p.search(n) for p in patterns)
  values, bad, dropped = {}, [], []
  for n, v in source.items():
    t = target.get(n)
    if t is not None and tuple(t.shape) == tuple(v.shape) and not ignored(n):
      values[n] = v
    elif ignored(n):
      dropped.append(n)
    else:
      why = "no such parameter" if t is None else f"shape {tuple(v.shape)} != {tuple(t.shape)}"
      bad.append(f"{n} ({why})")
  if bad:
    raise MatchError(f"{len(bad)} source weights fit no parameter: {', '.join(bad[:10])}"
                     + (f", ... ({len(bad) - 10} more)" if len(bad) > 10 else "")
                     + "; list them in train.init_ignore (regexes) to leave them out")
  new = sorted(n for n in target if n not in values)
  return values, Report(loaded=sorted(values), new=new, ignored=sorted(dropped))


def replace(state: nnx.State, values: Mapping[str, Any]) -> nnx.State:
  """`state` with the leaves `values` names replaced (same structure and Variable types)."""
  out = []
  for p, v in nnx.to_flat_state(state):
    n = name(p)
    if n in values:
      v = v.replace(values[n]) if isinstance(v, nnx.Variable) else values[n]
    out.append((p, v))
  return nnx.from_flat_state(out)
