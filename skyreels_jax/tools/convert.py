"""Offline weight conversion: a Hugging Face / diffusers folder -> an orbax checkpoint.

  python -m skyreels_jax.tools.convert --kind=wan_vae|oobleck_vae|qwen2_5_vl --src=DIR --dst=DIR

Reads `DIR/config.json` and its safetensors (numpy, no torch), maps every tensor through the
kind's reviewed table (skyreels_jax/tools/*_mapping.py, strict `tools/weights.load_into`:
an unused source tensor or an unfilled param fails, naming them) and writes
  DST/params/        the module's variables (orbax), restorable straight into any sharding
  DST/converted.json {kind, source config.json, the module config}, what `restore` rebuilds
                     the module from
  DST/tokenizer/     (qwen2_5_vl) the tokenizer / processor files, copied, so a config points
                     at one folder
Nothing downloads at run time: configs name DST, and a missing path is a clear error.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import shutil
import sys
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

# kind -> its mapping module, which provides load_folder(src) -> module (strict),
# module_config(module) -> JSON-able config, build_module(config) -> module.
KINDS = {
    "wan_vae": "skyreels_jax.tools.wan_vae_mapping",
    "oobleck_vae": "skyreels_jax.tools.oobleck_mapping",
    "qwen2_5_vl": "skyreels_jax.tools.qwen_mapping",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.json",
                   "chat_template.jinja", "preprocessor_config.json", "generation_config.json")


class ConversionError(ValueError):
  """A source folder that cannot be converted (missing files, unmapped tensors)."""


def mapping_module(kind: str):
  if kind not in KINDS:
    raise ConversionError(f"--kind={kind!r}: choose one of {sorted(KINDS)}")
  return importlib.import_module(KINDS[kind])


def _plain(value: Any) -> Any:
  """A module config (dataclass, dict, tuples) as JSON values."""
  if dataclasses.is_dataclass(value):
    value = dataclasses.asdict(value)
  return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist")
                               else str(o)))


def convert(kind: str, src: str, dst: str) -> dict[str, Any]:
  """Converts `src` into `dst`; returns converted.json's content."""
  mapping = mapping_module(kind)
  config_path = os.path.join(src, "config.json")
  if not os.path.exists(config_path):
    raise ConversionError(f"{src}: no config.json (a save_pretrained folder is expected)")
  with open(config_path) as f:
    source_config = json.load(f)
  module = mapping.load_folder(src)           # strict: raises naming the tensors
  params = nnx.state(module)   # every variable: params and buffers (e.g. latent mean / std)
  os.makedirs(dst, exist_ok=True)
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  target = os.path.abspath(os.path.join(dst, "params"))
  if os.path.exists(target):
    shutil.rmtree(target)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(target, nnx.to_pure_dict(params))
  meta = {"kind": kind, "source_config": source_config,
          "module_config": _plain(mapping.module_config(module))}
  if kind == "qwen2_5_vl":
    tok_dir = os.path.join(dst, "tokenizer")
    os.makedirs(tok_dir, exist_ok=True)
    for name in TOKENIZER_FILES:
      if os.path.exists(os.path.join(src, name)):
        shutil.copy(os.path.join(src, name), tok_dir)
  with open(os.path.join(dst, "converted.json"), "w") as f:
    json.dump(meta, f, indent=2)
  return meta


def restore(path: str, kind: str, shardings: Callable[[Any], Any] | None = None):
  """The module of a converted folder. `shardings(abstract_state) -> shardings tree` places
  the params as they are read (default: replicated on the default device)."""
  meta_path = os.path.join(path, "converted.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{path}: not a converted checkpoint (no converted.json); run "
                            f"python -m skyreels_jax.tools.convert --kind={kind} --src=... "
                            f"--dst={path}")
  with open(meta_path) as f:
    meta = json.load(f)
  if meta["kind"] != kind:
    raise ConversionError(f"{path} holds a {meta['kind']} conversion, not {kind}")
  mapping = mapping_module(kind)
  abstract = nnx.eval_shape(lambda: mapping.build_module(meta["module_config"]))
  graphdef, state = nnx.split(abstract)
  params = nnx.to_pure_dict(state)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  if shardings is not None:
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          target, shardings(target))
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as ckpt:
    values = ckpt.restore(os.path.abspath(os.path.join(path, "params")), target)
  nnx.replace_by_pure_dict(state, values)
  return nnx.merge(graphdef, state)


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  try:
    meta = convert(f.kind, f.src, f.dst)
  except (ConversionError, KeyError, ValueError) as e:
    print(f"conversion failed: {e}", file=sys.stderr)
    sys.exit(1)
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      restore(f.dst, f.kind)) if hasattr(x, "shape"))
  print(f"converted {meta['kind']} from {f.src} to {f.dst}: {n / 1e6:.2f}M parameters")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum("kind", None, sorted(KINDS), "what the source folder holds")
  flags.DEFINE_string("src", None, "Hugging Face / diffusers folder (config.json + safetensors)")
  flags.DEFINE_string("dst", None, "output folder")
  flags.mark_flags_as_required(["kind", "src", "dst"])
  app.run(main)
