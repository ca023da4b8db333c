"""hv13b: the video branch is the HunyuanVideo layout (width 3072, 24 heads, 20 dual + 40
single blocks; 12.5B weight-compatible + 4.5B of V4 cross-attention), the audio branch has
the same width and depth: the pod-scale target. Media and encoders: `base.large_scale_media`.
"""

from configs import base


def get_config():
  c = base.large_scale_media(base.get_config())
  c.name = "hv13b"
  c.model.width = 3072
  c.model.num_heads = 24
  c.model.num_dual_blocks = 20
  c.model.num_single_blocks = 40
  c.model.remat = "full"
  # 544x960, 5 s: 81 frames -> 21 x 34 x 60 = 42,840 video tokens; 108 audio tokens.
  c.data.height, c.data.width = 544, 960
  c.data.num_frames = 81
  c.data.batch_size = 256
  c.flow.shift = c.sample.shift = 5.0
  return c
