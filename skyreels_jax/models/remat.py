"""Rematerialisation policies by name, applied to one scanned layer.

Tags set with `checkpoint_name` in blocks.py: attn_out, cross_attn_out, mlp_out.
  none          keep every activation (fastest, most memory)
  full          recompute the whole layer in the backward pass (least memory)
  save_dots     keep matmul outputs without batch dims, recompute the rest
  save_named    keep only the tagged activations
  offload_named move the tagged activations to host memory, recompute the rest
"""

from __future__ import annotations

from typing import Callable

import jax

NAMES = ("attn_out", "cross_attn_out", "mlp_out")
POLICIES = ("none", "full", "save_dots", "save_named", "offload_named")


def policy(name: str):
  cp = jax.checkpoint_policies
  if name == "full":
    return cp.nothing_saveable
  if name == "save_dots":
    return cp.dots_with_no_batch_dims_saveable
  if name == "save_named":
    return cp.save_only_these_names(*NAMES)
  if name == "offload_named":
    return cp.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=list(NAMES),
        offload_src="device", offload_dst="pinned_host")
  raise ValueError(f"model.remat={name!r}: choose one of {POLICIES}")


def apply(fn: Callable, name: str) -> Callable:
  if name == "none":
    return fn
  return jax.checkpoint(fn, policy=policy(name), prevent_cse=False)
