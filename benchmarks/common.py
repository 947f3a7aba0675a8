"""Shared pieces of the benchmarks: checkpoints, the real de-en data, tokenisation.

A checkpoint is a directory with
  params.npz    every parameter leaf, keyed by its '/'-joined path in the params tree;
  config.json   {"kind": "padir" | "ar", "transformer": TransformerConfig fields,
                 "vocab_model": path of the SentencePiece model, "vocab_high": real vocab size,
                 "train": free-form training record};
so the benchmark loads it with numpy alone (no t5x, no orbax).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from padir_t5x import EOS_ID
from padir_t5x import network
from padir_t5x import textio
from padir_t5x import vocab

KINDS = ("padir", "ar")


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
# Checkpoints.
def _flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if hasattr(value, "items"):
      flat.update(_flatten(value, path))
    else:
      flat[path] = np.asarray(value)
  return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def save_checkpoint(
    directory: str,
    params: Any,
    config: network.TransformerConfig,
    kind: str,
    vocab_model: str | None = None,
    vocab_high: int | None = None,
    train_record: dict | None = None,
) -> None:
  """Writes params.npz and config.json under `directory` (created)."""
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  expected = "padir" if kind == "padir" else "autoregressive"
  if config.decoder_mode != expected:
    raise ValueError(
        f"kind {kind!r} needs decoder_mode {expected!r}, got " f"{config.decoder_mode!r}"
    )
  os.makedirs(directory, exist_ok=True)
  np.savez(os.path.join(directory, "params.npz"), **_flatten(params))
  meta = {
      "kind": kind,
      "transformer": dataclasses.asdict(config),
      "vocab_model": vocab_model,
      "vocab_high": vocab_high,
      "train": train_record or {},
  }
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)


def load_checkpoint(directory: str) -> tuple[network.Transformer, dict, dict]:
  """Returns (module, params as a nested dict of numpy arrays, the config.json dict)."""
  with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
    meta = json.load(f)
  config = network.TransformerConfig(**meta["transformer"])
  with np.load(os.path.join(directory, "params.npz")) as data:
    params = _unflatten({k: data[k] for k in data.files})
  return network.Transformer(config), params, meta


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
