"""Config validation (skyreels_jax/config.py) and the size configs (configs/*.py)."""

import importlib
import math
import os

import jax
import pytest
from flax import nnx

from configs import tiny
from skyreels_jax.config import (ConfigError, count_params, derive, hybrid_mesh_shape,
                                 mesh_shape, validate)
from skyreels_jax.config import abstract_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def set_path(config, path, value):
  *parents, leaf = path.split(".")
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


# (overrides, field named by the error)
BAD = {
    "heads_do_not_divide_width": ({"model.num_heads": 5}, "model.num_heads"),
    "odd_head_dim": ({"model.width": 20, "model.num_heads": 4,
                      "model.rope_axes_dim": (2, 2, 1)}, "model.num_heads"),
    "rope_axes_do_not_sum_to_head_dim": ({"model.rope_axes_dim": (8, 8, 6)},
                                         "model.rope_axes_dim"),
    "odd_rope_axis": ({"model.rope_axes_dim": (7, 9, 8)}, "model.rope_axes_dim"),
    # 16 latent frames (identity VAE, temporal factor 1) do not split into patches of 3.
    "frames_vs_temporal_patch": ({"model.patch_size_t": 3}, "data.num_frames"),
    "frames_vs_vae_temporal_factor": ({"video_ae.temporal_factor": 3}, "data.num_frames"),
    "height_vs_vae": ({"data.height": 30}, "data.height"),
    "height_vs_patch": ({"data.height": 36}, "data.height"),   # 9 latent rows, patch 2
    "fractional_samples": ({"data.fps": 7.0}, "data.sample_rate"),
    "unknown_attention": ({"attention": "flash"}, "attention"),
    "unknown_remat": ({"model.remat": "sometimes"}, "model.remat"),
    "unknown_dtype": ({"model.dtype": "float8"}, "model.dtype"),
    "unknown_task": ({"data.tasks.t2x": 1.0}, "data.tasks"),
    "zero_task_weights": ({"data.tasks.t2av": 0.0}, "data.tasks"),
    "two_filled_mesh_axes": ({"mesh.fsdp": -1}, "mesh"),
    "bad_mesh_axis": ({"mesh.tensor": 0}, "mesh.tensor"),
    "caption_dropout_one": ({"data.caption_dropout": 1.0}, "data.caption_dropout"),
    "caption_dropout_negative": ({"data.caption_dropout": -0.1}, "data.caption_dropout"),
    "no_dual_blocks": ({"model.num_dual_blocks": 0}, "model.num_dual_blocks"),
    "negative_ref_weight": ({"data.refs.image": -1.0}, "data.refs"),
    "unknown_ref_kind": ({"data.refs.audio": 1.0}, "data.refs"),
    "ref_clip_the_vae_refuses": ({"data.refs.video": 0.5, "data.ref_video_frames": 3,
                                  "video_ae.temporal_factor": 2}, "data.ref_video_frames"),
    "ref_audio_rate": ({"data.audio_ref_rate": 1.5}, "data.audio_ref_rate"),
    "refs_from_latents": ({"data.refs.image": 0.5, "data.format": "latents"}, "data.refs"),
    "unknown_solver": ({"sample.solver": "rk4"}, "sample.solver"),
    "unknown_timestep_sampling": ({"flow.timestep_sampling": "cosine"},
                                  "flow.timestep_sampling"),
    "unknown_prediction": ({"flow.audio_prediction": "eps"}, "flow.audio_prediction"),
    "unknown_video_ae": ({"video_ae.kind": "vqgan"}, "video_ae.kind"),
    "unknown_audio_task": ({"data.audio_tasks.a_remix": 1.0}, "data.audio_tasks"),
    "zero_audio_task_weights": ({"data.audio_tasks.none": 0.0}, "data.audio_tasks"),
    # Data-given tasks (issue 15): the fallback must draw its own mask.
    "given_fallback_given": ({"data.given_fallback": "edit_pair"}, "data.given_fallback"),
    "audio_given_fallback": ({"data.audio_given_fallback": "a_remix"},
                             "data.audio_given_fallback"),
    "edit_prompt": ({"data.edit_prompt": "prefix"}, "data.edit_prompt"),
    # Watching a run (issue 16).
    "eval_without_held_out_set": ({"train.eval_every": 10}, "train.eval_every"),
    "eval_fraction_one": ({"data.eval_fraction": 1.0}, "data.eval_fraction"),
    "eval_path_and_fraction": ({"data.eval_path": "/x", "data.eval_fraction": 0.1},
                               "data.eval_fraction"),
    "eval_timestep_one": ({"train.eval_timesteps": (0.5, 1.0)}, "train.eval_timesteps"),
    "sample_without_prompts": ({"train.sample_every": 5, "train.sample_prompts": ()},
                               "train.sample_prompts"),
    "profile_reversed": ({"train.profile_steps": (5, 2)}, "train.profile_steps"),
    "wandb_mode": ({"train.wandb_mode": "disabled"}, "train.wandb_mode"),
    # HunyuanVideo's layout (issue 14): the refiner depth and the embedded guidance range.
    "text_refiner_layers_negative": ({"model.text_refiner_layers": -1},
                                     "model.text_refiner_layers"),
    "embedded_guidance_reversed": ({"flow.embedded_guidance": (4.0, 1.0)},
                                   "flow.embedded_guidance"),
    # The resilience fields (train/trainer.py).
    "max_skipped_steps_zero": ({"train.max_skipped_steps": 0}, "train.max_skipped_steps"),
    "checkpoint_every_secs_negative": ({"train.checkpoint_every_secs": -1.0},
                                       "train.checkpoint_every_secs"),
    "loss_spike_factor_below_one": ({"train.loss_spike_factor": 0.5},
                                    "train.loss_spike_factor"),
    "restore_step_below_minus_one": ({"train.restore_step": -2}, "train.restore_step"),
    "fault_step_zero": ({"train.fault_nonfinite_steps": (0,)}, "train.fault_nonfinite_steps"),
    # Pod-scale speed (issue 18).
    "unknown_sp_kernel": ({"model.sp_kernel": "flash3"}, "model.sp_kernel"),
    "read_threads_zero": ({"data.read_threads": 0}, "data.read_threads"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_configs_name_the_field(case):
  overrides, field = BAD[case]
  config = tiny.get_config()
  for path, value in overrides.items():
    set_path(config, path, value)
  with pytest.raises(ConfigError) as info:
    validate(config)
  assert info.value.field == field
  assert str(info.value).startswith(f"config.{field}: ")


def test_tiny_is_valid_and_derives_its_geometry():
  config = tiny.get_config()
  validate(config)
  geom, mcfg = derive(config)
  # 16 frames of 32x32 at 8 fps, space-to-depth by 4: 16 x 8 x 8 latents of 48 channels;
  # 2 s of 8 kHz mono framed by 160 samples: 100 audio latents of 160 channels.
  assert geom.video_grid == (16, 8, 8) and geom.video_channels == 48
  assert geom.num_samples == 16000 and geom.audio_length == 100 and geom.audio_channels == 160
  assert geom.video_tokens == 16 * 4 * 4 and geom.audio_tokens == 100
  assert mcfg.head_dim == 48 and sum(mcfg.rope_axes_dim) == 48
  assert math.isclose(mcfg.audio_time_scale, 0.16, rel_tol=1e-9)


def test_audio_latents_cover_the_clip():
  config = tiny.get_config()
  config.audio_ae.hop = 150        # 16000 samples: 106 whole frames and a padded 107th
  validate(config)
  geom, _ = derive(config)
  assert geom.audio_length == 107 and geom.audio_tokens == 107
  config.model.audio_patch_size = 2
  with pytest.raises(ConfigError) as info:
    validate(config)
  assert info.value.field == "model.audio_patch_size"


def test_video_only_config_has_no_audio_latents():
  config = tiny.get_config()
  config.model.use_audio = False
  config.model.audio_patch_size = 3   # would not divide the 100 audio latents
  validate(config)
  assert derive(config)[0].audio_length == 0


def test_mesh_shape_fills_one_axis():
  config = tiny.get_config()
  assert mesh_shape(config.mesh, 8) == {"data": 8, "fsdp": 1, "sequence": 1, "tensor": 1}
  config.mesh.tensor = 2
  assert mesh_shape(config.mesh, 8) == {"data": 4, "fsdp": 1, "sequence": 1, "tensor": 2}
  config.mesh.tensor = 3
  with pytest.raises(ConfigError, match=r"config\.mesh\.data"):
    mesh_shape(config.mesh, 8)



def test_hybrid_mesh_multiplies_slice_sizes_by_dcn_sizes():
  config = tiny.get_config()
  config.mesh.update(dict(data=-1, fsdp=2, dcn_data=2))
  # 16 devices in 2 slices: -1 fills one slice of 8 (data 4 x fsdp 2); data spans both slices.
  ici, dcn = hybrid_mesh_shape(config.mesh, 16)
  assert ici == {"data": 4, "fsdp": 2, "sequence": 1, "tensor": 1}
  assert dcn == {"data": 2, "fsdp": 1, "sequence": 1, "tensor": 1}
  assert mesh_shape(config.mesh, 16) == {"data": 8, "fsdp": 2, "sequence": 1, "tensor": 1}
  config.mesh.update(dict(data=1, fsdp=-1, dcn_data=3))
  with pytest.raises(ConfigError, match=r"config\.mesh\.dcn_\*.*16 devices.*3 slices"):
    mesh_shape(config.mesh, 16)
  config.mesh.update(dict(data=3, fsdp=1, dcn_data=2))
  with pytest.raises(ConfigError, match=r"config\.mesh: .*per slice \(2 slices\)"):
    mesh_shape(config.mesh, 16)


@pytest.mark.parametrize("value", [0, -1])
def test_bad_dcn_size_is_named(value):
  config = tiny.get_config()
  config.mesh.dcn_fsdp = value
  with pytest.raises(ConfigError, match=r"config\.mesh\.dcn_fsdp"):
    validate(config)

# --- Size configs, built abstractly (nnx.eval_shape: no memory).

def branch_params(state, branch):
  """Parameters of one branch: its embeddings/head and its half of every joint layer, split
  into the HunyuanVideo-compatible part and the V4 additions (text / A-V cross-attention)."""
  base = added = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    keys = [str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey)]
    in_branch = keys[0] == f"{branch}_io" or (keys[0].endswith("_layers") and keys[1] == branch)
    if not in_branch:
      continue
    n = math.prod(leaf.shape)
    if "text_cross" in keys or "av_cross" in keys:
      added += n
    else:
      base += n
  return base, added


# name -> plausible ranges of: all parameters, the video branch (with the V4 additions), and
# the video branch's HunyuanVideo-compatible part (without them). SPEC section 6.
SIZES = {
    "tiny": dict(total=(1e6, 2e7), video=(3e5, 1e7), video_hunyuan=(2e5, 1e7)),
    "small": dict(total=(2.2e9, 3.2e9), video=(1.1e9, 1.5e9), video_hunyuan=(0.8e9, 1.3e9)),
    "hv13b": dict(total=(2.5e10, 4.0e10), video=(1.5e10, 1.9e10),
                  video_hunyuan=(1.2e10, 1.3e10)),
}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_size_configs_build_abstractly(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  validate(config, abstract=True)   # small / hv13b: the published encoder architectures
  model = abstract_model(config)
  total = count_params(nnx.state(model))
  video_base, video_added = branch_params(nnx.state(model.mmdit), "video")
  audio_base, audio_added = branch_params(nnx.state(model.mmdit), "audio")
  m = lambda n: f"{n / 1e6:,.1f}M"
  print(f"{name}: total {m(total)}; video branch {m(video_base)} + {m(video_added)} (V4 "
        f"cross-attention); audio branch {m(audio_base)} + {m(audio_added)}")
  counts = dict(total=total, video=video_base + video_added, video_hunyuan=video_base)
  for what, (lo, hi) in SIZES[name].items():
    assert lo <= counts[what] <= hi, (what, counts[what])
  # Both branches share width and depth: the audio branch mirrors the video one, without the
  # text cross-attention (so exactly half the video branch's additions) and with its own
  # (smaller) patch embedding and head.
  if config.model.use_audio:
    assert audio_added * 2 == video_added
    assert abs(audio_base - video_base) / video_base < 0.1


@pytest.mark.parametrize("stage", ["1", "2", "3", "4", "5", "6", "audio", "joint", "sft1",
                                   "sft2", "5,hv13b"])
def test_curriculum_stages_validate(stage):
  from configs import stages
  c = stages.get_config(stage)
  validate(c, abstract=True)    # every bucket of the stage patches cleanly
  weights = dict(c.data.bucket_weights)
  kinds = {"video": 0.0, "image": 0.0, "audio": 0.0}
  for name, w in weights.items():
    kinds["audio" if name.startswith("audio") else "image" if name.startswith("image")
          else "video"] += w
  assert sum(kinds.values()) == pytest.approx(1.0)
  if stage == "1":
    assert kinds == {"video": 0.0, "image": 1.0, "audio": 0.0}
  if stage == "audio":
    assert {k: w for k, w in c.data.tasks.items() if w} == {"t2a": 1.0} and kinds["audio"] == 1.0
  # Stages set weights, never drop a task: --config.data.tasks.NAME=W works on every stage.
  from skyreels_jax.tasks.masks import AUDIO_TASKS, VIDEO_TASKS
  assert sorted(c.data.tasks) == sorted(VIDEO_TASKS)
  assert sorted(c.data.audio_tasks) == sorted(AUDIO_TASKS)


def test_every_task_can_be_set_from_the_command_line(tmp_path):
  """configs/base.py lists every task, so a flag can weigh any of them on any config (a
  locked ConfigDict cannot gain keys): the flags of a real command line parse."""
  import subprocess
  import sys
  from skyreels_jax.tasks.masks import VIDEO_TASKS
  for config_file in ("configs/tiny.py", "configs/stages.py:3,tiny"):
    proc = subprocess.run(
        [sys.executable, "-m", "data_pipelines.synthetic", f"--out={tmp_path}",
         "--num_clips=1", f"--config={config_file}"]
        + [f"--config.data.tasks.{name}=0.5" for name in VIDEO_TASKS],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_unknown_stage_is_named():
  from configs import stages
  with pytest.raises(ValueError, match="unknown stage '9'"):
    stages.get_config("9")


@pytest.mark.parametrize("name", ["small", "hv13b"])
def test_large_configs_use_the_frozen_encoders(name, tmp_path):
  """small / hv13b train with Wan 2.1, Oobleck and Qwen2.5-VL from converted folders: without
  them a run stops before compiling, naming the path; with the published architectures the
  geometry is Wan's (1 + 4k frames, 8x8) and Oobleck's (2048-sample hop)."""
  config = importlib.import_module(f"configs.{name}").get_config()
  assert (config.video_ae.kind, config.audio_ae.kind, config.text.kind) == (
      "wan", "oobleck", "qwen2_5_vl")
  config.video_ae.path = str(tmp_path / "absent")
  with pytest.raises(ConfigError, match="video_ae.path: .*absent.* not a converted"):
    validate(config)
  geom, mcfg = derive(config, abstract=True)
  frames = config.data.num_frames
  assert (frames - 1) % 4 == 0 and geom.video_grid[0] == 1 + (frames - 1) // 4
  assert geom.video_grid[1:] == (config.data.height // 8, config.data.width // 8)
  seconds = (frames - 1) / config.data.fps
  assert geom.num_samples == seconds * 44100 and geom.audio_length == -(-geom.num_samples // 2048)
  assert (geom.video_channels, geom.audio_channels, mcfg.text_dim) == (16, 64, 3584)
  # The frozen autoencoders' precision is a field of each (bf16: half the weight and
  # activation memory; tolerances in tests/models/test_{wan,oobleck}_vae.py).
  for section in ("video_ae", "audio_ae"):
    bad = importlib.import_module(f"configs.{name}").get_config()
    bad[section].dtype = "float16"
    with pytest.raises(ConfigError, match=rf"{section}.dtype: 'float16' is not one of"):
      derive(bad, abstract=True)


def test_a_run_saved_before_a_field_existed_loads_with_its_default(tmp_path):
  """config.json is read over configs/base.py: a missing field gets its one default, saved
  values win, JSON lists come back as the tuples base holds."""
  import json
  from configs import base
  from skyreels_jax.config import load_run_config
  config = tiny.get_config()
  config.data.ref_crop_min = 0.5
  saved = json.loads(config.to_json_best_effort())
  del saved["data"]["audio_ref_seconds"], saved["model"]["vsa_top_k"], saved["keyframes"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  loaded = load_run_config(str(tmp_path))
  defaults = base.get_config()
  assert loaded.data.audio_ref_seconds == defaults.data.audio_ref_seconds
  assert loaded.model.vsa_top_k == defaults.model.vsa_top_k
  assert loaded.keyframes.to_dict() == defaults.keyframes.to_dict()
  assert loaded.data.ref_crop_min == 0.5 and loaded.model.width == config.model.width
  assert loaded.model.rope_axes_dim == tuple(config.model.rope_axes_dim)
  assert loaded.logical_axis_rules == tuple(tuple(r) if not isinstance(r[1], (list, tuple))
                                            else (r[0], tuple(r[1]))
                                            for r in config.logical_axis_rules)
  validate(loaded)
  with pytest.raises(FileNotFoundError, match="training run directory"):
    load_run_config(str(tmp_path / "absent"))
