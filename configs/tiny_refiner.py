"""tiny_refiner: the cascade refiner (SPEC section 5 step 2) at tiny size: the tiny MMDiT,
unchanged (so it can start from tiny weights), trained on super-resolution + frame
interpolation (skyreels_jax/tasks/refiner.py).

Target clips: 64x64 at 16 fps (tiny doubled in space and frame rate); the low-res input is
32x32 at 8 fps, tiny's own geometry. 32 target frames (2 s, 16 low-res frames): the
duration of configs/tiny_base.py's output, so the base's 2 keyframes (its frames 0 and 15,
target frames 0 and 30) fall where this refiner's random training keyframes do
(sample/cascade.py checks). 2048 video tokens per clip (tiny: 256).

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
  c.refiner.num_keyframes = 2
  c.data.height = c.data.width = 64
  c.data.fps = 16.0
  c.data.num_frames = 32
  return c
