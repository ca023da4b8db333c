"""small: ~1.3B parameters per branch (width 1536, 12 heads of 128); one 80 GB GPU trains it.

6 dual + 12 single blocks per branch (video branch 1.31B with the V4 cross-attentions,
audio branch 1.14B). Media and encoders: `base.large_scale_media`.
"""

from configs import base


def get_config():
  c = base.large_scale_media(base.get_config())
  c.name = "small"
  c.model.width = 1536
  c.model.num_heads = 12
  c.model.num_dual_blocks = 6
  c.model.num_single_blocks = 12
  c.model.remat = "save_dots"
  # Stage-2 geometry: 256x256, 2 s (33 frames -> 9 latent frames, 2,304 video tokens).
  c.data.height = c.data.width = 256
  c.data.num_frames = 33
  c.data.batch_size = 8
  c.flow.shift = c.sample.shift = 3.0
  return c
