"""train.sample_prompts: captions, or one prompt file; a mistyped path is an error, not a
caption the run would sample for hours."""

import pytest

from configs import tiny
from skyreels_jax.config import ConfigError
from skyreels_jax.train.samples import prompts_of


def _config(*prompts):
  c = tiny.get_config()
  c.train.sample_prompts = prompts
  return c


def test_captions_and_a_prompt_file(tmp_path):
  rows = prompts_of(_config("a red circle", "a blue square"))
  assert [r["prompt"] for r in rows] == ["a red circle", "a blue square"]
  assert [r["seed"] for r in rows] == [0, 1]
  f = tmp_path / "prompts.txt"
  f.write_text('a green triangle\n{"prompt": "a red square", "seed": 7}\n')
  rows = prompts_of(_config(str(f)))
  assert [(r["prompt"], r["seed"]) for r in rows] == [("a green triangle", 0),
                                                      ("a red square", 7)]


@pytest.mark.parametrize("name", ["missing/prompts.txt", "prompts.jsonl", "/abs/prompts"])
def test_a_missing_prompt_file_is_a_config_error(tmp_path, name):
  with pytest.raises(ConfigError, match=r"train\.sample_prompts.*no such prompt file"):
    prompts_of(_config(name))


def test_an_empty_or_bad_prompt_file_names_the_field(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n")
  with pytest.raises(ConfigError, match=r"train\.sample_prompts.*no prompts"):
    prompts_of(_config(str(empty)))
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"seed": 3}\n')
  with pytest.raises(ConfigError, match=r"train\.sample_prompts.*line 1"):
    prompts_of(_config(str(bad)))
