"""tf.data and SeqIO pieces for translation tasks, without t5x.

* A tf.data dataset of {'inputs', 'targets'} strings over two line-aligned text files, and one
  over distilled JSON-lines shards.
* seqio preprocessors that turn TFDS translation examples ({'de': ..., 'en': ...}) into
  {'inputs', 'targets'}.

The files themselves are read and validated by padir_t5x.textio, which needs no TensorFlow:
callers that only read text import it, not this module.
"""

from __future__ import annotations

import tensorflow as tf

from padir_t5x import textio


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
