"""Shared pieces of the padir_* seqio tasks: directories, deferred vocabularies, task factory.

Directories are resolved when data or vocabularies are first loaded, not at import, so both the
environment variables and gin bindings made after `import tasks` take effect:

* vocabularies: `padir_vocab_dir.directory` (gin) or $PADIR_VOCAB_DIR, default
  ~/.cache/padir_t5x/vocab, holding `{pair}.32k.model` (e.g. de_en.32k.model);
* distilled corpora: `padir_distilled_dir.directory` (gin) or $PADIR_DISTILLED_DIR (no default),
  holding `{corpus}/{split}.jsonl-NNNNN-of-NNNNN` (e.g. wmt14_de_en/train.jsonl-00000-of-00004);
* caches (quickstart data): $PADIR_CACHE_DIR, default ~/.cache/padir_t5x.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import gin
import seqio
from seqio import vocabularies as seqio_vocabularies

from padir_t5x.data import metrics, pipelines, shared_data

DEFAULT_VOCAB_DIR = os.path.join("~", ".cache", "padir_t5x", "vocab")
DEFAULT_CACHE_DIR = shared_data.DEFAULT_CACHE_DIR
LANGUAGE_NAMES = {"de": "German", "en": "English", "ro": "Romanian", "zh": "Chinese"}


@gin.configurable
def padir_vocab_dir(directory: str | None = None) -> str:
  """Vocabulary directory: the gin binding, else $PADIR_VOCAB_DIR, else DEFAULT_VOCAB_DIR."""
  return os.path.expanduser(directory or os.environ.get("PADIR_VOCAB_DIR") or DEFAULT_VOCAB_DIR)


@gin.configurable
def padir_distilled_dir(directory: str | None = None) -> str:
  """Distilled-corpus directory: the gin binding, else $PADIR_DISTILLED_DIR (required)."""
  directory = directory or os.environ.get("PADIR_DISTILLED_DIR")
  if not directory:
    raise ValueError(
        "distilled tasks need a directory of JSON-lines shards: set "
        "$PADIR_DISTILLED_DIR or bind padir_distilled_dir.directory in gin"
    )
  return os.path.expanduser(directory)


def padir_cache_dir() -> str:
  """$PADIR_CACHE_DIR, default ~/.cache/padir_t5x (padir_t5x.data.shared_data.padir_cache_dir)."""
  return shared_data.padir_cache_dir()


def _vocab_dir_resolver(file_name: str) -> str:
  return os.path.join(padir_vocab_dir(), file_name)


# Resolvers are looked up by name so that vocabularies stay picklable and comparable (gin deep-
# copies them; seqio compares the vocabularies of a mixture's tasks by their state).
VOCAB_RESOLVERS: dict[str, Callable[[str], str]] = {"vocab_dir": _vocab_dir_resolver}


class DeferredSentencePieceVocabulary(seqio.SentencePieceVocabulary):
  """A SentencePieceVocabulary whose `.model` path is found when first loaded.

  `VOCAB_RESOLVERS[resolver](key)` gives the path; the quickstart resolver even creates it.
  """

  def __init__(self, resolver: str, key: str, extra_ids: int = 0):
    self._resolver = resolver
    self._key = key
    super().__init__(f"<{resolver}>/{key}", extra_ids=extra_ids)

  def resolve_path(self) -> str:
    return VOCAB_RESOLVERS[self._resolver](self._key)

  @property
  def sentencepiece_model_file(self) -> str:
    return self.resolve_path()

  def _model_context(self):
    if self._model:
      return self._model
    path = self.resolve_path()
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"vocabulary file not found: {path}. Build it with `python -m padir_t5x.vocab "
          f"--task TASK --output_prefix {path[:-len('.model')]}` (see padir_t5x/vocab.py), "
          "or point $PADIR_VOCAB_DIR / padir_vocab_dir.directory at your vocabularies"
      )
    # Same loader (and cache) as the parent class, but with the resolved path; the stored
    # placeholder path stays unchanged so equality does not depend on loading order.
    self._model = seqio_vocabularies._load_model(
        path, self._extra_ids, None, self._reverse_extra_ids
    )
    return self._model


def pair_vocabulary(pair: str) -> DeferredSentencePieceVocabulary:
  """Vocabulary '{pair}.32k.model' in the vocabulary directory, e.g. pair='de_en'."""
  return DeferredSentencePieceVocabulary("vocab_dir", f"{pair}.32k.model")


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """inputs/targets sharing one vocabulary, each ending with EOS."""
  return {
      "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True),
      "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
  }


class TranslationTask(seqio.Task):
  """A seqio.Task whose datasets are named 'TASK SPLIT' in the truncation log lines.

  pipelines.count_truncated (one of make_task's preprocessors) reads the name while get_dataset
  builds the dataset; everything else is seqio.Task's.
  """

  def get_dataset(self, sequence_length=None, split="train", *args, **kwargs):
    with pipelines.dataset_label(f"{self.name} {split}"):
      return super().get_dataset(sequence_length, split, *args, **kwargs)


def make_task(
    name: str,
    source: seqio.DataSource,
    vocabulary: seqio.Vocabulary,
    target_language: str,
    text_preprocessors: Sequence[Callable] = (),
) -> seqio.Task:
  """A translation task: text preprocessors, tokenization, EOS, standard MT metrics.

  The source (after `text_preprocessors`) must yield {'inputs', 'targets'} strings. Examples
  longer than the feature lengths are counted and logged per split (pipelines.count_truncated)
  before seqio cuts them to those lengths.
  """
  return TranslationTask(
      name=name,
      source=source,
      output_features=output_features(vocabulary),
      preprocessors=[
          *text_preprocessors,
          seqio.preprocessors.tokenize,
          seqio.CacheDatasetPlaceholder(),
          pipelines.count_truncated,
          seqio.preprocessors.append_eos_after_trim,
      ],
      metric_fns=metrics.translation_metric_fns(target_language),
  )


def add_task_once(task: Callable[[], seqio.Task], name: str) -> None:
  """Registers `task()` unless `name` is registered already (re-import, repeated setup)."""
  if name not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add_provider(name, task())


def add_mixture_once(name: str, task_names: Sequence[str], default_rate=1.0) -> None:
  """Registers a mixture unless `name` is registered already."""
  if name not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(name, list(task_names), default_rate=default_rate)


def translate_preprocessor(source_language: str, target_language: str) -> Callable:
  return functools.partial(
      pipelines.translate_pair, source_language=source_language, target_language=target_language
  )


def language_tag(target_language: str) -> str:
  """Target-language tag prepended to inputs in multilingual tasks, e.g. '<2de>'."""
  return f"<2{target_language}>"
