"""Shared pieces of the benchmarks: the real de-en data, tokenisation.

Checkpoints are the package's core format (padir_t5x/core/checkpoints.py: params.npz + config.json +
vocab.model, read with numpy alone), the same that the quickstart writes and
`python -m padir_t5x.translate` reads.
"""

from __future__ import annotations

import os

import numpy as np

from padir_t5x import EOS_ID
from padir_t5x.data import textio
from padir_t5x import vocab


def read_lines(path: str, limit: int | None = None) -> list[str]:
  """Lines of a UTF-8 file, split on '\n' only (textio.iter_text_lines).

  str.splitlines() would also split on U+0085 and U+2028, which occur inside sentences of
  ../shared/data (de-en train.de line 33878): the two sides of a corpus would fall out of line.
  """
  lines = []
  for _, line in textio.iter_text_lines(path, allow_empty_lines=True):
    if limit is not None and len(lines) >= limit:
      break
    lines.append(line)
  return lines


# ------------------------------------------------------------------------------------------------
# Token ids <-> text.
ids_to_text = vocab.ids_to_text  # re-exported for the commands


def encode_lines(processor, lines: list[str]) -> list[list[int]]:
  """Token ids of each line, EOS appended."""
  return [ids + [EOS_ID] for ids in processor.encode(lines)]


def pad_rows(sequences: list[list[int]], length: int) -> np.ndarray:
  """Right-pads (already EOS-terminated) id lists to int32 [n, length]; raises if one is longer."""
  out = np.zeros((len(sequences), length), np.int32)
  for row, ids in enumerate(sequences):
    if len(ids) > length:
      raise ValueError(f"row {row} has {len(ids)} ids, more than {length}")
    out[row, : len(ids)] = ids
  return out


def load_dev_set(
    data_dir: str,
    processor,
    num_sentences: int,
    max_length: int,
    split: str = "dev",
    source: str = "de",
    target: str = "en",
):
  """The first `num_sentences` dev pairs whose source and reference fit in `max_length` ids.

  Why filtered, not truncated: a truncated source has no correct translation, which would
  blur the comparison; the filter is stated in every report (it favours shorter sentences).

  Returns:
    (sources [n] str, references [n] str, source ids int32 [n, max_length], kept line indices).
  """
  pair = (
      f"{source}-{target}"
      if os.path.isdir(os.path.join(data_dir, f"{source}-{target}"))
      else f"{target}-{source}"
  )
  src_lines = read_lines(os.path.join(data_dir, pair, f"{split}.{source}"))
  ref_lines = read_lines(os.path.join(data_dir, pair, f"{split}.{target}"))
  src_ids = encode_lines(processor, src_lines)
  ref_ids = encode_lines(processor, ref_lines)
  keep = [
      i
      for i in range(len(src_lines))
      if len(src_ids[i]) <= max_length and len(ref_ids[i]) <= max_length
  ][:num_sentences]
  return (
      [src_lines[i] for i in keep],
      [ref_lines[i] for i in keep],
      pad_rows([src_ids[i] for i in keep], max_length),
      keep,
  )
