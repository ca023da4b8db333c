"""The device mesh and logical-axis sharding, both from the config (data, not code).

Mesh axes are fixed: (data, fsdp, sequence, tensor). Parameters carry logical axis names
(embed, heads, mlp, layers, ...); `config.logical_axis_rules` maps them to mesh axes.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from skyreels_jax.core import MESH_AXES, ConfigError, check
from skyreels_jax.weights import trees


def hybrid_mesh_shape(mesh_config, num_devices: int) -> tuple[dict[str, int], dict[str, int]]:
  """(ici, dcn) sizes per mesh axis. `mesh.<axis>` is the size within one slice (ICI; -1 fills
  the slice), `mesh.dcn_<axis>` the number of slices along it (DCN); the mesh axis spans
  both: size = ici * dcn, slice-major. With every dcn_* = 1 this is the single-slice mesh.
  Errors name the field."""
  dcn = {a: int(mesh_config.get(f"dcn_{a}", 1)) for a in MESH_AXES}
  for a, n in dcn.items():
    check(n >= 1, f"mesh.dcn_{a}", f"must be >= 1 (a number of slices), got {n}")
  slices = math.prod(dcn.values())
  check(num_devices % slices == 0, "mesh.dcn_*",
         f"{num_devices} devices do not split into {slices} slices ({dcn})")
  per_slice = num_devices // slices
  ici = {a: int(mesh_config[a]) for a in MESH_AXES}
  fixed = math.prod(s for s in ici.values() if s != -1)
  fill = [a for a, s in ici.items() if s == -1]
  where = f" per slice ({slices} slices)" if slices > 1 else ""
  if fill:
    check(per_slice % fixed == 0, f"mesh.{fill[0]}",
           f"{per_slice} devices{where} do not divide by the other axes' product {fixed}")
    ici[fill[0]] = per_slice // fixed
  check(math.prod(ici.values()) == per_slice, "mesh",
         f"{ici} uses {math.prod(ici.values())} devices{where}, have {per_slice}")
  return ici, dcn


def mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
  """The mesh axis sizes (ICI x DCN), with -1 resolved to fill the devices."""
  ici, dcn = hybrid_mesh_shape(mesh_config, num_devices)
  return {a: ici[a] * dcn[a] for a in MESH_AXES}


def make_mesh(mesh_config, devices=None) -> Mesh:
  """The (data, fsdp, sequence, tensor) mesh. With `mesh.dcn_*` > 1 it is a hybrid mesh: the
  devices are grouped into slices (granules), each slice laid out with the ICI sizes, the
  slices along the DCN sizes; every mesh axis is slice-major (index = slice * ici + local)."""
  devices = jax.devices() if devices is None else list(devices)
  ici, dcn = hybrid_mesh_shape(mesh_config, len(devices))
  granules = slice_groups(devices, math.prod(dcn.values()))
  local = [_slice_mesh([ici[a] for a in MESH_AXES], g) for g in granules]
  dcn_shape = [dcn[a] for a in MESH_AXES]
  arr = np.empty(dcn_shape + [ici[a] for a in MESH_AXES], dtype=object)
  for idx, g in zip(np.ndindex(*dcn_shape), local):
    arr[idx] = g
  n = len(MESH_AXES)     # (dcn..., ici...) -> (dcn0, ici0, dcn1, ici1, ...) -> global axes
  arr = arr.transpose([i for a in range(n) for i in (a, n + a)])
  arr = arr.reshape([dcn[a] * ici[a] for a in MESH_AXES])
  return Mesh(arr, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * n)


def slice_groups(devices: list, num_slices: int) -> list[list]:
  """Devices grouped into `num_slices` granules joined by DCN: TPU slices (`slice_index`),
  else processes (hosts; GPU nodes), else equal consecutive blocks (one host simulating
  slices). Raises ConfigError when the hardware has another number of slices or hosts."""
  if num_slices == 1:
    tpu_slices = {getattr(d, "slice_index", 0) for d in devices}
    if len(tpu_slices) > 1:
      raise ConfigError("mesh.dcn_*", f"the devices form {len(tpu_slices)} TPU slices joined "
                        f"by DCN; say how the mesh spans them, e.g. dcn_data={len(tpu_slices)}")
    return [devices]
  for key in ("slice_index", "process_index"):
    ids = sorted({getattr(d, key, 0) for d in devices})
    if len(ids) > 1:
      if len(ids) != num_slices:
        raise ConfigError("mesh.dcn_*", f"the product of the dcn sizes is {num_slices}, but "
                          f"the devices form {len(ids)} granules by {key}")
      return [[d for d in devices if getattr(d, key, 0) == i] for i in ids]
  per = len(devices) // num_slices
  return [devices[i * per:(i + 1) * per] for i in range(num_slices)]


def _slice_mesh(shape: list[int], devices: list) -> np.ndarray:
  """One slice's devices in `shape`: TPU devices by their physical torus (mesh_utils), others
  in order."""
  if devices[0].platform == "tpu":
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  return np.asarray(devices).reshape(shape)


def rules(config) -> tuple:
  return tuple((k, tuple(v) if isinstance(v, (list, tuple)) else v)
               for k, v in config.logical_axis_rules)


def logical_to_mesh(spec: tuple, axis_rules) -> P:
  """A tuple of logical names -> a PartitionSpec, each mesh axis used at most once."""
  table = dict(axis_rules)
  used, out = set(), []
  for name in spec:
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*out)


def fit_to_shape(spec: P, shape: tuple[int, ...], sizes) -> P:
  """`spec` with, in each dimension, its last mesh axes dropped until their product divides
  the dimension (`sizes`: mesh axis -> size). A weight too narrow for the mesh (the MLLM's
  1280-wide vision tower over fsdp 512) is then sharded over fewer axes, or replicated along
  that dimension, rather than rejected; every shape that divides keeps its spec."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = [axes] if isinstance(axes, str) else list(axes or ())
    while axes and dim % math.prod(sizes[a] for a in axes):
      axes.pop()
    out.append(axes[0] if len(axes) == 1 else (tuple(axes) or None))
  return P(*out)


def state_shardings(abstract_tree: Any, mesh: Mesh, axis_rules) -> Any:
  """NamedShardings for a tree whose leaves are nnx Variables (logical `out_sharding`
  metadata; fitted to their shapes, `fit_to_shape`) or arrays (replicated)."""
  def one(x):
    names = getattr(x, "out_sharding", None) if isinstance(x, nnx.Variable) else None
    if not names:
      return NamedSharding(mesh, P())
    spec = logical_to_mesh(names, axis_rules)
    shape = getattr(x.get_value(), "shape", None)
    return NamedSharding(mesh, spec if shape is None else fit_to_shape(spec, shape, mesh.shape))
  return jax.tree.map(one, abstract_tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh, ndim: int, axis_rules) -> NamedSharding:
  return NamedSharding(mesh, logical_to_mesh(("batch",) + (None,) * (ndim - 1), axis_rules))


def data_parallel_size(mesh: Mesh, axis_rules) -> int:
  spec = logical_to_mesh(("batch",), axis_rules)[0]
  axes = (spec,) if isinstance(spec, str) else tuple(spec or ())
  return int(np.prod([mesh.shape[a] for a in axes])) if axes else 1


def place_tree(tree: Any, mesh: Mesh, axis_rules) -> tuple[Any, Any]:
  """(tree on the mesh, its shardings): by the leaves' logical axes (the MLLM's embed / mlp
  / heads, like the MMDiT's), replicated where they have none (the VAEs' convolutions)."""
  shardings = state_shardings(tree, mesh, axis_rules)
  return trees.place(tree, shardings), shardings


def check_config(config) -> None:
  """mesh.*: at most one axis fills the devices (-1), DCN slices are ints >= 1; ulysses
  splits the heads over tensor x sequence."""
  fills = [a for a in MESH_AXES if config.mesh[a] == -1]
  check(len(fills) <= 1, "mesh", f"at most one axis may be -1, got {fills}")
  for a in MESH_AXES:
    check(config.mesh[a] == -1 or config.mesh[a] >= 1, f"mesh.{a}", "must be -1 or >= 1")
    dcn = config.mesh[f"dcn_{a}"]
    check(isinstance(dcn, int) and dcn >= 1, f"mesh.dcn_{a}",
          f"must be an int >= 1 (slices along {a}), got {dcn!r}")
  if config.attention == "ulysses":
    heads, tensor, seq = config.model.num_heads, config.mesh.tensor, config.mesh.sequence
    if tensor > 0 and seq > 0:
      check(heads % (tensor * seq) == 0, "model.num_heads",
            f"attention=ulysses splits {heads} heads over mesh.tensor={tensor} x "
            f"mesh.sequence={seq}")
