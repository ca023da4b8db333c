"""Test setup: 8 simulated CPU devices (every sharding path runs without an accelerator)."""

import os
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Test programs are tiny: XLA's slow backend optimisations cost 3-5x compile time for nothing.
os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA cache per test session: identical programs (a resumed run, a CLI run in a
# subprocess) compile once. pytest-xdist's workers inherit it from the controller (make test).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="skyreels_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line("markers", "heavy: a module that trains for minutes (make test "
                          "starts these first, so that no worker is left with one at the end)")


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: item.get_closest_marker("heavy") is None)   # a stable sort


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Frees each module's compiled programs when it ends. XLA:CPU maps every executable's
  code into memory and jit caches keep them alive: over the whole suite one process passed
  vm.max_map_count (65,530 mappings) and segfaulted in a compile. The persistent cache
  still serves identical programs to later modules."""
  yield
  import gc
  import jax
  jax.clear_caches()
  gc.collect()


def train_in_child(module_file: str, config_fn: str, *runs: tuple) -> None:
  """Trains `config_fn(*args)` (a function of the test module `module_file`) into each
  workdir of `runs` ((workdir, *args) each, in order: a rerun resumes) in a child process
  on ONE device: 8 simulated devices on 2 cores make each tiny step several times slower,
  and these results do not depend on the mesh."""
  import subprocess
  import sys
  here, name = os.path.split(os.path.abspath(module_file))
  tests = os.path.dirname(os.path.abspath(__file__))
  code = (f"import sys; sys.path[:0] = [{here!r}, {tests!r}, {os.path.dirname(tests)!r}]\n"
          f"from {name[:-3]} import {config_fn}\n"
          "from skyreels_jax.train.trainer import train\n")
  for workdir, *args in runs:
    code += f"train({config_fn}(*{tuple(args)!r}), {workdir!r})\n"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=1200)
  assert proc.returncode == 0, proc.stderr[-3000:]


def train_on_one_device(module_file: str, config_fn: str, data_path: str, workdir: str):
  """train_in_child of `config_fn(data_path)`, then a Sampler of the run on one device."""
  import jax
  from skyreels_jax.parallel.mesh import make_mesh
  from skyreels_jax.sample.sampler import Sampler, load_run_config
  train_in_child(module_file, config_fn, (workdir, data_path))
  run_config = load_run_config(workdir)
  return Sampler(workdir, config=run_config,
                 mesh=make_mesh(run_config.mesh, devices=jax.devices()[:1]))


def users_env(**extra) -> dict:
  """The environment a user's shell has: without this session's JAX_PLATFORMS=cpu, so a
  command run in it probes every backend JAX has (libtpu is installed with the test
  requirements), as it does for a user."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  env.update(extra)
  return env


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
  from skyreels_jax.train.checkpoint import Checkpointer
  from skyreels_jax.weights.trees import with_shardings
  from skyreels_jax.train.state import abstract_state, make_optimizer
  _, abstract = abstract_state(config, make_optimizer(config))
  target = with_shardings(abstract, state_shardings(abstract, make_mesh(config.mesh),
                                                    rules(config)))
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    return ckpt.restore(step, target)
  finally:
    ckpt.close()


def spy_sampler(workdir: str, config, monkeypatch, keys: tuple[str, ...]):
  """(a Sampler on one device, the list each model call appends its `keys` inputs to): a
  spy around the real model, installed only for this sampler's own merge of the whole
  model (the model merges its layers too). One device: a host callback inside a program
  with collectives can stall the CPU runtime's device threads."""
  import jax
  from flax import nnx
  from skyreels_jax.parallel.mesh import make_mesh
  from skyreels_jax.sample import sampler as sampler_lib
  calls = []
  real_merge = nnx.merge

  class Spy:
    def __init__(self, model):
      self._model = model

    def __getattr__(self, name):
      return getattr(self._model, name)

    def __call__(self, **inputs):
      jax.debug.callback(lambda *a: calls.append(a), *(inputs[k] for k in keys))
      return self._model(**inputs)

  sampler = sampler_lib.Sampler(workdir, config=config,
                                mesh=make_mesh(config.mesh, devices=jax.devices()[:1]))
  monkeypatch.setattr(sampler_lib.nnx, "merge", lambda graphdef, *a, **k: (
      Spy(real_merge(graphdef, *a, **k)) if graphdef is sampler.graphdef
      else real_merge(graphdef, *a, **k)))
  return sampler, calls


def convert_tiny_encoders(root, *, sample_rate: int, downsampling=(2, 4)):
  """A tiny random causal Wan VAE (4x temporal, 8x spatial) and Oobleck VAE (hop =
  prod(downsampling)) from diffusers, converted into root/wan and root/oobleck."""
  import torch
  from diffusers import AutoencoderKLWan, AutoencoderOobleck
  from skyreels_jax.tools import convert
  torch.manual_seed(0)
  wan = AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                         temperal_downsample=[False, True, True],
                         latents_mean=[0.0] * 4, latents_std=[1.0] * 4).eval()
  oob = AutoencoderOobleck(encoder_hidden_size=8, downsampling_ratios=list(downsampling),
                           channel_multiples=[1, 2], decoder_channels=8,
                           decoder_input_channels=4, audio_channels=1,
                           sampling_rate=sample_rate).eval()
  for name, model in (("wan", wan), ("oobleck", oob)):
    model.save_pretrained(root / f"{name}_src")
  convert.convert("wan_vae", str(root / "wan_src"), str(root / "wan"))
  convert.convert("oobleck_vae", str(root / "oobleck_src"), str(root / "oobleck"))
  return root
