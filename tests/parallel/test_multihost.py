"""Cluster detection (explicit, SLURM, TPU, none) and each process's block of the batch."""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from conftest import users_env
from skyreels_jax.parallel import multihost

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SLURM = {"SLURM_JOB_ID": "1234", "SLURM_JOB_NODELIST": "gpu[007-008]", "SLURM_NTASKS": "16",
         "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NTASKS_PER_NODE": "8",
         "SLURM_STEP_NODELIST": "gpu[007-008]"}


def test_single_process_needs_nothing():
  assert multihost.resolve(env={}) == multihost.ClusterSpec("none")
  assert multihost.resolve(env={"SLURM_JOB_ID": "1", "SLURM_PROCID": "0",
                                "SLURM_NTASKS": "1"}).mode == "none"
  # The test session is one process: initialize is a no-op (jax.distributed untouched).
  spec = multihost.initialize(mode="none")
  assert spec.mode == "none" and not jax.distributed.is_initialized()
  assert jax.process_count() == 1


def test_a_machine_without_tpu_starts_quietly():
  """libtpu is installed with the test requirements; on this TPU-less machine JAX's probe of
  the TPU backend printed five lines of libtpu errors on every command's console."""
  env = {"SKYREELS_DISTRIBUTED": "none"}
  multihost.quiet_absent_tpu(env)
  assert env["TPU_WORKER_HOSTNAMES"] == "localhost"
  for kept in ({"JAX_PLATFORMS": "cpu"}, {"TPU_WORKER_HOSTNAMES": "t0,t1"}):
    env = dict(kept)
    multihost.quiet_absent_tpu(env)   # a setting, or a pod: left as it is
    assert env == kept
  code = ("from skyreels_jax.parallel import multihost; multihost.initialize(); "
          "import jax; print(jax.devices()[0].platform)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=users_env(PYTHONPATH=REPO), check=True, timeout=120)
  assert out.stdout.strip() == "cpu"
  assert "TPU" not in out.stderr and "E0000" not in out.stderr, out.stderr


def test_explicit_from_flags_and_env():
  env = {"SKYREELS_COORDINATOR": "10.0.0.1:1234", "SKYREELS_NUM_PROCESSES": "4",
         "SKYREELS_PROCESS_ID": "2", **SLURM}
  assert multihost.resolve(env=env) == multihost.ClusterSpec("explicit", "10.0.0.1:1234", 4, 2)
  spec = multihost.resolve(coordinator_address="h:1", num_processes=2, process_id=1, env={})
  assert spec == multihost.ClusterSpec("explicit", "h:1", 2, 1)
  # Flags override the environment.
  assert multihost.resolve(process_id=3, env=env).process_id == 3
  ids = multihost.resolve(env=dict(env, SKYREELS_LOCAL_DEVICE_IDS="0,1")).local_device_ids
  assert ids == (0, 1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="explicit"), "needs coordinator_address, num_processes, process_id"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), r"not in \[0, num_proc"),
    (dict(coordinator_address="h", num_processes=2, process_id=0), "host:port"),
    (dict(mode="slurm"), "outside an srun step"),
    (dict(mode="bogus"), "expected one of"),
])
def test_errors_name_what_is_missing(kwargs, message):
  with pytest.raises(ValueError, match=message):
    multihost.resolve(env={}, **kwargs)


def test_slurm_one_process_per_gpu():
  spec = multihost.resolve(env=SLURM)
  assert spec == multihost.ClusterSpec("slurm", "gpu007:62674", 16, 9, (1,))
  # The sbatch script names the coordinator; slurm's own GPU binding (one visible GPU) is kept.
  env = dict(SLURM, SKYREELS_COORDINATOR="gpu007:5000", CUDA_VISIBLE_DEVICES="1")
  assert multihost.resolve(env=env) == multihost.ClusterSpec("slurm", "gpu007:5000", 16, 9)


def test_slurm_one_process_per_node_sees_all_gpus():
  env = dict(SLURM, SLURM_NTASKS="2", SLURM_PROCID="1", SLURM_LOCALID="0",
             SLURM_NTASKS_PER_NODE="1", SLURM_STEP_NODELIST="a1,b2")
  assert multihost.resolve(env=env) == multihost.ClusterSpec("slurm", "a1:62674", 2, 1)


@pytest.mark.parametrize("nodes, first", [("node001", "node001"), ("node001,host2", "node001"),
                                          ("node[003-015],host2", "node003"),
                                          ("node[001,007-015]", "node001")])
def test_first_slurm_host(nodes, first):
  assert multihost._first_slurm_host(nodes) == first


def test_tpu_pods_use_jax_auto_detection():
  assert multihost.resolve(env={"TPU_WORKER_HOSTNAMES": "t0,t1,t2,t3"}).mode == "tpu"
  assert multihost.resolve(env={"TPU_WORKER_HOSTNAMES": "t0"}).mode == "none"
  assert multihost.resolve(env={"SKYREELS_DISTRIBUTED": "tpu"}).mode == "tpu"


def _mesh(shape, names):
  return jax.sharding.Mesh(np.asarray(jax.devices()).reshape(shape), names)


def test_data_shard_in_one_process():
  sharding = NamedSharding(_mesh((4, 2), ("data", "fsdp")), P(("data", "fsdp")))
  assert multihost.data_shard(sharding, 16) == (0, 1)
  replicated = NamedSharding(_mesh((8,), ("tensor",)), P())
  assert multihost.data_shard(replicated, 8) == (0, 1)


@dataclasses.dataclass
class _FakeSharding:
  """The part of a sharding data_shard reads: this process's rows of the batch."""
  rows: list

  def addressable_devices_indices_map(self, shape):
    return {i: (slice(a, b),) for i, (a, b) in enumerate(self.rows)}


@pytest.mark.parametrize("rows, expected", [
    ([(8, 10), (10, 12), (12, 14), (14, 16)], (1, 2)),   # process 1 of 2
    ([(4, 8), (4, 8)], (1, 4)),                          # rows replicated inside the process
    ([(0, 16)], (0, 1)),                                 # batch replicated over processes
])
def test_data_shard_of_other_processes(rows, expected):
  assert multihost.data_shard(_FakeSharding(rows), 16) == expected


def test_data_shard_rejects_scattered_rows():
  with pytest.raises(ValueError, match="not one contiguous block"):
    multihost.data_shard(_FakeSharding([(0, 2), (8, 10)]), 16)
