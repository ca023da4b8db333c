"""Offline weight conversion: a Hugging Face / diffusers folder -> an orbax checkpoint.

  python -m skyreels_jax.tools.convert --kind=wan_vae|oobleck_vae|qwen2_5_vl --src=DIR --dst=DIR
  python -m skyreels_jax.tools.convert --kind=hunyuan_video --src=DIR --dst=DIR
  python -m skyreels_jax.tools.convert --kind=lora_export --src=LORA_RUN --dst=DIR

Reads `DIR/config.json` and its safetensors (numpy, no torch), maps every tensor through the
kind's reviewed table (skyreels_jax/models/mappings/, strict `weights/tables.load_into`:
an unused source tensor or an unfilled param fails, naming them) and writes the folder
weights/converted.py describes (params/, converted.json, and for qwen2_5_vl the tokenizer /
processor files in tokenizer/, copied, so a config points at one folder). The command line
only: reading a folder back is models/frozen.restore.
Nothing downloads at run time: configs name DST, and a missing path is a clear error.

`lora_export` writes a LoRA run's EMA adapters (train.lora) as DIR/pytorch_lora_weights.safetensors
in the diffusers / PEFT convention: `transformer.<module>.lora_A.weight` (rank, in) and
`lora_B.weight` (out, rank), named by HunyuanVideo's modules (models/mappings/hunyuan.py;
our own layers by their path), the alpha / rank scale folded into lora_B, and
DIR/adapter_config.json.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from typing import Any

import jax
import numpy as np
from absl import flags

from flax import nnx
from safetensors.numpy import save_file

from skyreels_jax.config import DTYPES, abstract_model, load_run_config
from skyreels_jax.models import frozen
from skyreels_jax.models.mappings import hunyuan
from skyreels_jax.parallel import multihost
from skyreels_jax.weights import converted, lora, runs
from skyreels_jax.weights.converted import ConversionError  # noqa: F401 (raised here)

# kind -> its table module (models/mappings/): the frozen encoders' and HunyuanVideo's
# transformer (the video branch a run starts from: train.init_from).
TABLES = {**frozen.KINDS, "hunyuan_video": hunyuan}
KINDS = {**TABLES, "lora_export": None}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.json",
                   "chat_template.jinja", "preprocessor_config.json", "generation_config.json")


def export_lora(src: str, dst: str) -> dict[str, Any]:
  """A LoRA run's EMA adapters as PEFT-named safetensors (see the module doc)."""
  if not os.path.isfile(os.path.join(src, "config.json")):
    raise ConversionError(f"--src={src}: not a training run (no config.json)")
  config = load_run_config(src)
  lo = config.train.lora
  if lo.rank <= 0:
    raise ConversionError(f"{src}: not a LoRA run (train.lora.rank is 0)")
  _, params = nnx.split(abstract_model(config), nnx.Param)
  abstract = lora.abstract_adapters(params, lo.targets, lo.rank,
                                    DTYPES[config.model.param_dtype])
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: x.replace(jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                                  sharding=one)),
                        abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
  try:
    step, adapters = runs.read(src, "ema", target)
  except FileNotFoundError as e:
    raise ConversionError(str(e)) from None
  names = hunyuan.module_names(config.model.num_dual_blocks, config.model.num_single_blocks)
  scale = lora.scale(lo.rank, lo.alpha)
  pairs: dict[tuple, dict] = {}
  for path, v in nnx.to_flat_state(adapters):
    pairs.setdefault(tuple(map(str, path[:-1])), {})[path[-1]] = np.asarray(v.get_value())
  tensors, modules = {}, set()
  for path, ab in sorted(pairs.items()):
    inner = path[1:-1] if path[0] == "mmdit" else path[:-1]     # the Linear, no `kernel`
    stacked = ab[lora.A].ndim == 3
    for i in range(ab[lora.A].shape[0]) if stacked else (None,):
      a, b = (ab[lora.A][i], ab[lora.B][i]) if stacked else (ab[lora.A], ab[lora.B])
      key = inner + (() if i is None else (str(i),))
      name = names.get(key) or ".".join(path[:-1] + (() if i is None else (str(i),)))
      tensors[f"transformer.{name}.lora_A.weight"] = np.ascontiguousarray(a.T)
      tensors[f"transformer.{name}.lora_B.weight"] = np.ascontiguousarray((scale * b).T)
      modules.add(re.sub(r"^(single_)?transformer_blocks\.\d+\.", "", name))
  os.makedirs(dst, exist_ok=True)
  meta = {"source": os.path.abspath(src), "step": int(step), "rank": int(lo.rank),
          "alpha": float(lo.alpha or lo.rank), "scale_folded_into_lora_B": scale}
  save_file(tensors, os.path.join(dst, "pytorch_lora_weights.safetensors"),
            metadata={k: str(v) for k, v in meta.items()})
  with open(os.path.join(dst, "adapter_config.json"), "w") as f:
    json.dump({"peft_type": "LORA", "r": int(lo.rank), "lora_alpha": int(lo.rank),
               "target_modules": sorted(modules), "bias": "none"}, f, indent=2)
  return {"kind": "lora_export", **meta, "tensors": len(tensors)}


def convert(kind: str, src: str, dst: str) -> dict[str, Any]:
  """Converts `src` into `dst`; returns converted.json's content."""
  if kind == "lora_export":
    return export_lora(src, dst)
  if kind not in TABLES:
    raise ConversionError(f"--kind={kind!r}: choose one of {sorted(KINDS)}")
  table = TABLES[kind]
  config_path = os.path.join(src, "config.json")
  if not os.path.exists(config_path):
    raise ConversionError(f"{src}: no config.json (a save_pretrained folder is expected)")
  with open(config_path) as f:
    source_config = json.load(f)
  module = table.load_folder(src)           # strict: raises naming the tensors
  meta = converted.save(dst, kind, module, source_config=source_config,
                        module_config=table.module_config(module))
  if kind == "qwen2_5_vl":
    tok_dir = os.path.join(dst, "tokenizer")
    os.makedirs(tok_dir, exist_ok=True)
    for name in TOKENIZER_FILES:
      if os.path.exists(os.path.join(src, name)):
        shutil.copy(os.path.join(src, name), tok_dir)
  return meta


def main(argv):
  del argv
  multihost.quiet_absent_tpu()
  f = flags.FLAGS
  try:
    meta = convert(f.kind, f.src, f.dst)
  except (ConversionError, KeyError, ValueError) as e:
    print(f"conversion failed: {e}", file=sys.stderr)
    sys.exit(1)
  if f.kind == "lora_export":
    print(f"exported the adapters of {f.src} (step {meta['step']}, rank {meta['rank']}): "
          f"{meta['tensors']} tensors in {f.dst}")
    return
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      converted.restore(f.dst, f.kind, TABLES[f.kind].build_module)) if hasattr(x, "shape"))
  print(f"converted {meta['kind']} from {f.src} to {f.dst}: {n / 1e6:.2f}M parameters")


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_enum("kind", None, sorted(KINDS), "what the source folder holds")
  flags.DEFINE_string("src", None, "Hugging Face / diffusers folder (config.json + safetensors)")
  flags.DEFINE_string("dst", None, "output folder")
  flags.mark_flags_as_required(["kind", "src", "dst"])
  app.run(main)
