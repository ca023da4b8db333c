"""Qwen2.5-VL encoder vs transformers on a tiny random model (CPU, float32): hidden states of
the chosen layer for text with left and right padding, for text + images (M-RoPE, window
attention) and for text + videos (+ an image; temporal positions scaled by
second_per_grid_ts), the strict loader, the save_pretrained -> load_hf_folder round trip
(sharded), and the prompt template with a tiny local tokenizer / processor folder."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import sys
import types
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from skyreels_jax.data import shots
from skyreels_jax.models.text import qwen_prompt
from skyreels_jax.models.text.qwen2_5_vl import Qwen25VLEncoder, mrope_positions
from skyreels_jax.models.mappings import qwen as qwen_mapping

# The tiny tokenizer's special-token ids (it lists its specials first), shared by the model.
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
            "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
PAD, VSTART, VEND, IMG, VIDEO = 0, 3, 4, 5, 6
GRIDS = np.array([[1, 6, 10], [1, 4, 4]])   # 15 and 4 merged tokens; partial windows
VIDEO_GRIDS = np.array([[3, 4, 4], [2, 4, 6]])   # 12 merged tokens each
# tokens_per_second=4 in the model: temporal steps 2.67 (floored: 0, 2, 5) and 2.
SECONDS = np.array([2 / 3, 0.5], np.float32)


def _torch_model():
  from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
  torch.manual_seed(0)
  cfg = Qwen2_5_VLConfig(
      text_config=dict(vocab_size=320, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                       rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
                       initializer_range=0.2,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                        "mrope_section": [2, 3, 3]}),
      vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                         patch_size=4, temporal_patch_size=2, spatial_merge_size=2,
                         window_size=16, out_hidden_size=64, fullatt_block_indexes=[1],
                         tokens_per_second=4, initializer_range=0.2),
      image_token_id=IMG, video_token_id=VIDEO, vision_start_token_id=VSTART,
      vision_end_token_id=VEND)
  # initializer_range 0.2 (not 0.02): attention logits of order one, so positions matter.
  model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
  with torch.no_grad():  # non-trivial norm scales, so a swapped norm would show
    for name, p in model.named_parameters():
      if name.endswith("norm.weight") or "layernorm" in name or "norm1" in name \
          or "norm2" in name or "ln_q" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  model = _torch_model()
  folder = str(tmp_path_factory.mktemp("qwen"))
  model.save_pretrained(folder, max_shard_size="150KB")
  return model, folder, qwen_mapping.load_hf_folder(folder)


def _with_layer(encoder: Qwen25VLEncoder, k: int) -> Qwen25VLEncoder:
  other = qwen_mapping.abstract_encoder(dataclasses.replace(encoder.config, output_layer=k))
  nnx.update(other, nnx.state(encoder))
  return other


def _text_batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(7, 300, size=(2, 12)).astype(np.int32)
  mask = np.ones((2, 12), bool)
  mask[0, 9:] = False          # right padding
  mask[1, :4] = False          # left padding
  return np.where(mask, ids, PAD), mask


def _image_batch():
  rng = np.random.default_rng(1)
  row0 = [15, 16, VSTART] + [IMG] * 15 + [VEND, 17, 18, 19]            # 22 tokens
  row1 = [20, VSTART] + [IMG] * 4 + [VEND, 21, 22]                     # 9 tokens
  ids = np.full((2, 24), PAD, np.int32)
  mask = np.zeros((2, 24), bool)
  ids[0, :22], mask[0, :22] = row0, True                                 # right padding
  ids[1, -9:], mask[1, -9:] = row1, True                                 # left padding
  pixels = rng.standard_normal((int(GRIDS.prod(-1).sum()), 3 * 2 * 4 * 4)).astype(np.float32)
  return ids, mask, pixels


def _video_batch():
  """Row 0: text + 1 video (right padding); row 1: text + 1 image + 1 video (left padding)."""
  rng = np.random.default_rng(3)
  row0 = [15, 16, VSTART] + [VIDEO] * 12 + [VEND, 17, 18]                        # 18 tokens
  row1 = [20, VSTART] + [IMG] * 4 + [VEND, 21, VSTART] + [VIDEO] * 12 + [VEND, 22, 23]  # 24
  ids = np.full((2, 26), PAD, np.int32)
  mask = np.zeros((2, 26), bool)
  ids[0, :18], mask[0, :18] = row0, True
  ids[1, -24:], mask[1, -24:] = row1, True
  image = rng.standard_normal((16, 96)).astype(np.float32)                       # grid 1x4x4
  videos = rng.standard_normal((int(VIDEO_GRIDS.prod(-1).sum()), 96)).astype(np.float32)
  return ids, mask, image, videos


def _mm_token_types(ids):
  return torch.from_numpy(np.where(ids == IMG, 1, np.where(ids == VIDEO, 2, 0)))


def _torch_hidden(model, ids, mask, pixels=None, grids=GRIDS, videos=None, video_grids=None,
                  seconds=None):
  kw = {}
  if pixels is not None:
    kw = dict(pixel_values=torch.from_numpy(pixels), image_grid_thw=torch.from_numpy(grids))
  if videos is not None:
    kw.update(pixel_values_videos=torch.from_numpy(videos),
              video_grid_thw=torch.from_numpy(video_grids),
              second_per_grid_ts=torch.from_numpy(seconds))
  if kw:
    kw["mm_token_type_ids"] = _mm_token_types(ids)
  with torch.no_grad():
    out = model.model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                      attention_mask=torch.from_numpy(mask.astype(np.int64)),
                      output_hidden_states=True, **kw)
  return [h.numpy() for h in out.hidden_states]


def _max_err(ours, ref, mask):
  """Max abs error over attended positions, relative to the largest reference value (the
  residual stream grows to ~25 here: float32 rounding scales with it)."""
  ours = np.asarray(ours)
  assert np.all(ours[~mask] == 0), "padded positions must be zero"
  return float(np.abs(ours[mask] - ref[mask]).max() / np.abs(ref[mask]).max())


@pytest.mark.parametrize("layer", [-1, 1])
def test_text_only_matches_transformers_with_padding(models, layer):
  model, _, encoder = models
  ids, mask = _text_batch()
  ref = _torch_hidden(model, ids, mask)
  hidden, out_mask = _with_layer(encoder, layer)(jnp.asarray(ids), jnp.asarray(mask))
  assert hidden.shape == (2, 12, 64)
  np.testing.assert_array_equal(np.asarray(out_mask), mask)
  assert _max_err(hidden, ref[layer], mask) < 1e-5


def test_bf16_text_encoder_matches_transformers_at_the_stated_tolerance(models):
  """The frozen MLLM as a bf16 run builds it (tasks/examples.make_codecs: weights and
  compute in model.dtype): the last hidden state against transformers' float32, relative
  RMS error over attended positions <= 3e-2 (measured: 2.0e-2), and above 1e-3 (bf16 ran)."""
  from skyreels_jax.models import frozen
  model, folder, _ = models
  ids, mask = _text_batch()
  ref = _torch_hidden(model, ids, mask)[-1]
  half = frozen.load_encoder(folder, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  assert {x.dtype for x in jax.tree.leaves(nnx.state(half, nnx.Param))} == {
      jnp.dtype(jnp.bfloat16)}
  hidden, _ = jax.jit(lambda i, m: half(i, m))(jnp.asarray(ids), jnp.asarray(mask))
  got = np.asarray(hidden, np.float32)
  assert np.all(got[~mask] == 0)
  err = np.sqrt(np.mean((got[mask] - ref[mask]) ** 2) / np.mean(ref[mask] ** 2))
  assert 1e-3 < err <= 3e-2, err


def test_mrope_positions_match_get_rope_index(models):
  model, _, encoder = models
  ids, mask, _ = _image_batch()
  ref, _ = model.model.get_rope_index(
      torch.from_numpy(ids.astype(np.int64)),
      mm_token_type_ids=torch.from_numpy((ids == IMG).astype(np.int64)),
      image_grid_thw=torch.from_numpy(GRIDS), attention_mask=torch.from_numpy(mask))
  ours = np.asarray(mrope_positions(jnp.asarray(ids), jnp.asarray(mask), GRIDS,
                                    encoder.config))
  np.testing.assert_array_equal(ours[:, mask], ref.numpy()[:, mask])


def test_vision_tower_matches_transformers(models):
  model, _, encoder = models
  _, _, pixels = _image_batch()
  with torch.no_grad():
    ref = model.model.visual(torch.from_numpy(pixels),
                             grid_thw=torch.from_numpy(GRIDS)).pooler_output.numpy()
  ours = np.asarray(encoder.visual(jnp.asarray(pixels), GRIDS))
  assert ours.shape == (19, 64)
  assert np.abs(ours - ref).max() / np.abs(ref).max() < 1e-5


@pytest.mark.parametrize("layer", [-1, 0, 2])
def test_text_and_images_match_transformers(models, layer):
  model, _, encoder = models
  ids, mask, pixels = _image_batch()
  ref = _torch_hidden(model, ids, mask, pixels)
  hidden, _ = _with_layer(encoder, layer)(jnp.asarray(ids), jnp.asarray(mask),
                                          jnp.asarray(pixels), GRIDS)
  assert _max_err(hidden, ref[layer], mask) < 1e-5


def test_image_token_count_is_checked(models):
  _, _, encoder = models
  ids, mask, pixels = _image_batch()
  ids[0, 4] = 9  # one image token fewer
  with pytest.raises(ValueError, match="tokens: 18, features: 19"):
    encoder(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pixels), GRIDS)


def test_mrope_positions_with_videos_match_get_rope_index(models):
  model, _, encoder = models
  ids, mask, _, _ = _video_batch()
  ref, _ = model.model.get_rope_index(
      torch.from_numpy(ids.astype(np.int64)), mm_token_type_ids=_mm_token_types(ids),
      image_grid_thw=torch.tensor([[1, 4, 4]]), video_grid_thw=torch.from_numpy(VIDEO_GRIDS),
      second_per_grid_ts=torch.from_numpy(SECONDS), attention_mask=torch.from_numpy(mask))
  ours = np.asarray(mrope_positions(jnp.asarray(ids), jnp.asarray(mask), np.array([[1, 4, 4]]),
                                    encoder.config, VIDEO_GRIDS, SECONDS))
  np.testing.assert_array_equal(ours[:, mask], ref.numpy()[:, mask])
  # Row 0's video starts at 3: t = 3 + floor(k * 4 * 2/3) = 3, 5, 8 per temporal grid, and
  # the text after it resumes at 3 + max(h, w) / merge = 5, below the video's last t.
  np.testing.assert_array_equal(ours[0, 0, 3:15:4], [3, 5, 8])
  np.testing.assert_array_equal(ours[:, 0, 15], [5, 5, 5])


@pytest.mark.parametrize("layer", [-1, 0])
def test_text_image_and_videos_match_transformers(models, layer):
  model, _, encoder = models
  ids, mask, image, videos = _video_batch()
  grid = np.array([[1, 4, 4]])
  ref = _torch_hidden(model, ids, mask, image, grid, videos, VIDEO_GRIDS, SECONDS)
  hidden, _ = _with_layer(encoder, layer)(
      jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(image), grid,
      pixel_values_videos=jnp.asarray(videos), video_grid_thw=VIDEO_GRIDS,
      second_per_grid_ts=SECONDS)
  assert _max_err(hidden, ref[layer], mask) < 1e-5
  with pytest.raises(ValueError, match="Video features and video tokens do not match, "
                                       "tokens: 23, features: 24"):
    bad = ids.copy()
    bad[0, 5] = 9  # one video token fewer
    encoder(jnp.asarray(bad), jnp.asarray(mask), jnp.asarray(image), grid,
            pixel_values_videos=jnp.asarray(videos), video_grid_thw=VIDEO_GRIDS)


def test_round_trip_is_sharded_and_exact(models):
  model, folder, encoder = models
  assert os.path.exists(os.path.join(folder, "model.safetensors.index.json"))
  ours = nnx.state(encoder, nnx.Param)
  np.testing.assert_array_equal(np.asarray(ours["embed_tokens"]["embedding"][...]),
                                model.model.language_model.embed_tokens.weight.detach().numpy())
  np.testing.assert_array_equal(
      np.asarray(ours["layers"]["self_attn"]["k_proj"]["kernel"][...])[2],
      model.model.language_model.layers[2].self_attn.k_proj.weight.detach().numpy().T)
  np.testing.assert_array_equal(
      np.asarray(ours["visual"]["blocks"]["mlp"]["up_proj"]["bias"][...])[1],
      model.model.visual.blocks[1].mlp.up_proj.bias.detach().numpy())


def _fresh(folder, **kw):
  with open(os.path.join(folder, "config.json")) as f:
    cfg = qwen_mapping.config_from_hf(json.load(f), **kw)
  return qwen_mapping.abstract_encoder(cfg)


def test_strict_loader_names_missing_and_extra_tensors(models):
  _, folder, _ = models
  tensors = qwen_mapping.read_safetensors(folder)
  missing = {k: v for k, v in tensors.items() if k != "model.layers.1.self_attn.q_proj.bias"}
  with pytest.raises(KeyError, match=r"model\.layers\.1\.self_attn\.q_proj\.bias"):
    qwen_mapping.load_into_encoder(_fresh(folder), missing)
  extra = dict(tensors, **{"visual.blocks.0.attn.extra": np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r"visual\.blocks\.0\.attn\.extra"):
    qwen_mapping.load_into_encoder(_fresh(folder), extra)


def test_module_layout_and_text_only_encoder(models):
  _, folder, encoder = models
  tensors = qwen_mapping.read_safetensors(folder)
  renamed = {("model.language_model." + k[6:] if k.startswith("model.") else
              "model." + k if k.startswith("visual.") else k): v for k, v in tensors.items()}
  module_layout = _fresh(folder)
  qwen_mapping.load_into_encoder(module_layout, renamed)
  text_only = _fresh(folder, with_vision=False)
  qwen_mapping.load_into_encoder(text_only, tensors)   # visual.* skipped, lm_head unused
  assert text_only.visual is None
  ids, mask = _text_batch()
  ref, _ = encoder(jnp.asarray(ids), jnp.asarray(mask))
  for other in (module_layout, text_only):
    np.testing.assert_array_equal(np.asarray(other(jnp.asarray(ids), jnp.asarray(mask))[0]),
                                  np.asarray(ref))


# --- The prompt template, with a tiny local tokenizer + image processor folder.


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast
  from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
      Qwen2VLImageProcessorPil)
  tok = Tokenizer(tok_models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(
      ["a man speaks softly while rain falls on the roof", "<text> <sfx> <dialogue> "
       "<singing> <bgm> system user assistant describe video sound image"],
      trainers.BpeTrainer(vocab_size=300, special_tokens=list(SPECIALS),
                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  folder = str(tmp_path_factory.mktemp("qwen_tok"))
  PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                          pad_token="<|endoftext|>").save_pretrained(folder)
  Qwen2VLImageProcessorPil(patch_size=4, temporal_patch_size=2, merge_size=2,
                           min_pixels=16 * 16, max_pixels=32 * 32).save_pretrained(folder)
  return folder


def test_prompt_string_and_caption_tags():
  caption = qwen_prompt.format_caption({"bgm": "soft piano", "text": "@image_1 walks in",
                                        "dialogue": "hello"})
  assert caption == "<text>@image_1 walks in</text><dialogue>hello</dialogue><bgm>soft piano</bgm>"
  text = qwen_prompt.prompt_text(caption, num_images=1, system_prompt="SYS")
  assert text == ("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n@image_1: "
                  "<|vision_start|><|image_pad|><|vision_end|>\n" + caption +
                  "<|im_end|>\n<|im_start|>assistant\n")
  with pytest.raises(ValueError, match="@image_1 but 0 images"):
    qwen_prompt.prompt_text(caption)
  with pytest.raises(ValueError, match="caption tags"):
    qwen_prompt.format_caption({"music": "x"})
  text = qwen_prompt.prompt_text("<text>@video_1 after @image_1</text>", 1, 1,
                                 system_prompt="SYS")
  assert text == ("<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n"
                  "@image_1: <|vision_start|><|image_pad|><|vision_end|>\n"
                  "@video_1: <|vision_start|><|video_pad|><|vision_end|>\n"
                  "<text>@video_1 after @image_1</text><|im_end|>\n<|im_start|>assistant\n")
  with pytest.raises(ValueError, match="@video_2 but 1 videos"):
    qwen_prompt.prompt_text("<text>@video_2</text>", num_images=2, num_videos=1)


def test_tokenizer_pads_truncates_and_pickles(tokenizer_dir):
  tok = qwen_prompt.QwenPromptTokenizer(tokenizer_dir, max_length=400)
  out = tok("<text>a man speaks</text>")
  assert out["text_ids"].shape == (400,) and out["text_ids"].dtype == np.int32
  n = int(out["text_mask"].sum())
  assert 0 < n < 400 and out["text_mask"][:n].all() and (out["text_ids"][n:] == PAD).all()
  assert tok.tokenizer.decode(out["text_ids"][:n]) == qwen_prompt.prompt_text(
      "<text>a man speaks</text>")
  template = int(tok("")["text_mask"].sum())     # the chat markup around an empty caption
  short = qwen_prompt.QwenPromptTokenizer(tokenizer_dir, max_length=template + 2)
  assert short("<text>a man speaks</text>")["text_mask"].all()     # the caption is cut
  with pytest.raises(ValueError, match="leaves no room for the caption"):
    qwen_prompt.QwenPromptTokenizer(tokenizer_dir, max_length=template - 5)("x")
  clone = pickle.loads(pickle.dumps(tok))
  np.testing.assert_array_equal(clone("x y")["text_ids"], tok("x y")["text_ids"])
  assert tok.batch(["a", "b"])["text_ids"].shape == (2, 400)


def test_tokenizer_marks_each_tokens_shot(tokenizer_dir):
  """model.shot_attention: a token's shot is the <shot> tag its text sits in (0: the global
  caption and the template), by the fast tokenizer's character offsets."""
  tok = qwen_prompt.QwenPromptTokenizer(tokenizer_dir, max_length=400, max_shots=3)
  caption = shots.tagged_caption("<text>rain</text>", [
      dict(start=0.0, end=1.5, text="a man speaks"), dict(start=1.5, end=3.0, text="rain")])
  out = tok(caption)
  ids, shot = out["text_ids"][out["text_mask"]], out["text_shot"][out["text_mask"]]
  tags = re.findall(r"<shot.*?</shot>", caption)
  for k, tag in enumerate(tags, 1):
    assert tok.tokenizer.decode(ids[shot == k]) == tag
  rest = tok.tokenizer.decode(ids[shot == 0])
  assert rest == qwen_prompt.prompt_text(caption).replace(tags[0], "").replace(tags[1], "")
  np.testing.assert_array_equal(out["shot_spans"], [[0, 1.5], [1.5, 3.0], [-1, -1]])
  assert not out["text_shot"][~out["text_mask"]].any()
  with pytest.raises(shots.ShotError, match="max_shots_per_clip=1"):
    qwen_prompt.QwenPromptTokenizer(tokenizer_dir, max_length=400, max_shots=1)(caption)


def test_prompt_with_image_runs_like_transformers(models, tokenizer_dir):
  model, _, encoder = models
  tok = qwen_prompt.QwenPromptTokenizer(tokenizer_dir, max_length=300)
  image = (np.random.default_rng(2).random((20, 28, 3)) * 255).astype(np.uint8)
  out = tok.encode("<text>@image_1 speaks</text><sfx>rain</sfx>", [image])
  grid = out["image_grid_thw"]
  assert grid.tolist() == [[1, 4, 8]]
  assert int((out["text_ids"] == IMG).sum()) == 8 == out["pixel_values"].shape[0] // 4
  ids, mask = out["text_ids"][None], out["text_mask"][None]
  ref = _torch_hidden(model, ids, mask, out["pixel_values"], grid)
  hidden, _ = encoder(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(out["pixel_values"]),
                      grid)
  assert _max_err(hidden, ref[-1], mask) < 1e-5
  with pytest.raises(ValueError, match="cuts the image tokens"):
    template = int(tok("")["text_mask"].sum())
    qwen_prompt.QwenPromptTokenizer(tokenizer_dir, max_length=template + 4).encode("x", [image])


def _video_processor_patchify(monkeypatch):
  """transformers' Qwen2VLVideoProcessor.patchify (pure torch). Its module imports
  torchvision at the top, which is not installed: a stand-in module satisfies the import."""
  import transformers.video_processing_utils  # noqa: F401  (before the stand-in)
  for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.v2",
               "torchvision.transforms.v2.functional"):
    monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
  name = "transformers.models.qwen2_vl.video_processing_qwen2_vl"
  monkeypatch.delitem(sys.modules, name, raising=False)
  from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
  monkeypatch.delitem(sys.modules, name)   # no stand-in-backed module left for other tests
  return Qwen2VLVideoProcessor.patchify


def test_video_patch_layout_matches_transformers(tokenizer_dir, monkeypatch):
  proc = qwen_prompt.QwenPromptTokenizer(tokenizer_dir, 8).image_processor
  rng = np.random.default_rng(4)
  # 16 x 32 frames need no resize (smart_resize keeps them): the reference normalises them.
  video = (rng.random((3, 16, 32, 3)) * 255).astype(np.uint8)
  ours, grid = qwen_prompt.video_patches(video, proc)
  assert grid.tolist() == [2, 4, 8] and ours.shape == (64, 96)   # 3 frames padded to 4
  frames = (video / 255.0 - np.array(proc.image_mean)) / np.array(proc.image_std)
  frames = torch.from_numpy(frames.transpose(0, 3, 1, 2)[None].astype(np.float32))
  ref, t, h, w = _video_processor_patchify(monkeypatch)(None, frames, 4, 2, 2)
  assert (t, h, w) == (2, 4, 8)
  np.testing.assert_allclose(ours, ref[0].numpy(), rtol=0, atol=1e-5)
  # A still video of two identical frames is an image: the image path's layout, exactly.
  image = (rng.random((20, 28, 3)) * 255).astype(np.uint8)
  still, grid = qwen_prompt.video_patches(np.stack([image, image]), proc)
  vis = proc(images=[image], return_tensors="np")
  assert grid.tolist() == vis["image_grid_thw"][0].tolist() == [1, 4, 8]
  np.testing.assert_array_equal(still, vis["pixel_values"])


def test_prompt_with_image_and_video_runs_like_transformers(models, tokenizer_dir):
  model, _, encoder = models
  tok = qwen_prompt.QwenPromptTokenizer(tokenizer_dir, max_length=400)
  rng = np.random.default_rng(5)
  image = (rng.random((20, 28, 3)) * 255).astype(np.uint8)
  video = (rng.random((5, 20, 28, 3)) * 255).astype(np.uint8)   # padded to 6 frames
  out = tok.encode("<text>@image_1 speaks</text><sfx>@video_1 rain</sfx>", [image], [video],
                   video_fps=3.0)
  assert out["video_grid_thw"].tolist() == [[3, 4, 8]]
  np.testing.assert_array_equal(out["second_per_grid_ts"], np.float32([2 / 3]))
  assert int((out["text_ids"] == VIDEO).sum()) == 24 == out["pixel_values_videos"].shape[0] // 4
  assert int((out["text_ids"] == IMG).sum()) == 8
  ids, mask = out["text_ids"][None], out["text_mask"][None]
  ref = _torch_hidden(model, ids, mask, out["pixel_values"], out["image_grid_thw"],
                      out["pixel_values_videos"], out["video_grid_thw"],
                      out["second_per_grid_ts"])
  hidden, _ = encoder(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(out["pixel_values"]),
                      out["image_grid_thw"], jnp.asarray(out["pixel_values_videos"]),
                      out["video_grid_thw"], out["second_per_grid_ts"])
  assert _max_err(hidden, ref[-1], mask) < 1e-5
  last_video_token = int(np.flatnonzero(out["text_ids"] == VIDEO)[-1])
  with pytest.raises(ValueError, match="cuts the video tokens"):
    qwen_prompt.QwenPromptTokenizer(tokenizer_dir, max_length=last_video_token).encode(
        "<text>@image_1 speaks</text><sfx>@video_1 rain</sfx>", [image], [video])


def test_convert_then_encoder_parts(models, tokenizer_dir, tmp_path):
  from skyreels_jax.tools import convert
  _, folder, encoder = models
  convert.convert("qwen2_5_vl", folder, str(tmp_path / "converted"))
  from configs import base
  from skyreels_jax.models import encoders
  t = base.get_config().text      # the run's frozen text encoder, as a config names it
  t.kind, t.path, t.tokenizer_path = "qwen2_5_vl", str(tmp_path / "converted"), tokenizer_dir
  t.max_length, t.output_layer, t.width = 400, 1, 64
  spec = encoders.build_text(t, dtype=jnp.float32, param_dtype=jnp.float32)
  tok, make, width = spec.tokenizer, spec.make_encoder, spec.width
  assert width == 64
  ids, mask = _text_batch()
  ours = make(nnx.Rngs(0))(jnp.asarray(ids), jnp.asarray(mask))[0]
  ref = _with_layer(encoder, 1)(jnp.asarray(ids), jnp.asarray(mask))[0]
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(ref))
  assert tok("x")["text_ids"].shape == (400,)
