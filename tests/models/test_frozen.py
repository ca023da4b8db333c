"""The frozen components wired into a run (models/frozen.py): a config naming converted
Wan-2.1 / Oobleck / Qwen2.5-VL folders (tiny random weights, converted here) trains, samples
and encodes latents with them; their weights are jit arguments, never program constants,
and never part of the train state; the text the MMDiT sees is the frozen encoder's output
(with caption dropout swapping in the empty prompt's); precomputed embeddings train too."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKLWan, AutoencoderOobleck
from flax import nnx

from configs import tiny
from data_pipelines import encode_latents, synthetic
from skyreels_jax.config import validate
from skyreels_jax.models import frozen
from skyreels_jax.models.text import FrozenTextEncoder, qwen_prompt
from skyreels_jax.parallel.mesh import make_mesh, rules
from skyreels_jax.tasks.examples import make_codecs, training_inputs
from skyreels_jax.tools import convert
from skyreels_jax.train.state import (abstract_state, make_optimizer, make_train_step,
                                      place_frozen)

pytestmark = pytest.mark.heavy   # minutes of training: make test starts it first

RATE = 1800   # twice the synthetic tones' 880 Hz and more (Nyquist)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
            "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def _qwen_source(folder):
  """A tiny random Qwen2.5-VL save_pretrained folder with a tokenizer that knows the prompt
  template's words (so the system prompt is short)."""
  from tokenizers import Tokenizer, decoders, models as tok_models, pre_tokenizers, trainers
  from transformers import (PreTrainedTokenizerFast, Qwen2_5_VLConfig,
                            Qwen2_5_VLForConditionalGeneration)
  torch.manual_seed(0)
  cfg = Qwen2_5_VLConfig(
      text_config=dict(vocab_size=320, hidden_size=64, intermediate_size=96,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                        "mrope_section": [2, 3, 3]}, initializer_range=0.2),
      vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                         patch_size=4, temporal_patch_size=2, spatial_merge_size=2,
                         window_size=16, out_hidden_size=64, fullatt_block_indexes=[0]),
      image_token_id=5, video_token_id=6, vision_start_token_id=3, vision_end_token_id=4)
  Qwen2_5_VLForConditionalGeneration(cfg).eval().save_pretrained(folder)
  tok = Tokenizer(tok_models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(
      [qwen_prompt.SYSTEM_PROMPT, "a red circle blue square green triangle bounces <text>"],
      trainers.BpeTrainer(vocab_size=320, special_tokens=list(SPECIALS),
                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                          pad_token="<|endoftext|>").save_pretrained(folder)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp("frozen")
  torch.manual_seed(0)
  AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                   temperal_downsample=[False, True, True], latents_mean=[0.0] * 4,
                   latents_std=[1.0] * 4).eval().save_pretrained(root / "wan_src")
  AutoencoderOobleck(encoder_hidden_size=8, downsampling_ratios=[2, 4],
                     channel_multiples=[1, 2], decoder_channels=8, decoder_input_channels=4,
                     audio_channels=1, sampling_rate=RATE).eval().save_pretrained(
                         root / "oobleck_src")
  _qwen_source(str(root / "qwen_src"))
  for kind, name in (("wan_vae", "wan"), ("oobleck_vae", "oobleck"), ("qwen2_5_vl", "qwen")):
    convert.convert(kind, str(root / f"{name}_src"), str(root / name))
  return root


def _config(root, data_path=""):
  c = tiny.get_config()
  c.video_ae.kind, c.video_ae.path = "wan", str(root / "wan")
  c.audio_ae.kind, c.audio_ae.path = "oobleck", str(root / "oobleck")
  c.text.kind, c.text.path, c.text.width, c.text.max_length = (
      "qwen2_5_vl", str(root / "qwen"), 64, 208)
  c.data.path = data_path
  c.data.num_frames, c.data.height, c.data.width = 9, 32, 32   # 1 + 4k frames, 8x8 space
  c.data.fps, c.data.sample_rate, c.data.audio_channels = 8.0, RATE, 1
  c.data.endpoint_frame = True                                  # 1 s: 9 frames, RATE samples
  c.data.batch_size, c.data.caption_dropout = 8, 0.5
  c.model.num_dual_blocks = c.model.num_single_blocks = 1
  c.train.steps, c.train.log_every, c.train.checkpoint_every = 2, 1, 2
  c.optim.warmup_steps, c.sample.num_steps = 1, 2
  return c


@pytest.fixture(scope="module")
def clips(converted, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("clips"))
  synthetic.write_dataset(out, num_clips=8, seed=0,
                          **synthetic.geometry_from_config(_config(converted).data))
  return out


def _batch(tokenizer, n=8):
  rng = np.random.default_rng(0)
  return {"video": rng.uniform(-1, 1, (n, 9, 32, 32, 3)).astype(np.float32),
          "audio": rng.uniform(-0.5, 0.5, (n, RATE, 1)).astype(np.float32),
          **tokenizer.batch([f"a red circle {i}" for i in range(n)])}


def test_frozen_weights_are_jit_arguments_not_state_or_constants(converted):
  config = _config(converted)
  validate(config)
  codecs, tokenizer = make_codecs(config)
  params = codecs.frozen_params()
  assert sorted(params) == ["audio_ae", "text_encoder", "video_ae"]
  graphdef, state = abstract_state(config, make_optimizer(config))
  paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(state["params"])}
  assert paths and not any("text_encoder" in p for p in paths)   # not trained, not saved
  # The embedding table is frozen weight of 320 x 64: it must reach the step as an argument.
  biggest = max(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  assert biggest >= 320 * 64
  step = make_train_step(config, graphdef, codecs, make_optimizer(config), True)
  concrete_state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state)
  jaxpr = jax.make_jaxpr(step)(concrete_state, _batch(tokenizer), params)
  consts = [np.asarray(c) for c in jaxpr.consts if hasattr(c, "shape")]
  weights = [np.asarray(x) for x in jax.tree.leaves(params) if np.size(x) >= 64]
  baked = [w.shape for w in weights for c in consts
           if c.shape == w.shape and np.array_equal(c, w)]
  assert len(weights) > 20 and not baked, baked
  # What is baked in is static tables (RoPE, the causal mask), not weights.
  assert sum(c.size for c in consts) < sum(w.size for w in weights) / 4


def test_text_inputs_are_the_frozen_encoders_outputs(converted):
  config = _config(converted)
  codecs, tokenizer = make_codecs(config)
  mesh = make_mesh(config.mesh)
  placed, _ = place_frozen(codecs, mesh, rules(config))
  batch = _batch(tokenizer)
  fn = jax.jit(lambda p, b, r: training_inputs(b, r, config=config, codecs=codecs.bind(p),
                                               use_audio=True)[0])
  with jax.set_mesh(mesh):
    inputs = fn(placed, batch, jax.random.key(1))
  assert "text_ids" not in inputs and inputs["text"].shape == (8, 208, 64)
  encoder = frozen.load_encoder(config.text.path)
  own, own_mask = encoder(batch["text_ids"], batch["text_mask"])
  null = tokenizer("")
  null_emb, null_mask = encoder(null["text_ids"][None], null["text_mask"][None])
  text, mask = np.asarray(inputs["text"]), np.asarray(inputs["text_mask"])
  dropped = [np.array_equal(mask[i], null["text_mask"]) and
             np.allclose(text[i], null_emb[0], atol=1e-5) for i in range(8)]
  assert 0 < sum(dropped) < 8      # caption dropout 0.5 on 8 prompts
  for i in range(8):
    ref, ref_mask = (null_emb[0], null_mask[0]) if dropped[i] else (own[i], own_mask[i])
    np.testing.assert_allclose(text[i], np.asarray(ref), atol=1e-5)
    np.testing.assert_array_equal(mask[i], np.asarray(ref_mask))


def test_train_and_sample_with_the_frozen_encoders(converted, clips, tmp_path):
  from skyreels_jax.sample.sampler import Sampler
  from skyreels_jax.train.trainer import train
  config = _config(converted, clips)
  result = train(config, str(tmp_path / "run"))
  assert result["step"] == 2 and np.isfinite(result["loss"])
  sampler = Sampler(str(tmp_path / "run"))
  out = sampler.generate(["a red circle bounces"], settings=sampler.settings(num_steps=2))
  assert out["video"].shape == (1, 9, 32, 32, 3) and out["video"].dtype == np.uint8
  assert out["audio"].shape == (1, RATE, 1) and np.isfinite(out["audio"]).all()


def test_precomputed_embeddings_train(converted, clips, tmp_path):
  from skyreels_jax.data import latents
  from skyreels_jax.train.trainer import train
  config = _config(converted, clips)
  lat = str(tmp_path / "latents")
  index = encode_latents.encode_dataset(clips, lat, config, batch_size=8, log=lambda _: None)
  assert index["text"]["embedding_width"] == 64
  assert index["encoders"]["text"]["frozen"] is True
  emb, mask = latents.read_null_text(lat)
  codecs, tokenizer = make_codecs(config)
  null = tokenizer("")
  ref, _ = codecs.text_encoder(null["text_ids"][None], null["text_mask"][None])
  np.testing.assert_allclose(emb, np.asarray(ref[0]), atol=1e-5)
  np.testing.assert_array_equal(mask, null["text_mask"])
  config = _config(converted, lat)
  config.data.format = "latents"
  result = train(config, str(tmp_path / "run"))
  assert result["step"] == 2 and np.isfinite(result["loss"])


def test_published_architectures_stand_in_only_for_planning(tmp_path):
  absent = str(tmp_path / "absent")
  with pytest.raises(ValueError, match="not a converted checkpoint"):
    frozen.load("qwen2_5_vl", absent, weights=False)
  encoder = frozen.load("qwen2_5_vl", absent, weights=False, published_if_missing=True)
  assert encoder.config.hidden_size == 3584 and encoder.config.num_layers == 28
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(encoder)))
  assert 7.7e9 < n < 7.8e9     # Qwen2.5-VL-7B (8.29B) without its 0.545B lm_head
  wan = frozen.load("wan_vae", absent, weights=False, published_if_missing=True)
  assert (wan.config.z_dim, wan.config.temporal_factor, wan.config.spatial_factor) == (16, 4, 8)
  with pytest.raises(ValueError, match="weights need a path"):
    frozen.load("wan_vae", "", weights=True)
  with open(tmp_path / "converted.json", "w") as f:
    json.dump({"kind": "wan_vae", "module_config": {}}, f)
  with pytest.raises(ValueError, match="holds a wan_vae conversion, not qwen2_5_vl"):
    frozen.load("qwen2_5_vl", str(tmp_path), weights=False)
  assert isinstance(FrozenTextEncoder(encoder).params, nnx.State)


def test_a_template_longer_than_max_length_is_an_error(converted):
  tok = qwen_prompt.QwenPromptTokenizer(str(converted / "qwen" / "tokenizer"), max_length=96)
  with pytest.raises(ValueError, match="max_length=96 leaves no room for the caption"):
    tok("a red circle")
