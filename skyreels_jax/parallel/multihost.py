"""Multi-process start-up: `initialize()` joins this process to a JAX cluster before any other
JAX call, and `data_shard()` says which block of each global batch this process reads.

Where the cluster comes from (first match wins; `--distributed` / SKYREELS_DISTRIBUTED forces
one of `none | explicit | slurm | tpu`, the default `auto` detects):

  explicit  a coordinator is given: `--coordinator_address=host:port --num_processes=N
            --process_id=i` (or SKYREELS_COORDINATOR, SKYREELS_NUM_PROCESSES,
            SKYREELS_PROCESS_ID). `launch/local.py` uses this.
  slurm     inside `srun` with SLURM_NTASKS > 1: process count and id from SLURM_NTASKS /
            SLURM_PROCID; coordinator = SKYREELS_COORDINATOR (launch/slurm/train.sbatch sets it
            to the job's first node) or the first node of the step's node list on port
            61440 + job id % 4096 (jax's own rule). One process per node sees all the node's
            GPUs; several processes per node get GPU SLURM_LOCALID each, unless slurm already
            bound one GPU per task (CUDA_VISIBLE_DEVICES holds one id).
  tpu       TPU pods (a TPU VM, or GKE / xpk where TPU_WORKER_HOSTNAMES is set):
            `jax.distributed.initialize()` with no arguments, which reads the TPU metadata.
  none      nothing to do: a single process (the default on a machine with no cluster).

Other knobs: SKYREELS_LOCAL_DEVICE_IDS=0,1 (GPUs this process drives),
SKYREELS_NUM_CPU_DEVICES=K (simulated CPU devices per process, `jax_num_cpu_devices`; the
local launcher sets it) and SKYREELS_HEARTBEAT_TIMEOUT_S (default 100, JAX's): when a process
dies, every other one stops (JAX's coordination service aborts it, naming the lost task) at
most this many seconds later; when process 0 (the coordinator) dies, the others stop at once.
Command-line flags override the environment.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from absl import flags
import jax

MODES = ("auto", "none", "explicit", "slurm", "tpu")
ENV_MODE = "SKYREELS_DISTRIBUTED"
ENV_COORDINATOR = "SKYREELS_COORDINATOR"
ENV_NUM_PROCESSES = "SKYREELS_NUM_PROCESSES"
ENV_PROCESS_ID = "SKYREELS_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "SKYREELS_LOCAL_DEVICE_IDS"
ENV_NUM_CPU_DEVICES = "SKYREELS_NUM_CPU_DEVICES"
ENV_HEARTBEAT_TIMEOUT = "SKYREELS_HEARTBEAT_TIMEOUT_S"
DEFAULT_HEARTBEAT_TIMEOUT_S = 100


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
  """What `initialize` passes to `jax.distributed.initialize` (mode `tpu`: nothing)."""
  mode: str
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None


def define_flags():
  """absl flags of an entry point (call at module level of a `__main__`); pass the returned
  holders to `initialize_from_flags` in main()."""
  return {
      "mode": flags.DEFINE_enum("distributed", None, list(MODES),
                                f"Cluster to join (default: ${ENV_MODE} or auto-detect)."),
      "coordinator_address": flags.DEFINE_string(
          "coordinator_address", None, f"host:port of process 0 (or ${ENV_COORDINATOR})."),
      "num_processes": flags.DEFINE_integer(
          "num_processes", None, f"Processes in the run (or ${ENV_NUM_PROCESSES})."),
      "process_id": flags.DEFINE_integer(
          "process_id", None, f"This process's index (or ${ENV_PROCESS_ID})."),
  }


def initialize_from_flags(holders: dict) -> ClusterSpec:
  return initialize(**{k: h.value for k, h in holders.items()})


def _int_env(env, name):
  value = env.get(name)
  return int(value) if value not in (None, "") else None


def _first_slurm_host(node_list: str) -> str:
  """First host of a slurm node list: 'a1', 'a1,b2', 'node[003-005,9],x' -> 'a1', 'node003'."""
  m = re.match(r"([^,\[]+)(\[([^\],\-]+))?", node_list)
  if not m:
    raise ValueError(f"cannot parse slurm node list {node_list!r}")
  return m.group(1) + (m.group(3) or "")


def _slurm_tasks_per_node(env) -> int:
  per_node = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_STEP_TASKS_PER_NODE") or ""
  m = re.match(r"(\d+)", per_node)
  if m:
    return int(m.group(1))
  nodes = _int_env(env, "SLURM_STEP_NUM_NODES") or _int_env(env, "SLURM_JOB_NUM_NODES") or 1
  return max(1, (_int_env(env, "SLURM_NTASKS") or 1) // nodes)


def _on_tpu(env) -> bool:
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return True
  return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def resolve(mode: str | None = None, coordinator_address: str | None = None,
            num_processes: int | None = None, process_id: int | None = None,
            local_device_ids=None, env=None) -> ClusterSpec:
  """The cluster this process belongs to, from arguments first, then the environment.
  Pure (no JAX calls), so launchers and tests can check it."""
  env = os.environ if env is None else env
  mode = mode or env.get(ENV_MODE) or "auto"
  if mode not in MODES:
    raise ValueError(f"{ENV_MODE}={mode!r}: expected one of {MODES}")
  coordinator = (coordinator_address or env.get(ENV_COORDINATOR)
                 or env.get("JAX_COORDINATOR_ADDRESS"))
  num = num_processes if num_processes is not None else _int_env(env, ENV_NUM_PROCESSES)
  pid = process_id if process_id is not None else _int_env(env, ENV_PROCESS_ID)
  if local_device_ids is None and env.get(ENV_LOCAL_DEVICE_IDS):
    local_device_ids = [int(x) for x in env[ENV_LOCAL_DEVICE_IDS].split(",")]
  ids = tuple(local_device_ids) if local_device_ids is not None else None
  in_slurm = "SLURM_JOB_ID" in env and "SLURM_PROCID" in env and (
      _int_env(env, "SLURM_NTASKS") or 1) > 1

  if mode == "auto":
    if coordinator and num is not None:
      mode = "explicit"
    elif in_slurm:
      mode = "slurm"
    elif _on_tpu(env):
      mode = "tpu"
    else:
      mode = "none"
  if mode == "none":
    return ClusterSpec("none")
  if mode == "tpu":
    return ClusterSpec("tpu")
  if mode == "slurm":
    if "SLURM_PROCID" not in env:
      raise ValueError("--distributed=slurm outside an srun step (no SLURM_PROCID)")
    num = num if num is not None else int(env["SLURM_NTASKS"])
    pid = pid if pid is not None else int(env["SLURM_PROCID"])
    if not coordinator:
      nodes = env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]
      port = int(env.get("JAX_COORDINATOR_PORT") or 61440 + int(env["SLURM_JOB_ID"]) % 4096)
      coordinator = f"{_first_slurm_host(nodes)}:{port}"
    visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
    if ids is None and _slurm_tasks_per_node(env) > 1 and len(visible) != 1:
      ids = (int(env["SLURM_LOCALID"]),)
  missing = [n for n, v in (("coordinator_address", coordinator), ("num_processes", num),
                            ("process_id", pid)) if v is None]
  if missing:
    raise ValueError(f"--distributed={mode} needs {', '.join(missing)} (flags or "
                     f"${ENV_COORDINATOR} / ${ENV_NUM_PROCESSES} / ${ENV_PROCESS_ID})")
  if not 0 <= pid < num:
    raise ValueError(f"process_id {pid} not in [0, num_processes={num})")
  if ":" not in coordinator:
    raise ValueError(f"coordinator address {coordinator!r} must be host:port")
  return ClusterSpec(mode, coordinator, num, pid, ids)


def quiet_absent_tpu(env=None) -> None:
  """With libtpu installed (requirements-test.txt: AOT compiles) but no TPU on the machine,
  JAX still probes the TPU backend, and libtpu prints five lines of errors about the
  metadata server before JAX falls back to the CPU or GPU. Telling libtpu it is one host
  lets that probe fail silently. Only where no TPU is attached, and never over a setting.
  Entry points call it before JAX's first device call (`initialize` does)."""
  env = os.environ if env is None else env
  if env.get("JAX_PLATFORMS") or _on_tpu(env):
    return
  env.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  env.setdefault("TPU_HOST_BOUNDS", "1,1,1")


def initialize(mode: str | None = None, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               local_device_ids=None) -> ClusterSpec:
  """Joins the cluster described by the arguments / environment (see the module doc).

  Call before anything else touches JAX devices. A single process needs nothing: with no
  cluster found this only applies SKYREELS_NUM_CPU_DEVICES (when set).
  """
  quiet_absent_tpu()
  cpu_devices = _int_env(os.environ, ENV_NUM_CPU_DEVICES)
  if cpu_devices:
    jax.config.update("jax_num_cpu_devices", cpu_devices)
  spec = resolve(mode, coordinator_address, num_processes, process_id, local_device_ids)
  if (spec.mode == "none" or (spec.mode != "tpu" and spec.num_processes == 1)
      or jax.distributed.is_initialized()):
    return spec
  heartbeat = _int_env(os.environ, ENV_HEARTBEAT_TIMEOUT) or DEFAULT_HEARTBEAT_TIMEOUT_S
  if spec.mode == "tpu":
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat)
  else:
    jax.distributed.initialize(
        coordinator_address=spec.coordinator_address, num_processes=spec.num_processes,
        process_id=spec.process_id,
        local_device_ids=list(spec.local_device_ids) if spec.local_device_ids else None,
        # Everything is resolved here; jax's own detection would pin one GPU per process.
        cluster_detection_method="deactivate", heartbeat_timeout_seconds=heartbeat)
  return spec


def data_shard(sharding, global_batch_size: int) -> tuple[int, int]:
  """(index, count): this process feeds rows [index * b, (index + 1) * b) of every global batch,
  b = global_batch_size // count, given the batch `sharding` (rows are dim 0).

  Usually (jax.process_index(), jax.process_count()); processes that hold the same rows (a
  batch replicated over a `tensor` axis that spans processes) share a block and read the same
  examples, as `jax.make_array_from_process_local_data` expects.
  """
  rows = sorted({(s[0].start or 0, global_batch_size if s[0].stop is None else s[0].stop)
                 for s in sharding.addressable_devices_indices_map((global_batch_size,))
                 .values()})
  start, stop = rows[0][0], rows[-1][1]
  covered = sum(b - a for a, b in rows)
  if covered != stop - start or any(b > c for (_, b), (c, _) in zip(rows, rows[1:])):
    raise ValueError(f"this process's batch rows {rows} are not one contiguous block: order "
                     "the mesh's devices by process along the batch axes")
  size = stop - start
  if global_batch_size % size or start % size:
    raise ValueError(f"batch rows [{start}, {stop}) do not tile a batch of {global_batch_size}")
  return start // size, global_batch_size // size
