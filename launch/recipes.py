"""Training recipes as command-line overrides, shared by the demo, the benchmarks and the
tests (a module without absl flags, so that anything can import it)."""

# The demo's recipe over configs/tiny.py, chosen from measurements (README "Demo"): the video
# stream predicts the clean clip (x-prediction: pixel-space tokens as wide as the model; with
# the velocity the samples stay speckled), trained at noisier times (logit-normal around
# sigma = 0.69); the audio keeps the velocity (its data estimate of a random-phase tone is
# silence).
DEMO = ("--config.flow.video_prediction=data", "--config.flow.logit_mean=0.8",
        "--config.flow.logit_std=0.8")

# The demo's budget: batch 2 for 2000 steps (launch/demo.py's --steps) trains in ~18% more
# time than batch 8 for 500, and right colours rise from ~0.6 to ~0.95 of frames (README
# "Demo": a tiny model learns more from more, smaller steps).
DEMO_BATCH = ("--config.data.batch_size=2",)

# Multi-shot training (data/shots.py): shot tags in the caption, the shot-aware
# cross-attention, two shots per clip, a text length that holds both tags.
SHOTS = ("--config.data.shot_captions=True", "--config.model.shot_attention=True",
         "--config.data.max_shots_per_clip=2", "--config.text.max_length=64")
