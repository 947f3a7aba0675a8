"""One loader: any checkpoint (core or T5X) -> a `LoadedModel` ready to decode.

    loaded = loading.load("models/caption_ar_teacher")
    loaded.module, loaded.params, loaded.vocabulary, loaded.kind, loaded.decoding

`load` reads a core checkpoint (padir_t5x.core.checkpoints: params.npz + config.json + vocab.model,
numpy only) or a T5X one (a `checkpoint_N` directory or a model directory, built from its gin
config; needs t5x), checks its vocabulary against it, and fills in what decoding needs from the
vocabulary: `vocab_high` (the real vocabulary size, below the padded embedding table) and the
word-start table of 'word' stutter. This module is the one place that does so for a checkpoint;
translate, export and the benchmarks all load through it. (`checkpoints` stays the numpy-only
format, importable without t5x or jax.)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from padir_t5x.core import checkpoints
from padir_t5x.t5x_adapter import jobs as t5x_jobs
from padir_t5x.core.checkpoints import CheckpointError


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A checkpoint ready to decode.

  Attributes:
    module: the network.Transformer.
    params: its parameters (a nested dict of arrays).
    vocabulary: the sentencepiece.SentencePieceProcessor, checked against the checkpoint.
    kind: 'padir' or 'ar'.
    decoding: PaDIR: the DecodingConfig of its defaults (the checkpoint's recorded
      "decoding" fields, or the T5X model's gin-bound config; DecodingConfig's own defaults for
      the rest), vocab_high and word_starts filled in from `vocabulary`. AR: None.
    path: the directory read (a T5X model directory: its latest checkpoint_N).
    meta: config.json as checkpoints.read_config returns it; {} for a T5X checkpoint.
  """

  module: Any
  params: Any
  vocabulary: Any
  kind: str
  decoding: Any
  path: str
  meta: dict

  @property
  def vocab_high(self) -> int:
    """Exclusive bound of the ids the model may produce: the real vocabulary size."""
    return self.vocabulary.get_piece_size()


def check_same_vocabulary(first: LoadedModel, second: LoadedModel, why: str = "") -> None:
  """CheckpointError naming both checkpoints unless they share one vocabulary (by content: each
  checkpoint carries its own copy)."""
  if first.vocabulary.serialized_model_proto() != second.vocabulary.serialized_model_proto():
    raise CheckpointError(f"{first.path} and {second.path} have different vocabularies{why}")


def vocabulary_fields(processor) -> dict:
  """The DecodingConfig fields that come from the vocabulary, not from a checkpoint's record:
  vocab_high (its size) and word_starts (which ids begin a word, for 'word' stutter)."""
  from padir_t5x import vocab  # pylint: disable=g-import-not-at-top

  return {
      "vocab_high": processor.get_piece_size(),
      "word_starts": vocab.word_start_table(processor),
  }


def is_t5x(path: str, gin_file: str | None = None) -> bool:
  """Whether `load` reads `path` as a T5X checkpoint: a gin file is given, or the directory has
  no config.json but T5X's files."""
  return gin_file is not None or (
      not os.path.isfile(os.path.join(path, checkpoints.CONFIG_FILE))
      and checkpoints.looks_like_t5x_checkpoint(path)
  )


def t5x_checkpoint_path(directory: str) -> str:
  """The checkpoint_N directory to load: `directory` itself, or a model directory's latest one."""
  steps = []
  for name in os.listdir(directory):
    step = name[len("checkpoint_") :]
    if name.startswith("checkpoint_") and step.isdigit():
      steps.append(int(step))
  return os.path.join(directory, f"checkpoint_{max(steps)}") if steps else directory


def load_t5x_model(directory: str, gin_file: str | None = None, params: bool = True):
  """(model, params or None, checkpoint_N path) of a T5X checkpoint, built from its gin config.

  Needs t5x; the model comes from `gin_file`, default the config.gin t5x.train wrote beside the
  checkpoints. CheckpointError naming the directory or file otherwise.
  """
  try:
    from padir_t5x.t5x_adapter import models  # noqa: F401  (the adapter: ImportError without t5x)
    from padir_t5x.t5x_adapter import restore as t5x_restore  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise CheckpointError(
        f"{directory} is a T5X checkpoint, which needs t5x installed ({e}): "
        f"{t5x_jobs.T5X_INSTALL_HINT}"
    ) from None
  path = t5x_checkpoint_path(directory)
  gin_file = gin_file or os.path.join(os.path.dirname(os.path.abspath(path)), "config.gin")
  try:
    if not params:
      return t5x_restore.model_from_gin(gin_file), None, path
    model, variables = t5x_restore.load_for_inference(path, gin_file)
  except (FileNotFoundError, ValueError) as e:
    raise CheckpointError(f"{path}: {e}") from None
  return model, variables, path


def _t5x_kind(model, checkpoint: str, expected: str | None) -> str:
  from padir_t5x.t5x_adapter import models  # pylint: disable=g-import-not-at-top

  found = "padir" if isinstance(model, models.PadirModel) else "ar"
  if expected is not None and expected != found:
    raise CheckpointError(f"{checkpoint}: holds a {found!r} model, not the {expected!r} asked for")
  return found


def _core_kind(path: str, meta: dict, expected: str | None) -> str:
  found = meta["kind"]
  if expected is not None and expected != found:
    raise CheckpointError(
        f"{os.path.join(path, checkpoints.CONFIG_FILE)}: holds "
        f"{'an AR' if found == 'ar' else 'a PaDIR'} model (kind {found!r}), not the "
        f"{expected!r} model asked for"
    )
  return found


def checkpoint_kind(path: str, gin_file: str | None = None, expected: str | None = None) -> str:
  """'padir' or 'ar' for a core or T5X checkpoint, without loading its weights.

  With `expected`, a checkpoint of the other kind raises CheckpointError naming its config.json
  (core) or its checkpoint_N directory (T5X).
  """
  if is_t5x(path, gin_file):
    model, _, checkpoint = load_t5x_model(path, gin_file, params=False)
    return _t5x_kind(model, checkpoint, expected)
  return _core_kind(path, checkpoints.read_config(path), expected)


def load(
    path: str,
    vocab_path: str | None = None,
    kind: str | None = None,
    gin_file: str | None = None,
    dtype: str | None = None,
) -> LoadedModel:
  """The model of a core or T5X checkpoint, checked, with its vocabulary and decoding defaults.

  Args:
    path: a core checkpoint directory (params.npz, config.json, vocab.model); or a T5X
      `checkpoint_N` directory, or a T5X model directory (its latest checkpoint_N).
    vocab_path: a SentencePiece model to use instead of the checkpoint's (refused unless it is
      the one the checkpoint was trained with, as checkpoints.load_vocabulary checks).
    kind: 'padir' or 'ar' to insist on one (CheckpointError naming the checkpoint otherwise).
    gin_file: T5X only: the gin config that builds the model (default: the config.gin that
      t5x.train wrote into the model directory).
    dtype: the activation dtype to decode in, 'float32' or 'bfloat16' (on an accelerator);
      None keeps the checkpoint's. Parameters stay float32 either way.

  Raises:
    CheckpointError naming the file at fault; a core checkpoint's vocabulary is checked before
    its weights are read.
  """
  from padir_t5x.decoders.decoding_config import DecodingConfig  # pylint: disable=g-import-not-at-top

  if is_t5x(path, gin_file):
    model, params, checkpoint = load_t5x_model(path, gin_file)  # CheckpointError without t5x
    found = _t5x_kind(model, checkpoint, kind)
    vocab_file = vocab_path or model.output_vocabulary.sentencepiece_model_file
    processor = checkpoints.load_vocabulary(vocab_file, {}, model.module.config.vocab_size)
    config = None
    if found == "padir":
      config = dataclasses.replace(model.decoding_config, **vocabulary_fields(processor))
    module = _with_dtype(model.module, dtype)
    return LoadedModel(module, params, processor, found, config, checkpoint, {})
  meta = checkpoints.read_config(path)
  _core_kind(path, meta, kind)
  # The vocabulary before the weights: another one than the checkpoint's is refused first.
  processor = checkpoints.load_vocabulary(
      vocab_path or meta["vocab_model"],
      meta,
      checkpoints.transformer_config(meta).vocab_size,
      config_path=os.path.join(path, checkpoints.CONFIG_FILE),
  )
  module, params, meta = checkpoints.load_checkpoint(path)
  config = None
  if meta["kind"] == "padir":
    from_vocab = vocabulary_fields(processor)
    fields = {f.name for f in dataclasses.fields(DecodingConfig)} - set(from_vocab)
    recorded = {k: v for k, v in meta["decoding"].items() if k in fields}
    config = DecodingConfig(**from_vocab, **recorded)
  module = _with_dtype(module, dtype)
  return LoadedModel(module, params, processor, meta["kind"], config, path, meta)


def _with_dtype(module, dtype: str | None):
  if dtype is None:
    return module
  from padir_t5x.core import network  # pylint: disable=g-import-not-at-top

  return network.with_activation_dtype(module, dtype)
