"""tiny: a few million parameters; trains and samples on a 2-core CPU in minutes.

Pixel-space identity autoencoders (allowed only here, SPEC section 6): 32x32 video at 8 fps,
16 frames (2 s), 16 kHz mono audio framed by 320 samples (50 audio latents/s).
"""

from configs import base


def get_config():
  c = base.get_config()
  c.name = "tiny"
  c.model.width = 96
  c.model.num_heads = 4
  c.model.num_dual_blocks = 2
  c.model.num_single_blocks = 2
  c.model.patch_size = 2
  c.model.rope_axes_dim = (8, 8, 8)
  c.text.vocab_size = 1024
  c.text.max_length = 24
  c.text.width = 64
  c.data.batch_size = 8
  c.optim.lr = 1e-3
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 0.0
  c.optim.ema_decay = 0.99
  c.train.steps = 2000
  c.train.log_every = 25
  c.train.checkpoint_every = 250
  c.sample.num_steps = 20
  c.sample.video_guidance = 3.0
  c.sample.audio_guidance = 3.0
  return c
