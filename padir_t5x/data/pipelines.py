"""tf.data and SeqIO pieces for translation tasks, without t5x.

* A tf.data dataset of {'inputs', 'targets'} strings over two line-aligned text files, and one
  over distilled JSON-lines shards.
* seqio preprocessors that turn TFDS translation examples ({'de': ..., 'en': ...}) into
  {'inputs', 'targets'}, and one that counts and logs the examples too long for their feature
  length (`count_truncated`), which seqio would cut silently.

The files themselves are read and validated by padir_t5x.data.textio, which needs no TensorFlow:
callers that only read text import it, not this module.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from typing import Any

import tensorflow as tf
from absl import logging

from padir_t5x.data import textio


# ---------------------------------------------------------------------------------------------
# Datasets over corpus files.
def parallel_text_dataset(
    source_path: str, target_path: str, validate: bool = True
) -> tf.data.Dataset:
  """tf.data dataset of {'inputs': tf.string [], 'targets': tf.string []} from two files.

  Streams the files (TextLineDataset), so corpora larger than memory work. With `validate`,
  the files are checked first (a full read); pass False when they were validated already.
  """
  if validate:
    textio.validate_parallel_files(source_path, target_path)
  sources = tf.data.TextLineDataset(source_path)
  targets = tf.data.TextLineDataset(target_path)
  return tf.data.Dataset.zip((sources, targets)).map(
      lambda s, t: {"inputs": s, "targets": t}, num_parallel_calls=tf.data.AUTOTUNE
  )


def distilled_dataset(directory: str, split: str) -> tf.data.Dataset:
  """tf.data dataset of {'inputs': tf.string [], 'targets': tf.string []} from JSON shards.

  The shard list is checked eagerly (missing shards fail here); records are parsed and
  validated lazily while iterating, so large distilled corpora stream.
  """
  textio.distilled_shard_paths(directory, split)

  def generator():
    for _, source, target in textio.iter_distilled_shards(directory, split):
      yield {"inputs": source, "targets": target}

  return tf.data.Dataset.from_generator(
      generator,
      output_signature={
          "inputs": tf.TensorSpec([], tf.string),
          "targets": tf.TensorSpec([], tf.string),
      },
  )


# ---------------------------------------------------------------------------------------------
# seqio preprocessors (each maps a tf.data.Dataset to a tf.data.Dataset).
def translate_pair(
    dataset: tf.data.Dataset, source_language: str, target_language: str
) -> tf.data.Dataset:
  """{source_language: s, target_language: t, ...} -> {'inputs': s, 'targets': t}.

  For TFDS translation datasets, whose examples are keyed by language code.
  """

  def fn(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {"inputs": example[source_language], "targets": example[target_language]}

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def prepend_text(dataset: tf.data.Dataset, prefix: str, feature: str = "inputs") -> tf.data.Dataset:
  """Prepends `prefix` to a string feature, e.g. a target-language tag '<2de> '."""

  def fn(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    example = dict(example)
    example[feature] = tf.strings.join([prefix, example[feature]])
    return example

  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------------------
# Over-long examples: counted and logged, not cut silently.
# What the dataset being built is called in the log ('TASK SPLIT'): set around a task's
# get_dataset (tasks.common.TranslationTask), read when its preprocessors are applied.
_DATASET_LABEL: contextvars.ContextVar[str] = contextvars.ContextVar("padir_dataset", default="")
_POWERS_OF_TEN = tf.constant([10**k for k in range(19)], tf.int64)


@contextlib.contextmanager
def dataset_label(label: str) -> Iterator[None]:
  """Names the datasets built inside the block in `count_truncated`'s log lines."""
  token = _DATASET_LABEL.set(label)
  try:
    yield
  finally:
    _DATASET_LABEL.reset(token)


def _is_power_of_ten(n: tf.Tensor) -> tf.Tensor:
  return tf.reduce_any(tf.equal(n, _POWERS_OF_TEN))


def count_truncated(
    dataset: tf.data.Dataset,
    sequence_length: Mapping[str, int] | None,
    output_features: Mapping[str, Any],
    label: str | None = None,
) -> tf.data.Dataset:
  """Counts, per feature, the token examples longer than their feature length, and logs it.

  A seqio preprocessor for just before seqio.preprocessors.append_eos_after_trim, which cuts
  such examples to the feature length (EOS included) without a word: a 2,000-word line would
  train as its first 128 tokens. The examples pass through unchanged; the count is logged as a
  WARNING (tf.print to absl), e.g.

      padir_my_task train: 3 of 10000 examples truncated to 128 target tokens

  at the 1st, 10th, 100th, ... truncated example, at every power of ten of examples seen from
  1000 on, and at the end of a finite dataset (an eval or infer split; a training split repeats
  forever); nothing when no example is too long. `label` (default: the one `dataset_label`
  set, e.g. 'TASK SPLIT') starts the line.

  Args:
    dataset: token examples: 1-D int features named as `output_features`.
    sequence_length: {feature: length}; None (no trimming) leaves the dataset as it is.
    output_features: {feature: seqio.Feature}; a feature with add_eos has one token less room.
    label: what the log line calls the dataset.
  """
  if not sequence_length:
    return dataset
  label = label or _DATASET_LABEL.get() or "dataset"
  limits = {
      name: int(sequence_length[name]) - (1 if getattr(feature, "add_eos", False) else 0)
      for name, feature in output_features.items()
      if sequence_length.get(name) is not None and name in dataset.element_spec
  }
  if not limits:
    return dataset

  def report(count, seen, name):
    tf.print(
        label + ":",
        count,
        "of",
        seen,
        f"examples truncated to {sequence_length[name]} {name.removesuffix('s')} tokens",
        output_stream=logging.warning,
        end="",
    )
    return tf.constant(True)

  def step(state, item):
    example, is_end = item
    seen = state["seen"] + tf.cast(tf.logical_not(is_end), tf.int64)
    new_state = {"seen": seen}
    for name, limit in limits.items():
      longer = tf.logical_and(
          tf.logical_not(is_end), tf.size(example[name], out_type=tf.int64) > limit
      )
      count = state[name] + tf.cast(longer, tf.int64)
      new_state[name] = count
      milestone = tf.logical_and(_is_power_of_ten(seen), seen >= 1000)
      due = tf.logical_or(
          tf.logical_and(longer, _is_power_of_ten(count)),
          tf.logical_and(tf.logical_or(milestone, is_end), count > 0),
      )
      # The branch's print runs only when the report is due.
      tf.cond(due, lambda c=count, s=seen, n=name: report(c, s, n), lambda: tf.constant(False))
    return new_state, item

  # One extra element after the last (only reached by a finite dataset): the end-of-data report.
  end = tf.data.Dataset.from_tensors(
      tf.nest.map_structure(
          lambda spec: tf.zeros([d or 0 for d in spec.shape.as_list()], spec.dtype),
          dataset.element_spec,
      )
  )
  zero = tf.constant(0, tf.int64)
  return (
      dataset.map(lambda example: (example, False))
      .concatenate(end.map(lambda example: (example, True)))
      .scan({"seen": zero, **{name: zero for name in limits}}, step)
      .filter(lambda example, is_end: tf.logical_not(is_end))
      .map(lambda example, is_end: example)
  )
