"""Loader throughput: our grain pipeline vs a plain ArrayRecord read of the same shards.

The peer reads every record's bytes with `ArrayRecordReader.read` in order: the floor any
loader pays (disk + ArrayRecord). Ours is the training pipeline (`make_iterator`): global
shuffle, per-process blocks, record decode and validation, preprocessing to model inputs
(uint8 -> float32 in [-1, 1], audio channels), tokenising, batching, and optionally worker
processes. Both report examples/s and MB/s of record bytes; the ratio is ours / peer time per
example (< 1 is faster). Synthetic clips (data_pipelines/synthetic.py) at a configurable
geometry are written to a temporary folder first.

  python benchmarks/loader.py                       # 256 clips of 64x64, 16 frames, < 1 min
  python benchmarks/loader.py --height 256 --width 256 --frames 32 --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--clips", type=int, default=256)
  p.add_argument("--height", type=int, default=64)
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--frames", type=int, default=16)
  p.add_argument("--fps", type=float, default=8.0)
  p.add_argument("--sample_rate", type=int, default=16000)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--workers", type=int, default=0, help="grain worker processes")
  p.add_argument("--repeats", type=int, default=3, help="timed passes over the data (best)")
  return p.parse_args(argv)


def peer_read(shards: list[str]) -> tuple[int, int, float]:
  """(records, bytes, seconds) of reading every record of `shards` in order."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  n = nbytes = 0
  for path in shards:
    reader = array_record_module.ArrayRecordReader(path)
    total = reader.num_records()
    for start in range(0, total, 64):
      for rec in reader.read(list(range(start, min(total, start + 64)))):
        n += 1
        nbytes += len(rec)
    reader.close()
  return n, nbytes, time.perf_counter() - t0


def ours_read(data_config, tokenizer, num_examples: int, batch: int) -> float:
  """Seconds for `num_examples` examples (whole batches) from a fresh training iterator,
  after its first batch (start-up, worker spawn) is taken untimed."""
  from skyreels_jax.data import loader  # pylint: disable=g-import-not-at-top
  it = loader.make_iterator(data_config, tokenizer=tokenizer, global_batch_size=batch, seed=0)
  next(it)
  t0 = time.perf_counter()
  for _ in range(num_examples // batch):
    next(it)
  seconds = time.perf_counter() - t0
  it.close()
  return seconds


def main(argv=None):
  args = parse_args(argv)
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from data_pipelines import synthetic  # pylint: disable=g-import-not-at-top
  from skyreels_jax.data import loader  # pylint: disable=g-import-not-at-top
  from skyreels_jax.tasks.examples import make_codecs  # pylint: disable=g-import-not-at-top

  config = tiny.get_config()
  d = config.data
  d.height, d.width, d.num_frames, d.fps = args.height, args.width, args.frames, args.fps
  d.sample_rate, d.num_workers, d.batch_size = args.sample_rate, args.workers, args.batch
  _, tokenizer = make_codecs(config)
  with tempfile.TemporaryDirectory() as tmp:
    synthetic.write_dataset(tmp, num_clips=args.clips, seed=0, clips_per_shard=64,
                            **synthetic.geometry_from_config(d))
    d.path = tmp
    shards = loader.find_shards(tmp)
    peer = min((peer_read(shards) for _ in range(args.repeats)), key=lambda r: r[2])
    n, nbytes, peer_s = peer
    usable = (n // args.batch) * args.batch
    ours_s = min(ours_read(d, tokenizer, usable, args.batch) for _ in range(args.repeats))
  mb = nbytes / n / 1e6
  peer_rate, ours_rate = n / peer_s, usable / ours_s
  print(f"clips: {n} of {args.height}x{args.width}x{args.frames} + audio, "
        f"{mb:.3f} MB per record; batch {args.batch}, workers {args.workers}; "
        f"load average {os.getloadavg()[0]:.1f}")
  print(f"peer (ArrayRecord read): {peer_rate:9.1f} examples/s  {peer_rate * mb:8.1f} MB/s")
  print(f"ours (training loader):  {ours_rate:9.1f} examples/s  {ours_rate * mb:8.1f} MB/s")
  print(f"ratio ours/peer (time per example; < 1 is faster): {peer_rate / ours_rate:.2f}")


if __name__ == "__main__":
  main()
