"""tiny: ~8M parameters; trains and samples on a 2-core CPU in minutes.

Pixel-space identity autoencoders (allowed only here, SPEC section 6): 32x32 video at 8 fps,
16 frames (2 s); 8 kHz mono audio framed by 160 samples (50 audio latents/s). The width
(192) is at least a token's size (2x2 patches of 4x4x3 space-to-depth pixels = 192 values;
160 audio samples): narrower, the output head cannot express per-pixel / per-sample noise
and samples stay speckled.
"""

from configs import base


def get_config():
  c = base.get_config()
  c.name = "tiny"
  c.model.width = 192
  c.model.num_heads = 4
  c.model.mlp_ratio = 2.0
  c.model.num_dual_blocks = 2
  c.model.num_single_blocks = 2
  c.model.patch_size = 2
  c.model.rope_axes_dim = (16, 16, 16)
  c.data.sample_rate = 8000
  c.audio_ae.hop = 160
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
