"""model.guidance_embed (HunyuanVideo's guidance-distilled embedding): trained with scales drawn
from flow.embedded_guidance, sampled with sample.embedded_guidance / --embedded_guidance,
which changes the output without recompiling and is apart from the CFG scales."""

import numpy as np
import pytest

from conftest import small_run_config
from skyreels_jax.config import ConfigError, validate
from skyreels_jax.sample.sampler import Sampler
from skyreels_jax.train.trainer import train


def test_trains_and_samples_with_the_embedded_scale(synthetic_data, tmp_path):
  config = small_run_config(synthetic_data, **{"train.steps": 6, "optim.decay_steps": 6})
  config.model.guidance_embed = True
  config.flow.embedded_guidance = (1.0, 8.0)
  # AdaLN-Zero: the conditioning vector acts once the zero-initialised modulations and
  # output projections have moved (a few steps); sample the weights themselves.
  config.optim.lr, config.optim.ema_decay = 3e-3, 0.0
  result = train(config, str(tmp_path))     # the embedder raises without a scale
  assert result["step"] == 6 and np.isfinite(result["loss"])
  sampler = Sampler(str(tmp_path))
  prompts = ["a red circle"]
  low = sampler.generate(prompts, settings=sampler.settings(embedded_guidance=1.0))
  high = sampler.generate(prompts, settings=sampler.settings(embedded_guidance=8.0))
  again = sampler.generate(prompts, settings=sampler.settings(embedded_guidance=1.0))
  assert np.abs(low["video_latent"] - high["video_latent"]).max() > 1e-4
  np.testing.assert_array_equal(low["video_latent"], again["video_latent"])
  assert sampler._fn._cache_size() == 1       # a traced scalar: one program


def test_bad_scales_name_the_field():
  config = small_run_config()
  config.flow.embedded_guidance = (4.0, 1.0)
  with pytest.raises(ConfigError, match="flow.embedded_guidance"):
    validate(config)
  config = small_run_config()
  config.sample.embedded_guidance = -1.0
  with pytest.raises(ConfigError, match="sample.embedded_guidance"):
    validate(config)
