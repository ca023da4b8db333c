"""tiny_base: the cascade BASE model (SPEC section 5 step 1) at tiny size: the tiny MMDiT,
unchanged, generating every frame at tiny's 32x32 (8 fps, 2 s) plus 2 high-res keyframes at
64x64 as extra video tokens (skyreels_jax/tasks/keyframes.py). The data clips are 64x64:
the low-res stream is their area-downsampled view. Its output feeds configs/tiny_refiner.py
(64x64 at 16 fps):

  python -m data_pipelines.synthetic --out=D --num_clips=64 --config=configs/tiny_base.py
  python -m skyreels_jax.train --config=configs/tiny_base.py --workdir=BASE --config.data.path=D
"""

from configs import tiny


def get_config():
  c = tiny.get_config()
  c.name = "tiny_base"
  c.keyframes.count = 2
  c.keyframes.scale = 2
  c.data.height = c.data.width = 64
  return c
