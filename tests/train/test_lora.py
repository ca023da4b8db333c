"""LoRA (train.lora): only the adapters train and are saved; the base stays bit-identical and
is re-read from init_report.json on resume and at sampling; merged and unmerged sampling
agree; the CLI samples a LoRA run; a base that is gone is a one-line error."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from conftest import small_run_config
from skyreels_jax.config import abstract_model
from skyreels_jax.sample import export
from skyreels_jax.sample.sampler import Sampler
from skyreels_jax.train.checkpoint import Checkpointer
from skyreels_jax.train.state import abstract_state, make_optimizer
from skyreels_jax.train.trainer import train
from skyreels_jax.weights import lora, match

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RANK = 4
SAMPLE_PROMPTS = ("a red circle", "a blue square")


def _lora_config(data, base, **overrides):
  c = small_run_config(data, **{"train.init_from": base, "train.steps": 2,
                                "train.checkpoint_every": 2, **overrides})
  c.train.lora.rank, c.train.lora.alpha = RANK, 8.0
  # The 4-step base's zero-initialised output head hides what the blocks' adapters change
  # (1e-6 in the samples): the video head is adapted too.
  c.train.lora.targets = (*c.train.lora.targets, r"^mmdit/video_io/proj_out/kernel$")
  c.optim.lr = 1e-2          # visible adapter updates in two steps
  return c


def _digest(folder):
  h = hashlib.sha256()
  for root, _, files in sorted(os.walk(folder)):
    for f in sorted(files):
      with open(os.path.join(root, f), "rb") as fh:
        h.update(f.encode() + fh.read())
  return h.hexdigest()


@pytest.fixture(scope="module")
def lora_run(trained_run, synthetic_data, tmp_path_factory):
  base, _, _ = trained_run
  before = _digest(os.path.join(base, "checkpoints"))
  workdir = str(tmp_path_factory.mktemp("lora"))
  # Samples during training (of the base + the EMA adapters; EMA = the adapters, so two
  # steps of them show in the samples).
  config = _lora_config(synthetic_data, base, **{
      "train.sample_every": 2, "train.sample_prompts": SAMPLE_PROMPTS,
      "train.sample_num_steps": 2, "optim.ema_decay": 0.0, "optim.warmup_steps": 0})
  result = train(config, workdir)
  return workdir, config, result, base, before


def test_only_the_adapters_train_and_are_saved(lora_run):
  workdir, config, result, base, before = lora_run
  assert result["step"] == 2 and np.isfinite(result["loss"])
  _, params = nnx.split(abstract_model(config), nnx.Param)
  kernels = lora.targets(params, config.train.lora.targets)
  # Every video-branch attention / MLP projection of both block kinds, nothing else.
  names = ["/".join(map(str, k)) for k in kernels]
  assert any("/dual_layers/video/attn/x_qkv/to_q/" in n for n in names)
  assert any("/single_layers/video/proj_mlp/" in n for n in names)
  assert not any("/audio/" in n or "text_cross" in n or "av_cross" in n for n in names)
  flat = dict((tuple(p), v) for p, v in nnx.to_flat_state(params))
  expected = sum(int(np.prod(flat[k].shape[:-2])) * (flat[k].shape[-2] + flat[k].shape[-1])
                 * RANK for k in kernels)
  _, abstract = abstract_state(config, make_optimizer(config))
  assert lora.count(abstract["params"]) == expected
  # The adapters' logical axes follow the kernel's: A keeps its `in`, B its `out` axis.
  adapters = dict((tuple(p), v) for p, v in nnx.to_flat_state(abstract["params"]))
  for k in kernels:
    axes = tuple(flat[k].out_sharding)
    assert tuple(adapters[k + (lora.A,)].out_sharding) == axes[:-1] + (None,)
    assert tuple(adapters[k + (lora.B,)].out_sharding) == axes[:-2] + (None, axes[-1])
  # The checkpoint holds the adapters (and their EMA and Adam moments), no base weight.
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    state = ckpt.restore(2, abstract)
  finally:
    ckpt.close()
  saved = match.flat(state["params"])
  assert sum(v.size for v in saved.values()) == expected
  assert all(n.endswith(("lora_a", "lora_b")) for n in saved)
  assert any(np.any(np.asarray(v) != 0) for n, v in saved.items() if n.endswith("lora_b"))
  # The base run is bit-identical, and the report records it.
  assert _digest(os.path.join(base, "checkpoints")) == before
  report = json.load(open(os.path.join(workdir, "init_report.json")))
  assert report["source"] == os.path.abspath(base) and report["step"] == 4
  assert report["lora"]["rank"] == RANK and len(report["lora"]["adapted"]) == len(kernels)
  assert report["new"] == [] and report["loaded"]


def test_merged_and_unmerged_sampling_agree(lora_run):
  workdir, _, _, _, _ = lora_run
  prompts = ["a red circle bounces", "a blue square"]
  merged = Sampler(workdir).generate(prompts)
  apart = Sampler(workdir, lora_merged=False)
  assert isinstance(apart.params, tuple)
  unmerged = apart.generate(prompts)
  np.testing.assert_allclose(merged["video_latent"], unmerged["video_latent"], atol=1e-4)
  np.testing.assert_allclose(merged["audio_latent"], unmerged["audio_latent"], atol=1e-4)


def test_samples_during_training_are_the_base_with_the_ema_adapters(lora_run, tmp_path):
  """WORKDIR/samples/2 holds what the sampler makes of the run's step 2 (its base plus the
  EMA adapters): the contact sheet's pixels within a level (the PNG is exact, the MP4 is
  not); the base alone gives visibly other frames."""
  from PIL import Image
  workdir, _, _, base, _ = lora_run
  folder = os.path.join(workdir, "samples", "2")
  assert {f"sample_{i}.mp4" for i in range(2)} <= set(os.listdir(folder))
  got = np.asarray(Image.open(os.path.join(folder, "contact_sheet.png")), np.int16)

  def sheet(sampler, name):
    out = sampler.generate(list(SAMPLE_PROMPTS), seeds=[0, 1],
                           settings=sampler.settings(num_steps=2))
    path = str(tmp_path / name)
    export.write_contact_sheet(path, list(out["video"]), labels=list(SAMPLE_PROMPTS))
    return np.asarray(Image.open(path), np.int16)
  want = sheet(Sampler(workdir, lora_merged=False), "lora.png")
  assert np.abs(got - want).max() <= 1
  without = sheet(Sampler(base), "base.png")
  assert np.abs(got - without).mean() > 10 * max(np.abs(got - want).mean(), 0.01)


def test_resume_rereads_the_base_and_a_lost_base_is_one_line(lora_run, synthetic_data,
                                                             tmp_path):
  workdir, _, _, base, _ = lora_run
  run = str(tmp_path / "run")
  shutil.copytree(workdir, run)
  result = train(_lora_config(synthetic_data, base, **{"train.steps": 4}), run)
  assert result["step"] == 4 and np.isfinite(result["loss"])
  # The sampler CLI on a LoRA run whose recorded base is gone: exit 2, one line.
  report_path = os.path.join(run, "init_report.json")
  report = json.load(open(report_path))
  report["source"] = str(tmp_path / "moved")
  json.dump(report, open(report_path, "w"))
  proc = subprocess.run(
      [sys.executable, "-m", "skyreels_jax.sample", f"--workdir={run}", "--prompt=x",
       f"--out={tmp_path / 'out'}", "--num_steps=1"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "is gone" in proc.stderr and "Traceback" not in proc.stderr


def test_the_sample_cli_samples_a_lora_run(lora_run, tmp_path):
  workdir, _, _, _, _ = lora_run
  proc = subprocess.run(
      [sys.executable, "-m", "skyreels_jax.sample", f"--workdir={workdir}",
       "--prompt=a red circle", f"--out={tmp_path}", "--num_steps=2", "--lora=unmerged"],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert any(f.endswith(".mp4") for f in os.listdir(tmp_path))


def test_a_lora_run_without_a_base_names_the_field(synthetic_data, tmp_path):
  config = small_run_config(synthetic_data)
  config.train.lora.rank = 2
  from skyreels_jax.config import ConfigError, validate
  with pytest.raises(ConfigError, match="train.lora.rank.*train.init_from"):
    validate(config)
  config.train.init_from = "x"
  config.train.lora.targets = ("nothing-matches",)
  with pytest.raises(ConfigError, match="train.lora.targets.*match no kernel"):
    abstract_state(config, make_optimizer(config))


def test_lora_export_writes_peft_names_that_reproduce_the_update(lora_run, tmp_path):
  """tools.convert --kind=lora_export: diffusers/PEFT names; lora_B @ lora_A is the torch
  Linear's update, i.e. our (alpha / rank) A B transposed."""
  from safetensors.numpy import load_file
  from skyreels_jax.weights import runs
  workdir, config, _, _, _ = lora_run
  proc = subprocess.run(
      [sys.executable, "-m", "skyreels_jax.tools.convert", "--kind=lora_export",
       f"--src={workdir}", f"--dst={tmp_path}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  tensors = load_file(str(tmp_path / "pytorch_lora_weights.safetensors"))
  peft = json.load(open(tmp_path / "adapter_config.json"))
  assert peft["r"] == RANK and "attn.to_q" in peft["target_modules"]
  _, abstract = abstract_state(config, make_optimizer(config))
  ema = match.flat(runs.read(workdir, "ema", _replicated(abstract["ema"]))[1])
  a = np.asarray(ema["mmdit/dual_layers/video/attn/x_qkv/to_q/kernel/lora_a"])[0]
  b = np.asarray(ema["mmdit/dual_layers/video/attn/x_qkv/to_q/kernel/lora_b"])[0]
  name = "transformer.transformer_blocks.0.attn.to_q"
  got = tensors[f"{name}.lora_B.weight"] @ tensors[f"{name}.lora_A.weight"]
  np.testing.assert_allclose(got, (8.0 / RANK * a @ b).T, rtol=1e-5, atol=1e-7)
  assert "transformer.single_transformer_blocks.0.proj_mlp.lora_A.weight" in tensors
  assert len(tensors) == 2 * len(json.load(open(os.path.join(
      workdir, "init_report.json")))["lora"]["adapted"])   # one layer per stacked kernel here


def _replicated(abstract):
  import jax
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(lambda x: x.replace(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one)),
                      abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
