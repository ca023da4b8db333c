"""The efficiency cascade (SPEC section 5): base -> refiner -> decode, from two training runs.

base     any run; a cascade base (keyframes.count > 0, configs/tiny_base.py) also generates
         high-res keyframes with its low-res video and the audio track.
refiner  a run with refiner.enabled (configs/tiny_refiner.py), sampled at the geometry the
         base's output implies: the base's frame size x refiner.scale (= the keyframes'
         size), its frame rate x refiner.time_scale, the same duration. The MMDiT takes any
         token grid, so this need not be the geometry the refiner trained at.
The refiner's condition is the base's low-res latents upsampled onto the target latent grid
in space and time (tasks/refiner.refiner_condition, as in its training), and the base's
high-res keyframe latents as the refiner's own keyframe tokens at the RoPE positions of their
target frames (tasks/refiner.keyframe_positions): the same function of the same inputs as
in its training, at positions it trained on (checked here: the base's keyframe count is the
refiner's refiner.num_keyframes, and their target frames lie in its training clips). The
base's audio is given to it clean and kept, so the output's track is the base's. Both runs
must share the autoencoders: the keyframes and the low-res video are handed over as latents.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from skyreels_jax.sample.sampler import SampleSettings, Sampler, load_run_config
from skyreels_jax.tasks.refiner import keyframe_positions, low_res_frames, refiner_condition

# Settings that must agree for latents to pass from one run to the other.
_SHARED = (("video_ae", ("kind", "path", "spatial_factor", "temporal_factor")),
           ("audio_ae", ("kind", "path", "hop")),
           ("data", ("sample_rate", "audio_channels")))


def refiner_geometry_config(base_config, base_geometry, refiner_config):
  """A copy of the refiner run's config at the geometry the base output implies; raises
  ValueError naming what does not match."""
  r = refiner_config.refiner
  if not r.enabled:
    raise ValueError("the refiner run's config.refiner.enabled is False: not a refiner")
  for section, fields in _SHARED:
    for f in fields:
      a, b = base_config[section][f], refiner_config[section][f]
      if a != b:
        raise ValueError(f"{section}.{f}: the base run has {a!r}, the refiner {b!r}; the "
                         "cascade hands latents over, so they must match")
  g = base_geometry
  size = (g.height * r.scale, g.width * r.scale)
  if g.keyframe_frames and tuple(g.keyframe_size) != size:
    raise ValueError(f"refiner.scale={r.scale}: the base's keyframes are "
                     f"{g.keyframe_size[0]}x{g.keyframe_size[1]}, its video x {r.scale} is "
                     f"{size[0]}x{size[1]}")
  endpoint = bool(base_config.data.endpoint_frame)
  ts = int(r.time_scale)
  frames = (g.num_frames - 1) * ts + 1 if endpoint else g.num_frames * ts
  if low_res_frames(frames, ts) != g.num_frames:
    raise ValueError(f"{frames} target frames have no {g.num_frames}-frame low-res view")
  _check_keyframes(g, r, int(refiner_config.data.num_frames))
  c = refiner_config.copy_and_resolve_references()
  c.data.height, c.data.width = size
  c.data.num_frames, c.data.fps = frames, float(base_config.data.fps) * ts
  c.data.endpoint_frame = endpoint
  return c


def target_keyframes(base_geometry, r) -> tuple[int, ...]:
  """The base's keyframe frames at the refiner's frame rate (low-res frame i = target frame
  i * time_scale, tasks/refiner.low_res_view)."""
  return tuple(f * int(r.time_scale) for f in base_geometry.keyframe_frames)


def _check_keyframes(base_geometry, r, trained_frames: int) -> None:
  """The base's keyframes must be what the refiner trained with: as many, at target frames
  inside its training clips (where its random training keyframes fell)."""
  made = len(base_geometry.keyframe_frames)
  count = int(r.num_keyframes)
  if made != count:
    raise ValueError(f"refiner.num_keyframes={count}: the refiner trained with {count} "
                     f"keyframes, the base run makes {made} (keyframes.count); train them to "
                     "match")
  late = [f for f in target_keyframes(base_geometry, r) if f >= trained_frames]
  if late:
    raise ValueError(f"the base's keyframes fall at target frames {late}, past the refiner's "
                     f"training clips (data.num_frames={trained_frames}): train the refiner "
                     "on clips as long as the base's output")


class Cascade:
  """Generates with a base run and a refiner run (latest or given checkpoints) on one mesh."""

  def __init__(self, base_workdir: str | None, refiner_workdir: str, *, mesh=None,
               base_step: int | None = None, refiner_step: int | None = None,
               base: Sampler | None = None):
    """`base`: an already built base Sampler (the CLI's), so that its EMA params and frozen
    encoders are not restored and placed a second time; then base_workdir is not read."""
    self.base = base if base is not None else Sampler(base_workdir, step=base_step, mesh=mesh)
    config = refiner_geometry_config(self.base.config, self.base.geometry,
                                     load_run_config(refiner_workdir))
    self.refiner = Sampler(refiner_workdir, step=refiner_step, config=config,
                           mesh=self.base.mesh)
    r, g = config.refiner, self.base.geometry
    # The base's keyframes at the refiner's frame rate, and their RoPE positions there.
    self.keyframe_frames = target_keyframes(g, r)
    self.keyframe_times = np.asarray(keyframe_positions(self.refiner.codecs.video_ae,
                                                        self.keyframe_frames))

  def condition(self, base_out: dict[str, Any], seeds: list[int],
                high_res=None) -> dict[str, np.ndarray]:
    """The refiner's latent condition from the base's output (noise_low as in training).
    high_res: the task's condition at the refiner's geometry (sample/conditions.py);
    its kept regions (an inpainting source under the mask, extended or first frames) replace
    the upsampled base output, from the high-res media (SPEC section 5)."""
    z_low = base_out["video_latent"]
    n = float(self.refiner.config.refiner.noise_low)
    if n > 0:
      eps = np.stack([np.asarray(jax.random.normal(jax.random.key(s + 7919), z_low.shape[1:]))
                      for s in seeds])
      z_low = (1.0 - n) * z_low + n * eps
    cond, keep = map(np.asarray, refiner_condition(z_low, self.refiner.geometry.video_grid))
    if high_res is not None:
      hi = self.refiner.condition_inputs(high_res, batch=cond.shape[0])
      kept = hi["keep_v"] > 0.5
      cond = np.where(kept, hi["cond_video"], cond)
      keep = np.maximum(keep, hi["keep_v"])
    out = {"cond_latent": cond, "keep_v": keep}
    if self.keyframe_frames:
      out["keyframes"] = base_out["keyframe_latent"]
      out["keyframe_times"] = self.keyframe_times
    if base_out.get("audio_latent") is not None and self.refiner.mcfg.use_audio:
      out["given_audio"] = base_out["audio_latent"]
    return out

  def generate(self, prompts: list[str], *, condition=None, high_res=None,
               seeds: list[int] | None = None,
               base_settings: SampleSettings | None = None,
               refiner_settings: SampleSettings | None = None,
               on_step: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """The refiner's output (uint8 video at its size and frame rate, the base's audio) with
    the base's under "base". `condition`: the base's task (sample/conditions.py);
    `high_res`: the same task at the refiner's geometry (see `condition`). on_step(stage, i):
    solver step i of stage "base" or "refiner" runs (Sampler.generate's on_step)."""
    base_settings = base_settings or self.base.settings()
    seeds = seeds or [base_settings.seed + i for i in range(len(prompts))]
    stage = lambda name: None if on_step is None else (lambda i: on_step(name, i))
    base = self.base.generate(prompts, condition=condition, seeds=seeds,
                              settings=base_settings, on_step=stage("base"))
    out = self.refiner.generate(prompts, seeds=seeds, settings=refiner_settings,
                                latent_condition=self.condition(base, seeds, high_res),
                                on_step=stage("refiner"))
    out["base"] = base
    return out
