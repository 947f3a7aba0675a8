"""padir_shared_de_en: the real German-English text of the shared data directory, for CPU runs.

The directory is $PADIR_DATA_DIR, else ../shared/data beside the repository (see its README;
nothing of it is copied here). Splits:

    train       de-en/train.{de,en}         76,610 pairs (Multi30k, WMT news tests, Tatoeba)
    validation  de-en/dev-multi30k.{de,en}  1,014 pairs (Multi30k validation: short captions)
    test        de-en/dev.{de,en}           3,000 pairs (newstest2013)

The vocabulary is a 4,000-piece SentencePiece model over both sides of train.{de,en}, built on
first use under $PADIR_CACHE_DIR/shared (default ~/.cache/padir_t5x/shared) by
padir_t5x.vocab.ensure_pair_vocabulary, the same model the benchmarks use. 4k pieces, not the
WMT tasks' 32k: the corpus is small and the models trained on it here are tiny.

gin: `VOCABULARY = @common.DeferredSentencePieceVocabulary()` with resolver 'shared_de_en'
(gin/experiments/recipe/shared_de_en_*.gin).
"""

from __future__ import annotations

import functools
import os

import seqio

from padir_t5x.data import pipelines, shared_data
from padir_t5x import vocab
from tasks import common

TASK_NAME = "padir_shared_de_en"
PAIR = "de-en"
VOCAB_SIZE = 4000
SPLIT_FILES = {"train": "train", "validation": "dev-multi30k", "test": "dev"}


def data_dir() -> str:
  """The shared data directory; FileNotFoundError saying how to point at it."""
  found = shared_data.find_data_dir()
  if found is None:
    raise FileNotFoundError(
        f"task {TASK_NAME}: no shared data directory; set $PADIR_DATA_DIR to the directory "
        "holding de-en/train.de (see ../shared/data/README.md)"
    )
  return found


def vocabulary_path() -> str:
  """The 4k SentencePiece model, built from the shared train files on first use."""
  return vocab.ensure_pair_vocabulary(
      data_dir(), PAIR, VOCAB_SIZE, os.path.join(common.padir_cache_dir(), "shared")
  )


def _vocab_resolver(key: str) -> str:
  del key  # One vocabulary; the key only names it in gin and in the vocabulary's repr.
  return vocabulary_path()


common.VOCAB_RESOLVERS["shared_de_en"] = _vocab_resolver


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
  del shuffle_files, seed  # One file per side.
  stem = os.path.join(data_dir(), PAIR, SPLIT_FILES[split])
  # validate: a full read (about a second for train), so a damaged copy of the data fails
  # here naming the file and line instead of misaligning pairs.
  return pipelines.parallel_text_dataset(f"{stem}.de", f"{stem}.en", validate=True)


def register_shared_task() -> str:
  """Registers padir_shared_de_en (idempotent); files are found when data are read."""
  common.add_task_once(
      functools.partial(
          common.make_task,
          TASK_NAME,
          seqio.FunctionDataSource(_dataset_fn, splits=tuple(SPLIT_FILES)),
          common.DeferredSentencePieceVocabulary("shared_de_en", f"de_en.{VOCAB_SIZE}.model"),
          "en",
      ),
      TASK_NAME,
  )
  return TASK_NAME
