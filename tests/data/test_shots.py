"""Shots as text: the tagged caption training writes and the sampler's prompts, both ways."""

import pytest

from skyreels_jax.data import shots
from skyreels_jax.models.text import tiny

SHOTS = [dict(start=0.0, end=1.25, text="a red circle", sfx="a low beep"),
         dict(start=1.25, end=2.0, text="a blue square")]


def test_tagged_caption_and_parse_tags_are_inverse():
  text = shots.tagged_caption("<text>a film</text>", SHOTS)
  assert text == ("<text>a film</text>"
                  "<shot start=0.00 end=1.25><text>a red circle</text><sfx>a low beep</sfx>"
                  "</shot><shot start=1.25 end=2.00><text>a blue square</text></shot>")
  assert shots.parse_tags(text) == ("<text>a film</text>", SHOTS)
  assert shots.tagged_caption("<text>a film</text>", None) == "<text>a film</text>"


def test_a_caption_that_only_joins_the_shots_is_left_out():
  joined = shots.global_caption(SHOTS)
  assert joined == ("<text>a red circle, then a blue square</text>"
                    "<sfx>a low beep</sfx>")
  assert shots.tagged_caption(joined, SHOTS) == shots.tagged_caption("", SHOTS)


def test_prompt_text_is_what_training_writes():
  trained = shots.tagged_caption(shots.global_caption(SHOTS), SHOTS)
  assert shots.prompt_text("", SHOTS, 2.0) == trained
  # tags typed by hand: times and spacing canonicalised
  typed = ("<shot start=0 end=1.25> a red circle <sfx>a low beep</sfx></shot>"
           "<shot  start=1.25 end=2>a blue square</shot>")
  assert shots.prompt_text(typed, None, 2.0) == trained
  assert shots.prompt_text("a plain prompt", None, 2.0) == "a plain prompt"
  with pytest.raises(shots.ShotError, match="given twice"):
    shots.prompt_text(typed, SHOTS, 2.0)
  with pytest.raises(shots.ShotError, match="past the clip"):
    shots.prompt_text("", SHOTS, 1.5)
  with pytest.raises(shots.ShotError, match="malformed"):
    shots.prompt_text("<shot start=0>x</shot>", None, 2.0)


def test_clip_shots_moves_spans_onto_the_clip():
  on_clip = shots.clip_shots(SHOTS, 1.0, 3.0)
  assert [(s["start"], s["end"], s["text"]) for s in on_clip] == [
      (0.0, 0.25, "a red circle"), (0.25, 1.0, "a blue square")]
  assert shots.clip_shots(SHOTS, 1.25, 2.0) == [dict(SHOTS[1], start=0.0, end=0.75)]


def test_tiny_tokenizer_reads_shot_times_as_words():
  words = tiny._WORD.findall(shots.tagged_caption("", SHOTS[:1]).lower())
  assert words[:6] == ["<shot", "start", "0", "00", "end", "1"]
  assert words[-1] == "</shot>"


def test_every_caption_field_of_a_shot_travels_in_spec_order():
  shot = dict(start=0.0, end=1.0, bgm="piano", dialogue="hello there", text="a man waves",
              extra="dropped")
  text = shots.tagged_caption("", [shot])
  assert text == ("<shot start=0.00 end=1.00><text>a man waves</text>"
                  "<dialogue>hello there</dialogue><bgm>piano</bgm></shot>")
  assert shots.parse_tags(text)[1] == [dict(start=0.0, end=1.0, text="a man waves",
                                            dialogue="hello there", bgm="piano")]
