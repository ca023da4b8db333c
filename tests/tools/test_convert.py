"""tools/convert.py: a save_pretrained folder -> orbax checkpoint -> the same module, and a
clear non-zero exit naming the tensors when the folder does not map completely."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan
from flax import nnx
from safetensors.numpy import load_file, save_file

from skyreels_jax.models import frozen
from skyreels_jax.tools import convert

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WAN_TINY = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                temperal_downsample=[False, True, True],
                latents_mean=[0.3, -0.2, 0.5, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0])


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
  torch.manual_seed(0)
  model = AutoencoderKLWan(**WAN_TINY).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn(p.shape))
  folder = tmp_path_factory.mktemp("wan_src")
  model.save_pretrained(folder)
  return folder


def _flat(module):
  return {tuple(map(str, p)): np.asarray(v.get_value())
          for p, v in nnx.to_flat_state(nnx.state(module))}


def test_wan_vae_round_trip(wan_folder, tmp_path):
  from skyreels_jax.models.mappings import wan_vae as wan_vae_mapping
  meta = convert.convert("wan_vae", str(wan_folder), str(tmp_path / "dst"))
  assert meta["kind"] == "wan_vae" and meta["module_config"]["z_dim"] == 4
  restored = frozen.restore(str(tmp_path / "dst"), "wan_vae")
  direct = wan_vae_mapping.load_diffusers_folder(str(wan_folder))
  a, b = _flat(restored), _flat(direct)
  assert a.keys() == b.keys() and len(a) > 20
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
  with pytest.raises(convert.ConversionError, match="oobleck_vae conversion|not wan_vae"):
    json_path = tmp_path / "dst" / "converted.json"
    meta = json.loads(json_path.read_text())
    json_path.write_text(json.dumps(dict(meta, kind="oobleck_vae")))
    frozen.restore(str(tmp_path / "dst"), "wan_vae")
  with pytest.raises(FileNotFoundError, match="not a converted checkpoint"):
    frozen.restore(str(tmp_path / "nowhere"), "wan_vae")


def test_cli_exits_nonzero_naming_the_unmapped_tensors(wan_folder, tmp_path):
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text((wan_folder / "config.json").read_text())
  tensors = load_file(str(wan_folder / "diffusion_pytorch_model.safetensors"))
  tensors["encoder.extra.weight"] = np.zeros(3, np.float32)
  save_file(tensors, str(broken / "diffusion_pytorch_model.safetensors"))
  run = lambda src: subprocess.run(
      [sys.executable, "-m", "skyreels_jax.tools.convert", "--kind=wan_vae", f"--src={src}",
       f"--dst={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  proc = run(broken)
  assert proc.returncode == 1 and "encoder.extra.weight" in proc.stderr, proc.stderr[-2000:]
  proc = run(wan_folder)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "converted wan_vae" in proc.stdout


def test_oobleck_vae_round_trip(tmp_path):
  """Weight norm is folded at conversion: the restored params equal the folder loader's."""
  from diffusers import AutoencoderOobleck
  from skyreels_jax.models.mappings import oobleck as oobleck_mapping
  torch.manual_seed(1)
  model = AutoencoderOobleck(encoder_hidden_size=8, downsampling_ratios=[2, 4],
                             channel_multiples=[1, 2], decoder_channels=8,
                             decoder_input_channels=4, audio_channels=2).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn(p.shape))
  model.save_pretrained(tmp_path / "src")
  convert.convert("oobleck_vae", str(tmp_path / "src"), str(tmp_path / "dst"))
  a = _flat(frozen.restore(str(tmp_path / "dst"), "oobleck_vae"))
  b = _flat(oobleck_mapping.load_diffusers_folder(str(tmp_path / "src")))
  assert a.keys() == b.keys() and len(a) > 10
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))
