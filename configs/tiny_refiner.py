"""tiny_refiner: the cascade refiner (SPEC section 5 step 2) at tiny size: the tiny MMDiT,
unchanged (so it can start from tiny weights), trained on super-resolution + frame
interpolation (skyreels_jax/tasks/refiner.py).

Target clips: 64x64 at 16 fps (tiny doubled in space and frame rate); the low-res input is
32x32 at 8 fps, tiny's own geometry. 16 target frames (1 s; 8 low-res frames), not 32:
1024 video tokens per clip (tiny: 256), which still trains on a 2-core CPU.

  python -m data_pipelines.synthetic --out=D --num_clips=64 --config=configs/tiny_refiner.py
  python -m skyreels_jax.train --config=configs/tiny_refiner.py --workdir=W --config.data.path=D
"""

from configs import tiny


def get_config():
  c = tiny.get_config()
  c.name = "tiny_refiner"
  c.refiner.enabled = True
  c.refiner.scale = 2
  c.refiner.time_scale = 2
  c.refiner.keyframes = (0,)
  c.data.height = c.data.width = 64
  c.data.fps = 16.0
  c.data.num_frames = 16
  return c
