"""Every task of SPEC section 3 through one interface: Concat(V, I, M) per stream.

M = 1 keeps (condition), M = 0 generates. I holds the clean latent where M = 1 and the
latent of a black frame / silence elsewhere. See masks.py.
"""

from skyreels_jax.tasks.masks import (AUDIO_TASKS, IMAGE_TASKS, VIDEO_TASKS, audio_task_mask,
                                      channel_concat, condition_latent, sample_task_masks,
                                      video_task_mask)

__all__ = ["AUDIO_TASKS", "IMAGE_TASKS", "VIDEO_TASKS", "audio_task_mask", "channel_concat",
           "condition_latent", "sample_task_masks", "video_task_mask"]
