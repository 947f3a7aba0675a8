"""The equal-budget trainer's data (benchmarks/train_budget.py): encoded training pairs and
endless shuffled batches, each from one length bucket.

A bucket is (padded length, batch size); a few shapes mean a few compilations, instead of padding
every short sentence to the longest. The batch order is a pure function of the seed, so that a
resumed run replays it to the same batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from benchmarks import common
from padir_t5x.data import textio

# (padded length, batch size): about 2k target tokens per batch in each bucket; two shapes,
# so two compilations, instead of padding every short Multi30k/Tatoeba sentence to 80.
DEFAULT_BUCKETS = ((32, 64), (80, 24))


def buckets_for(max_length: int) -> tuple[tuple[int, int], ...]:
  """DEFAULT_BUCKETS up to `max_length`, closed by a bucket of exactly `max_length` (about 2k
  target tokens a batch) when none ends there: every pair that fits in max_length has a bucket
  and no bucket is longer than the network's position tables."""
  kept = tuple(bucket for bucket in DEFAULT_BUCKETS if bucket[0] <= max_length)
  if not kept or kept[-1][0] < max_length:
    kept += ((max_length, max(1, 1920 // max_length)),)
  return kept


def bucket_batches(
    inputs: list[list[int]], targets: list[list[int]], buckets=DEFAULT_BUCKETS, seed: int = 0
) -> Iterator[dict]:
  """Endless shuffled batches, each from one length bucket (padded to the bucket length).

  A pair goes to the first bucket that holds both sides; pairs longer than the last bucket are
  dropped by the caller. Buckets are drawn in proportion to their number of full batches, so
  every pair is seen about equally often.

  Yields: {'encoder_input_tokens': int32 [B, L], 'decoder_target_tokens': int32 [B, L]}.
  """
  rng = np.random.default_rng(seed)
  members = [[] for _ in buckets]
  for i, (x, y) in enumerate(zip(inputs, targets)):
    longest = max(len(x), len(y))
    for b, (length, _) in enumerate(buckets):
      if longest <= length:
        members[b].append(i)
        break
  weights = np.array([len(m) / size for m, (_, size) in zip(members, buckets)], np.float64)
  usable = weights >= 1
  if not usable.any():
    raise ValueError("no bucket has a full batch of training pairs")
  weights = np.where(usable, weights, 0.0)
  weights /= weights.sum()
  orders = [rng.permutation(m) for m in members]
  cursors = [0] * len(buckets)
  while True:
    b = int(rng.choice(len(buckets), p=weights))
    length, size = buckets[b]
    if cursors[b] + size > len(orders[b]):
      orders[b], cursors[b] = rng.permutation(members[b]), 0
    rows = orders[b][cursors[b] : cursors[b] + size]
    cursors[b] += size
    yield {
        "encoder_input_tokens": common.pad_rows([inputs[i] for i in rows], length),
        "decoder_target_tokens": common.pad_rows([targets[i] for i in rows], length),
    }


def load_training_pairs(data_dir: str, processor, max_length: int, pair: str = "de-en"):
  """Encoded train pairs (EOS appended) with both sides <= max_length ids."""
  src, tgt = pair.split("-")
  # Validated pairs: a line-count mismatch fails with the file names instead of zip() truncating.
  pairs = textio.read_parallel_files(
      os.path.join(data_dir, pair, f"train.{src}"), os.path.join(data_dir, pair, f"train.{tgt}")
  )
  xs = common.encode_lines(processor, [source for source, _ in pairs])
  ys = common.encode_lines(processor, [target for _, target in pairs])
  kept = [(x, y) for x, y in zip(xs, ys) if 1 < len(x) <= max_length and 1 < len(y) <= max_length]
  return [x for x, _ in kept], [y for _, y in kept], len(xs)
