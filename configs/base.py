"""Base config: every field the code reads, with defaults. Size configs override a few.

Usage: `python -m skyreels_jax.train --config=configs/tiny.py --config.train.steps=100`.
A size file calls `base.get_config()` and changes what differs; nothing else mutates it.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "base"
  c.seed = 0
  # Attention strategy for every attention of the model (see skyreels_jax/models/attention/).
  c.attention = "dot_product"

  # --- The dual-stream MMDiT (SPEC section 1). Both branches share width/heads/depth.
  c.model = ml_collections.ConfigDict()
  c.model.width = 1536
  c.model.num_heads = 12
  c.model.mlp_ratio = 4.0
  c.model.num_dual_blocks = 8
  c.model.num_single_blocks = 16
  c.model.patch_size = 2            # spatial patch on the video latent grid
  c.model.patch_size_t = 1          # temporal patch on the video latent grid
  c.model.audio_patch_size = 1      # audio latent frames per token
  c.model.rope_theta = 256.0        # video 3D RoPE (HunyuanVideo value)
  c.model.rope_axes_dim = (16, 56, 56)  # (t, h, w) split of the head dim; sums to head dim
  c.model.audio_rope_theta = 10000.0  # audio 1D RoPE and the audio<->video cross-attention
  c.model.use_audio = True          # False: video-only model (no audio branch, no A<->V attention)
  c.model.text_cross_attention = True
  # Multi-shot clips (data.shot_captions): in the video's text cross-attention, frames of
  # shot k read only shot k's caption tokens and the global ones (tasks/shots.py).
  c.model.shot_attention = False
  c.model.guidance_embed = False    # distilled-guidance embedding (HunyuanVideo style)
  c.model.text_refiner_layers = 0   # HunyuanVideo's token refiner blocks (2 in its release)
  c.model.dtype = "float32"         # compute dtype: float32 | bfloat16
  c.model.param_dtype = "float32"   # master params
  c.model.remat = "none"            # none | full | save_dots | save_named | offload_named
  c.model.scan_blocks = True
  # attention="vsa" (Video Sparse Attention, the refiner's): video tokens in cubes of
  # vsa_cube (t, h, w) tokens; each query cube attends to its vsa_top_k best key cubes
  # (0: all cubes, i.e. dense).
  c.model.vsa_cube = (4, 4, 4)
  c.model.vsa_top_k = 0
  # VSA's fine stage: auto = the block-sparse Pallas kernel on TPU, the XLA gather elsewhere
  # (xla | pallas force one; pallas runs in interpret mode off TPU).
  c.model.vsa_kernel = "auto"
  # attention="ulysses": the local attention over all tokens of a device's heads. auto =
  # splash on TPU, cuDNN on GPU, blockwise (online softmax, O(S) memory) elsewhere.
  c.model.sp_kernel = "auto"

  # --- Frozen / tiny encoders behind one interface each (SPEC section 2).
  c.text = ml_collections.ConfigDict()
  # tiny: hashed-word embedding, trained with the model; qwen2_5_vl: the frozen MLLM
  c.text.kind = "tiny"
  c.text.vocab_size = 4096          # tiny only
  c.text.max_length = 32            # prompt tokens (longer prompts are truncated)
  c.text.width = 256                # text embedding width fed to both branches
  c.text.path = ""                  # qwen2_5_vl: a `tools.convert --kind=qwen2_5_vl` folder
  c.text.tokenizer_path = ""        # qwen2_5_vl: tokenizer folder ("": path/tokenizer)
  c.text.output_layer = -1          # qwen2_5_vl: which hidden state (-1: the last, normed)

  c.video_ae = ml_collections.ConfigDict()
  c.video_ae.kind = "identity"      # identity: pixel space-to-depth (tiny only)
  c.video_ae.spatial_factor = 4
  c.video_ae.temporal_factor = 1
  c.video_ae.path = ""              # wan: a `tools.convert --kind=wan_vae` folder
  c.video_ae.encode_chunk = 1       # wan: latent frames per causal scan step
  c.video_ae.decode_chunk = 1
  c.video_ae.tile_height = 0        # wan: spatial tile height, pixels; 0 = no tiling
  c.video_ae.tile_width = 0         # wan: spatial tile width, pixels; 0 = no tiling
  c.video_ae.tile_stride_height = 0  # wan: pixels between tile rows; 0 = no tiling
  c.video_ae.tile_stride_width = 0   # wan: pixels between tile columns; 0 = no tiling
  c.video_ae.dtype = "float32"      # wan: weights and compute (bfloat16: half the memory)

  c.audio_ae = ml_collections.ConfigDict()
  c.audio_ae.kind = "identity"      # identity: waveform framing (tiny only)
  c.audio_ae.hop = 320
  c.audio_ae.path = ""              # oobleck: a `tools.convert --kind=oobleck_vae` folder
  c.audio_ae.dtype = "float32"      # oobleck: weights and compute (bfloat16: half the memory)

  # --- Data. Clip geometry is in pixels/samples; latent shapes follow from the autoencoders.
  c.data = ml_collections.ConfigDict()
  c.data.path = ""                  # folder of ArrayRecord shards (data_pipelines.synthetic)
  c.data.height = 32
  c.data.width = 32
  c.data.num_frames = 16
  c.data.fps = 8.0
  # True: a D-second clip has D * fps + 1 frames (frames at 0 .. D; the 1 + 4k frames of a
  # causal 4x video VAE such as Wan) and D * sample_rate audio samples.
  c.data.endpoint_frame = False
  c.data.sample_rate = 16000
  c.data.audio_channels = 1
  c.data.batch_size = 8             # global batch
  # Shape buckets (skyreels_jax/data/buckets.py): (height, width) pairs and durations in
  # seconds; empty = the single geometry above. Records are cut and resized into them.
  c.data.resolutions = ()
  c.data.durations = ()
  # Sampling weight per bucket name ("256x256x32", "image_256x256", "audio_88200"); buckets
  # not named weigh in proportion to their record counts. An empty dict: all by counts.
  c.data.bucket_weights = ml_collections.ConfigDict()
  # "clips" (pixels + waveforms, encoded inside the train step) or "latents" (shards written
  # by data_pipelines.encode_latents with the run's frozen encoders).
  c.data.format = "clips"
  c.data.num_workers = 0            # grain worker processes (0: in-process)
  c.data.read_threads = 2           # grain read threads per bucket (grain.ReadOptions)
  c.data.shuffle = True
  # Task mixture (SPEC section 3); weights are normalised. Every task is listed (weight 0
  # unless set), so --config.data.tasks.NAME=W works on any config (skyreels_jax/tasks/
  # masks.py; inpaint_given / edit_pair / ref_inpaint read the records' masks, sources and
  # references: tasks/given.py).
  c.data.tasks = ml_collections.ConfigDict(dict(
      t2av=1.0, i2v=0.0, extend=0.0, start_end=0.0, inpaint=0.0, inpaint_stroke=0.0,
      inpaint_temporal=0.0, t2v=0.0, t2a=0.0, inpaint_given=0.0, edit_pair=0.0,
      ref_inpaint=0.0))
  # Audio condition masks (SPEC section 3, [ours]): none = regenerate the whole track,
  # a_extend = keep a prefix (continuation), a_inpaint = regenerate one span,
  # a_inpaint_given = the record's audio_mask.
  c.data.audio_tasks = ml_collections.ConfigDict(dict(none=1.0, a_extend=0.0, a_inpaint=0.0,
                                                      a_inpaint_given=0.0))
  # A data-given task drawn for a record without the fields it needs trains as this task
  # instead (counted: the task_fallbacks metric).
  c.data.given_fallback = "inpaint"
  c.data.audio_given_fallback = "a_inpaint"
  # edit_pair's prompt: the record's instruction alone, or "append"ed to its caption.
  c.data.edit_prompt = "instruction"
  # Multi-shot clips (records with `shots`, data/shots.py). shot_captions: the model reads
  # the caption plus one <shot start=.. end=..> tag per shot (False: the plain caption).
  # build_records cuts clips at detected cuts (data_pipelines/cuts.py) so that each holds at most max_shots_per_clip
  # shots and no cut falls within shot_margin_seconds of a clip's edge.
  c.data.shot_captions = False
  c.data.max_shots_per_clip = 3
  c.data.shot_margin_seconds = 0.25
  c.data.cut_threshold = 27.0       # build_records' cut detector (PySceneDetect's); 0: off
  c.data.caption_dropout = 0.1      # share of examples trained with the empty prompt (CFG)
  # Held-out set for validation (train.eval_every): a records folder, or else this share of
  # data.path's source videos (a hash of each record's source path, so every clip of one
  # video falls on one side), never trained on.
  c.data.eval_path = ""
  c.data.eval_fraction = 0.0
  # In-context references (SPEC section 3; skyreels_jax/data/references.py), cut from another
  # clip of the same source video (records' `source`), augmented. Per example one kind:
  c.data.refs = ml_collections.ConfigDict(dict(none=1.0, image=0.0, video=0.0))
  c.data.ref_images = 1             # image references: 1..this many stills
  c.data.ref_video_frames = 5       # video references: a clip of this many frames
  c.data.ref_crop_min = 0.7         # augmentation: random crop of >= this share of each side
  c.data.audio_ref_rate = 0.0       # share of examples given an audio reference
  c.data.audio_ref_seconds = 2.0    # its length

  # --- Flow matching (SPEC section 4): z_t = t*z0 + (1-t)*eps, target z0 - eps.
  c.flow = ml_collections.ConfigDict()
  c.flow.timestep_sampling = "logit_normal"  # uniform | logit_normal
  c.flow.logit_mean = 0.0
  c.flow.logit_std = 1.0
  c.flow.uniform_share = 0.0       # share of times drawn uniformly instead (a mixture)
  c.flow.shift = 1.0                # resolution shift (SD3/Wan); 1.0 = none
  # fixed: flow.shift for every bucket; auto: flow.shift * sqrt(video tokens / base tokens)
  # (diffusion/flow_matching.resolution_shift). sample.shift_mode mirrors it at sampling.
  c.flow.shift_mode = "fixed"
  c.flow.shift_base_tokens = 4096
  # What the network outputs per stream: velocity (z0 - eps; HunyuanVideo, Wan) or data (z0,
  # x-prediction: for pixel-space latents as wide as the model, configs/tiny.py's video).
  c.flow.video_prediction = "velocity"
  c.flow.audio_prediction = "velocity"
  c.flow.video_loss_weight = 1.0
  # model.guidance_embed (HunyuanVideo's guidance-distilled embedding): the scale fed to it in
  # training, uniform in (min, max) per example (equal: fixed); sampling uses
  # sample.embedded_guidance (--embedded_guidance), apart from the CFG scales.
  c.flow.embedded_guidance = (1.0, 1.0)
  c.flow.audio_loss_weight = 1.0

  # --- Optimiser.
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 1000
  c.optim.min_lr_ratio = 0.1        # cosine decays to lr * min_lr_ratio ...
  c.optim.decay_steps = 0           # ... at this step (0: train.steps)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.0
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.999

  # --- Loop.
  c.train = ml_collections.ConfigDict()
  c.train.steps = 100_000
  c.train.log_every = 50
  c.train.checkpoint_every = 1000
  c.train.max_to_keep = 3
  c.train.async_checkpointing = True
  c.train.checkpoint_every_secs = 0.0   # also save when this much wall time passed (0: off)
  c.train.restore_step = -1         # resume from this saved step (-1: the newest that restores)
  # A step whose loss or gradient norm is not finite is not applied (train/state.py); this many
  # in a row stop the run.
  c.train.max_skipped_steps = 20
  c.train.loss_spike_factor = 0.0   # > 1: also skip a step whose loss > factor x running mean
  c.train.loss_spike_window = 100   # steps in that running mean
  c.train.fault_nonfinite_steps = ()  # fault injection: infinite gradients at these steps
  # Validation (train/evaluate.py): every this many steps (0: off) the held-out set
  # (data.eval_path, or the data.eval_fraction hash split of data.path) is scored at these
  # fixed timesteps with fixed noise, per stream, task and timestep (eval_* metrics), at
  # most eval_batches batches per bucket (0: every full batch).
  c.train.eval_every = 0
  c.train.eval_timesteps = (0.1, 0.3, 0.5, 0.7, 0.9)
  c.train.eval_batches = 0
  # Samples during training (train/samples.py): every this many steps (0: off) the EMA
  # weights generate these prompts (strings, or one path to a prompt file with seeds) on
  # the training mesh into WORKDIR/samples/<step>/.
  c.train.sample_every = 0
  c.train.sample_prompts = ("a red circle bounces around a dark room",)
  c.train.sample_num_steps = 0      # solver steps (0: sample.num_steps)
  # A jax.profiler trace of steps a..b (1-based, inclusive) into WORKDIR/profile/ ((0, 0): off).
  c.train.profile_steps = (0, 0)
  # Weights & Biases beside TensorBoard (train/metrics.py): a project name turns it on;
  # "offline" writes WORKDIR/wandb/ with no network (`wandb sync` uploads it later).
  c.train.wandb_project = ""
  c.train.wandb_mode = "online"
  # Start from another run's weights (train/init.py): a run directory; matched by name and
  # shape, the rest keeps its initialisation; step 0, fresh optimizer, schedule and data.
  c.train.init_from = ""
  c.train.init_step = -1            # the source's checkpoint (-1: its newest)
  c.train.init_weights = "ema"      # ema | params
  c.train.init_ignore = ()          # regexes of source weights to leave out
  # LoRA (weights/lora.py): rank > 0 trains adapters of the kernels `targets` names on the
  # frozen weights of train.init_from (re-read from init_report.json on every resume and
  # at sampling); only the adapters and their EMA are in the optimizer and the checkpoints.
  c.train.lora = ml_collections.ConfigDict()
  c.train.lora.rank = 0
  c.train.lora.alpha = 0.0          # scale alpha / rank (0: alpha = rank)
  # The video branch's attention and MLP projections (dual and single blocks).
  c.train.lora.targets = (
      r"^mmdit/(dual|single)_layers/video/(attn/(x_qkv|ctx_qkv)/\w+|attn/to_(add_)?out|"
      r"ff(_context)?/fc[12]|qkv/to_[qkv]|proj_mlp|proj_out)/kernel$",)
  c.train.lora.base_dtype = "float32"   # float32 | bfloat16: the frozen base's dtype

  # --- Sampling defaults (CLI flags override).
  c.sample = ml_collections.ConfigDict()
  c.sample.num_steps = 30
  c.sample.solver = "euler"
  c.sample.shift = 1.0
  c.sample.shift_mode = "fixed"     # auto: sample.shift scaled like flow.shift_mode=auto
  c.sample.video_guidance = 5.0
  c.sample.audio_guidance = 4.0
  c.sample.embedded_guidance = 6.0  # model.guidance_embed only (HunyuanVideo's default)
  c.sample.batch_size = 1

  # --- Mesh (SPEC / STYLE: axes data, fsdp, sequence, tensor; -1 fills the rest).
  # Multi-slice (hybrid ICI/DCN): data..tensor are sizes within a slice, dcn_* the number of
  # slices along each axis; e.g. dcn_data=2 is data parallelism across two pod slices.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, sequence=1, tensor=1,
                                          dcn_data=1, dcn_fsdp=1, dcn_sequence=1,
                                          dcn_tensor=1))
  # Logical axis -> mesh axis rules. Data, not code: nothing rewrites them.
  # The weights' width shards over fsdp x sequence (MaxText's layout): a sequence-parallel
  # group gathers one layer at a time anyway, and this keeps the state from being
  # replicated `mesh.sequence` times (hv13b with sequence 4: 34 -> 9 GB per chip).
  c.logical_axis_rules = (
      ("batch", ("data", "fsdp")),
      ("embed", ("fsdp", "sequence")),
      ("heads", "tensor"),
      ("kv", None),
      ("mlp", "tensor"),
      ("adaln", "tensor"),
      ("vocab", None),
      ("patch", None),
      ("layers", None),
      ("norm", None),
      ("video_seq", "sequence"),
      ("audio_seq", "sequence"),
      ("text_seq", None),
  )

  # --- Cascade refiner (SPEC section 5 step 2; skyreels_jax/tasks/refiner.py): the same
  # MMDiT trained on super-resolution + frame interpolation. Enabled, the data clips are the
  # HIGH-res targets (data.height/width/num_frames/fps are the refiner's output geometry);
  # the low-res input is derived from them.
  c.refiner = ml_collections.ConfigDict()
  c.refiner.enabled = False
  c.refiner.scale = 2               # spatial factor low-res -> target (pixels and latents)
  c.refiner.time_scale = 2          # frame-rate factor (16 -> 32 fps): the low-res clip has
                                    # every time_scale-th target frame
  c.refiner.num_keyframes = 2       # high-res stills given as their own tokens (the base's
                                    # keyframes), drawn at random frames in training; must
                                    # equal the base run's keyframes.count
  # Noise augmentation of the low-res condition, (1 - n) z_low + n eps: keeps the refiner from
  # copying the base model's low-res artefacts; sampling must use the same n.
  c.refiner.noise_low = 0.0
  # The cheaper cascade (SDEdit-style, tasks/refiner.start_path): sampling starts at t =
  # start_t from the upsampled base output partly noised and integrates start_t..1 with
  # sample.num_steps steps; training draws t in [start_t, 1] on the matching path. 0: from
  # pure noise.
  c.refiner.start_t = 0.0

  # --- Cascade base (SPEC section 5 step 1; skyreels_jax/tasks/keyframes.py): with count > 0
  # the model generates the clip at LOW resolution (data size / scale, every frame) plus
  # high-res KEYFRAMES as extra video tokens. The data clips are the high-res ones.
  c.keyframes = ml_collections.ConfigDict()
  c.keyframes.count = 0             # keyframes per clip, spread evenly (0: no keyframes)
  c.keyframes.frames = ()           # or these pixel frame indices
  c.keyframes.scale = 2             # high-res / low-res spatial factor
  c.keyframes.loss_weight = 1.0
  return c


def large_scale_media(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Encoders and media of the small / hv13b configs (SPEC section 2): the frozen Wan-2.1
  video VAE (8x8 spatial, 4x temporal, 16 channels; clips of 1 + 16 D frames), Stable Audio
  Open's Oobleck VAE (44.1 kHz stereo, 2048-sample hop: 21.5 latents/s) and Qwen2.5-VL-7B
  (3584-wide hidden states), from folders written once by `python -m
  skyreels_jax.tools.convert` (README, "Frozen encoders"). Without those folders, training
  and sampling stop with a config error naming the path; the planning tools (aot, memory,
  max_sequence) use the published architectures.
  """
  c.text.kind = "qwen2_5_vl"
  c.text.path = "ckpt/qwen2_5_vl"
  c.text.width = 3584
  c.text.max_length = 256
  c.video_ae.kind = "wan"
  c.video_ae.path = "ckpt/wan_vae"
  c.audio_ae.kind = "oobleck"
  c.audio_ae.path = "ckpt/oobleck_vae"
  c.data.endpoint_frame = True
  c.data.fps = 16.0
  c.data.sample_rate = 44100
  c.data.audio_channels = 2
  c.model.rope_axes_dim = (16, 56, 56)
  c.model.dtype = "bfloat16"
  c.mesh.data, c.mesh.fsdp = 1, -1
  return c
