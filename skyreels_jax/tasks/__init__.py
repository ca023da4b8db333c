"""Every task of SPEC section 3 through one interface: Concat(V, I, M) per stream.

M = 1 keeps (condition), M = 0 generates. I holds the clean latent where M = 1 and the
latent of a black frame / silence elsewhere. See masks.py.
"""

from skyreels_jax.core import check
from skyreels_jax.tasks import given
from skyreels_jax.tasks.masks import (AUDIO_RANDOM_TASKS, AUDIO_TASKS, IMAGE_TASKS, RANDOM_TASKS,
                                      VIDEO_TASKS, audio_task_mask,
                                      channel_concat, condition_latent, sample_task_masks,
                                      video_task_mask)

__all__ = ["AUDIO_TASKS", "IMAGE_TASKS", "VIDEO_TASKS", "audio_task_mask", "channel_concat",
           "check_config", "condition_latent", "sample_task_masks", "video_task_mask"]


def check_mixture(mixture, field: str, known) -> None:
  """A task mixture: known names, weights >= 0 with a positive sum."""
  unknown = set(mixture.keys()) - set(known)
  check(not unknown, field, f"unknown {'audio tasks' if 'audio' in field else 'tasks'} "
        f"{sorted(unknown)}; known: {known}")
  weights = [float(v) for v in mixture.values()]
  check(all(w >= 0 for w in weights) and sum(weights) > 0, field,
        "weights must be >= 0 with a positive sum")


def check_config(config) -> None:
  """data.tasks, data.audio_tasks, data.caption_dropout and the data-given tasks' fields
  (tasks/given.py): raises ConfigError naming the field."""
  d = config.data
  check_mixture(d.tasks, "data.tasks", VIDEO_TASKS)
  check_mixture(d.audio_tasks, "data.audio_tasks", AUDIO_TASKS)
  check(0.0 <= d.caption_dropout < 1.0, "data.caption_dropout", "must be in [0, 1)")
  check(d.given_fallback in RANDOM_TASKS, "data.given_fallback",
        f"must be a task that draws its own mask: one of {RANDOM_TASKS}")
  check(d.audio_given_fallback in AUDIO_RANDOM_TASKS, "data.audio_given_fallback",
        f"must be one of {AUDIO_RANDOM_TASKS}")
  check(d.edit_prompt in given.EDIT_PROMPTS, "data.edit_prompt",
        f"must be one of {given.EDIT_PROMPTS}")
