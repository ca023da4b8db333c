"""small: ~1.3B parameters per branch (width 1536, 12 heads of 128); one 80 GB GPU trains it.

6 dual + 12 single blocks per branch. Until the Wan-2.1 VAE, the Oobleck VAE and the
Qwen2.5-VL encoder land (issue 5), the encoders are the interface-compatible stand-ins with
the same compression (8x8 spatial, 4x temporal; 1024-sample audio hop at 44.1 kHz stereo),
so shapes and token counts are the real ones; only the patch embedding's input width differs.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.name = "small"
  c.model.width = 1536
  c.model.num_heads = 12
  c.model.num_dual_blocks = 6
  c.model.num_single_blocks = 12
  c.model.rope_axes_dim = (16, 56, 56)
  c.model.dtype = "bfloat16"
  c.model.remat = "save_dots"
  c.text.kind = "tiny"
  c.text.width = 3584                   # Qwen2.5-VL-7B hidden size
  c.text.vocab_size = 32768
  c.text.max_length = 256
  c.video_ae.spatial_factor = 8
  c.video_ae.temporal_factor = 4
  c.audio_ae.hop = 1024
  # Stage-2 geometry: 256x256, 16 fps, 2 s with 44.1 kHz stereo audio.
  c.data.height = c.data.width = 256
  c.data.num_frames = 32
  c.data.fps = 16.0
  c.data.sample_rate = 44100
  c.data.audio_channels = 2
  c.data.batch_size = 8
  c.flow.shift = 3.0
  c.sample.shift = 3.0
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c
