"""Text and shard I/O for translation corpora, without TensorFlow.

* Line-aligned text files (`train.de` / `train.en`): validated reading with errors that name the
  file and the 1-based line.
* The distilled-corpus format: JSON-lines shards `{split}.jsonl-00000-of-00004`, one object
  {"index": i, "source": ..., "target": ...} per line. JSON escapes tabs and newlines, so any
  sentence round-trips, and `index` (0, 1, 2, ... across the shards in shard order) lets the
  reader check that nothing was lost or reordered.

Lines are split on '\\n' only (a trailing '\\r' is dropped), exactly like
tf.data.TextLineDataset, so that the validated line count equals the dataset's length; Python's
str.splitlines() would also split on form feeds and U+2028, which occur in web-crawled text.

This module imports no TensorFlow (tests/test_imports.py checks it), so the EM pipeline, the
vocabulary builder and the benchmarks read corpora without loading it; the tf.data datasets over
the same files are in padir_t5x.data.pipelines.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import BinaryIO


class CorpusFileError(ValueError):
  """A corpus file is unusable; the message names the file (and line where there is one)."""


class MissingCorpusFileError(CorpusFileError, FileNotFoundError):
  """A corpus file does not exist (also a FileNotFoundError)."""


# ---------------------------------------------------------------------------------------------
# Line-aligned text files.
def write_atomically(path: str, data: bytes) -> None:
  """Writes `data` to a temporary file beside `path`, then renames it: all or nothing."""
  directory = os.path.dirname(os.path.abspath(path))
  tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text_lines(path: str, lines: Sequence[str]) -> None:
  """Writes one line per string, '\n'-terminated UTF-8, atomically (`write_atomically`).

  Raises:
    ValueError: a line holds '\n' or '\r' (it would not read back as one line), naming it.
  """
  for number, line in enumerate(lines, start=1):
    if "\n" in line or "\r" in line:
      raise ValueError(f"{path}: line {number} contains a line break")
  write_atomically(path, "".join(line + "\n" for line in lines).encode("utf-8"))


def iter_text_lines(path: str, allow_empty_lines: bool = False) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, line without its newline) from a UTF-8 text file.

  Raises:
    MissingCorpusFileError: the file does not exist.
    CorpusFileError: invalid UTF-8, or an empty (or whitespace-only) line when
      `allow_empty_lines` is False.
  """
  if not os.path.isfile(path):
    raise MissingCorpusFileError(f"corpus file not found: {path}")
  with open(path, "rb") as f:
    yield from iter_stream_lines(f, path, allow_empty_lines)


def iter_stream_lines(
    stream: BinaryIO, name: str, allow_empty_lines: bool = False
) -> Iterator[tuple[int, str]]:
  """`iter_text_lines` over an open binary stream (e.g. sys.stdin.buffer); errors name `name`."""
  for number, raw in enumerate(stream, start=1):
    if raw.endswith(b"\n"):
      raw = raw[:-1]
    if raw.endswith(b"\r"):
      raw = raw[:-1]
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      raise CorpusFileError(
          f"{name}: line {number} is not valid UTF-8 (byte {e.start}: {e.reason})"
      ) from None
    if not allow_empty_lines and not line.strip():
      raise CorpusFileError(f"{name}: line {number} is empty")
    yield number, line


def count_lines(path: str, allow_empty_lines: bool = False) -> int:
  """Validates a text file (see `iter_text_lines`) and returns its number of lines."""
  count = 0
  for count, _ in iter_text_lines(path, allow_empty_lines):
    pass
  return count


def validate_parallel_files(
    source_path: str, target_path: str, allow_empty_lines: bool = False
) -> int:
  """Checks that two files are readable, non-empty, valid UTF-8 and line-aligned.

  Returns:
    The common number of lines.
  Raises:
    CorpusFileError (a ValueError) naming the file and line of the first problem.
  """
  counts = []
  for path in (source_path, target_path):
    count = count_lines(path, allow_empty_lines)
    if count == 0:
      raise CorpusFileError(f"corpus file is empty: {path}")
    counts.append(count)
  if counts[0] != counts[1]:
    shorter = source_path if counts[0] < counts[1] else target_path
    raise CorpusFileError(
        f"line counts differ: {source_path} has {counts[0]} lines, {target_path} has "
        f"{counts[1]}; {shorter} ends at line {min(counts)} while the other file has a "
        f"line {min(counts) + 1}"
    )
  return counts[0]


def read_parallel_files(
    source_path: str, target_path: str, allow_empty_lines: bool = False
) -> list[tuple[str, str]]:
  """Reads two line-aligned files into [(source, target), ...] after validating them.

  Tabs inside sentences are kept as they are.
  """
  validate_parallel_files(source_path, target_path, allow_empty_lines)
  sources = [line for _, line in iter_text_lines(source_path, allow_empty_lines)]
  targets = [line for _, line in iter_text_lines(target_path, allow_empty_lines)]
  return list(zip(sources, targets))


# ---------------------------------------------------------------------------------------------
# Distilled corpora: sharded JSON lines.
_SHARD_RE = re.compile(r"^(?P<split>.+)\.jsonl-(?P<shard>\d{5})-of-(?P<total>\d{5})$")


def distilled_shard_name(split: str, shard: int, num_shards: int) -> str:
  """'{split}.jsonl-{shard:05d}-of-{num_shards:05d}', e.g. 'train.jsonl-00000-of-00004'."""
  return f"{split}.jsonl-{shard:05d}-of-{num_shards:05d}"


def write_distilled_shards(
    directory: str, split: str, pairs: Sequence[tuple[str, str]], num_shards: int = 4
) -> list[str]:
  """Writes (source, target) pairs as `num_shards` JSON-lines shards, preserving order.

  Pair i gets "index": i; shard k holds a contiguous block, so shard order = corpus order.
  Each shard is written to a temporary file and renamed, so readers never see partial shards;
  shards of the same split with a different shard count are then removed.

  Returns:
    The shard paths, in order.
  """
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}")
  pairs = list(pairs)
  os.makedirs(directory, exist_ok=True)
  per_shard = -(-len(pairs) // num_shards) if pairs else 0
  paths = []
  for shard in range(num_shards):
    path = os.path.join(directory, distilled_shard_name(split, shard, num_shards))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
      for index in range(shard * per_shard, min(len(pairs), (shard + 1) * per_shard)):
        source, target = pairs[index]
        if not isinstance(source, str) or not isinstance(target, str):
          raise TypeError(f"pair {index} is not two strings: {pairs[index]!r}")
        # ensure_ascii=False keeps the shards readable; json still escapes \t and \n.
        f.write(
            json.dumps({"index": index, "source": source, "target": target}, ensure_ascii=False)
            + "\n"
        )
    os.replace(tmp, path)
    paths.append(path)
  for stale in _shard_paths(directory, split):
    if stale not in paths:
      os.remove(stale)
  return paths


def _shard_paths(directory: str, split: str) -> list[str]:
  found = []
  for path in glob.glob(os.path.join(glob.escape(directory), f"{glob.escape(split)}.jsonl-*")):
    match = _SHARD_RE.match(os.path.basename(path))
    if match and match.group("split") == split:
      found.append(path)
  return sorted(found)


def distilled_shard_paths(directory: str, split: str) -> list[str]:
  """The complete, ordered shard list of a split; CorpusFileError if absent or incomplete."""
  paths = _shard_paths(directory, split)
  if not paths:
    raise MissingCorpusFileError(
        f"no distilled shards '{split}.jsonl-NNNNN-of-NNNNN' in {directory}"
    )
  totals = {int(_SHARD_RE.match(os.path.basename(p)).group("total")) for p in paths}
  if len(totals) != 1:
    raise CorpusFileError(
        f"{directory}: shards of '{split}' disagree on the shard count "
        f"({sorted(totals)}); remove the stale ones"
    )
  total = totals.pop()
  expected = [os.path.join(directory, distilled_shard_name(split, k, total)) for k in range(total)]
  missing = sorted(set(expected) - set(paths))
  if missing:
    raise MissingCorpusFileError(f"missing distilled shard(s): {', '.join(missing)}")
  return expected


def iter_distilled_shards(directory: str, split: str) -> Iterator[tuple[int, str, str]]:
  """Yields (index, source, target) from a split's shards, validating as it goes.

  Raises:
    CorpusFileError naming the shard file and 1-based line for invalid UTF-8 or JSON, missing
    or non-string fields, or an index that is not the next one in order.
  """
  expected_index = 0
  for path in distilled_shard_paths(directory, split):
    for number, line in iter_text_lines(path, allow_empty_lines=False):
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise CorpusFileError(f"{path}: line {number} is not valid JSON ({e})") from None
      if not isinstance(record, dict):
        raise CorpusFileError(f"{path}: line {number} is not a JSON object")
      for field, kind in (("index", int), ("source", str), ("target", str)):
        if not isinstance(record.get(field), kind) or isinstance(record.get(field), bool):
          raise CorpusFileError(
              f"{path}: line {number}: field '{field}' missing or not " f"a {kind.__name__}"
          )
      if record["index"] != expected_index:
        raise CorpusFileError(
            f"{path}: line {number}: index {record['index']}, expected "
            f"{expected_index} (shards out of order or incomplete?)"
        )
      expected_index += 1
      yield record["index"], record["source"], record["target"]


def read_distilled_shards(directory: str, split: str) -> list[tuple[str, str]]:
  """[(source, target), ...] of a distilled split, in index order."""
  return [(source, target) for _, source, target in iter_distilled_shards(directory, split)]
