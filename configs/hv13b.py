"""hv13b: the video branch is the HunyuanVideo layout (width 3072, 24 heads, 20 dual + 40
single blocks), the audio branch has the same width and depth: the pod-scale target.

Encoders: stand-ins with the real compression until issue 5 (see configs/small.py).
"""

from configs import base


def get_config():
  c = base.get_config()
  c.name = "hv13b"
  c.model.width = 3072
  c.model.num_heads = 24
  c.model.num_dual_blocks = 20
  c.model.num_single_blocks = 40
  c.model.rope_axes_dim = (16, 56, 56)
  c.model.guidance_embed = False
  c.model.dtype = "bfloat16"
  c.model.remat = "full"
  c.text.kind = "tiny"
  c.text.width = 3584
  c.text.vocab_size = 32768
  c.text.max_length = 256
  c.video_ae.spatial_factor = 8
  c.video_ae.temporal_factor = 4
  c.audio_ae.hop = 1024
  # 544x960, 16 fps, 5 s with 44.1 kHz stereo: 20 x 34 x 60 = 40,800 video tokens.
  c.data.height, c.data.width = 544, 960
  c.data.num_frames = 80
  c.data.fps = 16.0
  c.data.sample_rate = 44100
  c.data.audio_channels = 2
  c.data.batch_size = 256
  c.flow.shift = 5.0
  c.sample.shift = 5.0
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c
