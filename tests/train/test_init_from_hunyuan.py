"""`tools.convert --kind=hunyuan_video` and `train.init_from` a converted folder: a tiny
HunyuanVideo T2V release (token refiner, guidance embedding, CLIP-width pooled text) becomes
our video branch; at step 0 our video output (audio branch and V4 layers on, zero-initialised)
equals diffusers'; another text width is named, then ignored and reported as new."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers.models.transformers import transformer_hunyuan_video as hv
from flax import nnx

from conftest import small_run_config
from skyreels_jax.config import ConfigError
from skyreels_jax.parallel.mesh import rules
from skyreels_jax.tools import convert
from skyreels_jax.train import init as init_lib
from skyreels_jax.train.state import create_state, make_optimizer
from skyreels_jax.weights import match

HEADS, HEAD_DIM, TEXT_DIM, CLIP_DIM = 2, 16, 24, 8
CHANNELS = 12               # identity autoencoder, spatial factor 2: 3 x 2 x 2


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  torch.manual_seed(0)
  model = hv.HunyuanVideoTransformer3DModel(
      in_channels=CHANNELS, out_channels=CHANNELS, num_attention_heads=HEADS,
      attention_head_dim=HEAD_DIM, num_layers=1, num_single_layers=1, num_refiner_layers=2,
      mlp_ratio=4.0, patch_size=2, patch_size_t=1, guidance_embeds=True,
      text_embed_dim=TEXT_DIM, pooled_projection_dim=CLIP_DIM, rope_theta=256.0,
      rope_axes_dim=(4, 6, 6)).eval()
  with torch.no_grad():      # AdaLN and output layers away from zero, so everything counts
    for p in model.parameters():
      p.add_(0.05 * torch.randn(p.shape))
  root = tmp_path_factory.mktemp("hunyuan")
  model.save_pretrained(root / "src")
  meta = convert.convert("hunyuan_video", str(root / "src"), str(root / "dst"))
  return model, str(root / "dst"), meta


def _config(folder, **model):
  c = small_run_config(**{"train.init_from": folder})
  c.video_ae.spatial_factor = 2
  c.model.width, c.model.num_heads, c.model.mlp_ratio = HEADS * HEAD_DIM, HEADS, 4.0
  c.model.num_dual_blocks = c.model.num_single_blocks = 1
  c.model.rope_axes_dim = (4, 6, 6)
  c.model.guidance_embed, c.model.text_refiner_layers = True, 2
  c.text.width = TEXT_DIM
  for k, v in model.items():
    c.model[k] = v
  return c


def _init(config, tmp_path):
  mesh_config = config.mesh
  from skyreels_jax.parallel.mesh import make_mesh
  mesh = make_mesh(mesh_config)
  _, state, _ = create_state(config, make_optimizer(config), mesh, rules(config))
  return init_lib.initialize(config, state, mesh, rules(config), str(tmp_path),
                             say=lambda _: None)


def test_the_converted_release_starts_our_video_branch(release, tmp_path):
  theirs, folder, meta = release
  assert meta["module_config"]["left_out"] == [
      "video_io/time_text_embed/text_embedder/linear_1/kernel"]
  config = _config(folder)
  state, report = _init(config, tmp_path)
  assert any(n.startswith("mmdit/video_io/text_refiner/blocks/1/") for n in report.loaded)
  assert "mmdit/video_io/time_text_embed/guidance_embedder/linear_1/kernel" in report.loaded
  assert all(not n.startswith("mmdit/") or "/audio" in n or "text_cross" in n
             or "av_cross" in n or n.endswith("text_embedder/linear_1/kernel")
             for n in report.new), report.new
  assert json.load(open(tmp_path / "init_report.json"))["new"] == report.new

  # Step 0: our video output with the audio branch running equals the release's. The pooled
  # text projection is the one new video-branch weight (CLIP-width there): at zero here, as
  # the release's pooled CLIP input, so only its loaded bias acts on both sides.
  from skyreels_jax.config import abstract_model
  graphdef, _ = nnx.split(abstract_model(config), nnx.Param)
  pooled = "mmdit/video_io/time_text_embed/text_embedder/linear_1/kernel"
  params = match.replace(state["params"], {
      pooled: jnp.zeros_like(match.flat(state["params"])[pooled])})
  model = nnx.merge(graphdef, params)
  rng = np.random.default_rng(3)
  b, lengths = 2, (7, 4)
  noisy = rng.standard_normal((b, 2, 4, 6, CHANNELS)).astype(np.float32)
  cond = rng.standard_normal(noisy.shape).astype(np.float32)
  mask = np.ones(noisy.shape[:-1] + (1,), np.float32)
  text = rng.standard_normal((b, 7, TEXT_DIM)).astype(np.float32)
  text_mask = np.arange(7)[None] < np.array(lengths)[:, None]
  t, g = np.array([20.0, 700.0], np.float32), np.array([6000.0, 2000.0], np.float32)
  audio = rng.standard_normal((b, 10, 2 * 160 + 1)).astype(np.float32)
  ours, _ = model.mmdit(video=jnp.asarray(np.concatenate([noisy, cond, mask], -1)),
                        video_timestep=t, text=text, text_mask=text_mask, guidance=g,
                        audio=audio, audio_timestep=t)
  with torch.no_grad():
    ref = theirs(torch.from_numpy(noisy.transpose(0, 4, 1, 2, 3).copy()), torch.from_numpy(t),
                 torch.from_numpy(text), torch.from_numpy(text_mask.astype(np.int64)),
                 torch.zeros(b, CLIP_DIM), guidance=torch.from_numpy(g)).sample
  err = np.abs(np.asarray(ours).transpose(0, 4, 1, 2, 3) - ref.numpy()).max()
  assert err < 2e-5, err


def test_another_text_width_is_named_then_new(release, tmp_path):
  _, folder, _ = release
  config = _config(folder)
  config.text.width = 40          # Qwen's 3584 against HunyuanVideo's 4096, in small
  with pytest.raises(ConfigError, match=r"context_embedder/kernel.*train.init_ignore"):
    _init(config, tmp_path)
  config.train.init_ignore = (r"context_embedder/kernel$", r"text_embedder/linear_1/kernel$")
  _, report = _init(config, tmp_path)
  assert "mmdit/video_io/context_embedder/kernel" in report.new
  assert "mmdit/video_io/context_embedder/kernel" in report.ignored
  assert "mmdit/video_io/text_refiner/blocks/0/to_q/kernel" in report.loaded
