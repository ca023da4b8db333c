"""Test setup: 8 simulated CPU devices (every sharding path runs without an accelerator)."""

import os
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Test programs are tiny: XLA's slow backend optimisations cost 3-5x compile time for nothing.
os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA cache per test session: identical programs (a resumed run, a CLI run in a
# subprocess) compile once.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="skyreels_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402


def small_run_config(data_path: str = "", **overrides):
  """The tiny config at test size: 8 frames of 16x16 at 8 fps, 1 s of 16 kHz mono audio,
  one example per simulated device."""
  from configs import tiny
  c = tiny.get_config()
  c.data.path = data_path
  c.data.num_frames, c.data.height, c.data.width = 8, 16, 16
  c.data.batch_size = 8
  c.data.tasks.i2v = 0.5
  # References from the other clip of each source (synthetic_data: 2 clips per source).
  c.data.refs = dict(none=0.4, image=0.3, video=0.3)
  c.data.ref_images, c.data.ref_video_frames = 2, 2
  c.data.audio_ref_rate, c.data.audio_ref_seconds = 0.5, 0.25
  c.model.num_dual_blocks, c.model.num_single_blocks = 1, 1
  c.train.steps, c.train.log_every, c.train.checkpoint_every = 4, 1, 2
  c.optim.warmup_steps = 2
  c.optim.decay_steps = 4           # the same schedule (and program) for 2- and 4-step runs
  c.sample.num_steps = 3
  for key, value in overrides.items():
    section, field = key.split(".")
    c[section][field] = value
  return c


def small_refiner_config(data_path=""):
  """tiny_refiner at test size: 32x32 targets, 8 frames at 16 fps (low-res 16x16, 4 frames)."""
  from configs import tiny_refiner
  c = tiny_refiner.get_config()
  c.data.path = data_path
  c.data.height = c.data.width = 32
  c.data.num_frames = 8
  c.data.batch_size = 8
  c.refiner.num_keyframes = 2
  c.model.num_dual_blocks, c.model.num_single_blocks = 1, 1
  c.train.steps, c.train.log_every, c.train.checkpoint_every = 2, 1, 1000
  c.optim.warmup_steps = 1
  return c


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
  from data_pipelines.synthetic import geometry_from_config, write_dataset
  out = str(tmp_path_factory.mktemp("synthetic"))
  write_dataset(out, num_clips=24, seed=0, clips_per_source=2,
                **geometry_from_config(small_run_config().data))
  return out


@pytest.fixture(scope="session")
def trained_run(synthetic_data, tmp_path_factory):
  """One uninterrupted 4-step run, shared by the trainer and sampler tests."""
  from skyreels_jax.train.trainer import train
  workdir = str(tmp_path_factory.mktemp("run"))
  config = small_run_config(synthetic_data)
  result = train(config, workdir)
  return workdir, config, result


@pytest.fixture(scope="session")
def long_run(synthetic_data, tmp_path_factory):
  """An uninterrupted 12-step run: the reference of the runs that are preempted and killed."""
  from skyreels_jax.train.trainer import train
  workdir = str(tmp_path_factory.mktemp("long_run"))
  config = small_run_config(synthetic_data, **{"train.steps": 12})
  train(config, workdir)
  return workdir, config


def restore_train_state(workdir: str, config, step: int):
  """The full train state of a checkpoint, on the config's mesh."""
  from skyreels_jax.parallel.mesh import make_mesh, rules, state_shardings
  from skyreels_jax.train.checkpoint import Checkpointer, with_shardings
  from skyreels_jax.train.state import abstract_state, make_optimizer
  _, abstract = abstract_state(config, make_optimizer(config))
  target = with_shardings(abstract, state_shardings(abstract, make_mesh(config.mesh),
                                                    rules(config)))
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    return ckpt.restore(step, target)
  finally:
    ckpt.close()
