"""'padir_quickstart_de_en': the embedded synthetic German->English corpus, ready to train on.

Nothing needs downloading: on first use, `ensure_quickstart_data()` writes the corpus
(padir_t5x.corpus, seed 0) and a small SentencePiece vocabulary into
`$PADIR_CACHE_DIR/quickstart/v1` (default ~/.cache/padir_t5x/quickstart/v1). Generation is
deterministic and takes a few seconds; concurrent first uses are safe (each process builds in a
private temporary directory and renames it into place; the first rename wins).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile

import gin
import seqio

from padir_t5x import corpus, vocab
from padir_t5x.data import pipelines
from tasks import common

TASK_NAME = "padir_quickstart_de_en"
# Bump when the generator or the settings change, so stale caches are not reused.
QUICKSTART_VERSION = "v1"
QUICKSTART_CONFIG = {
    "version": QUICKSTART_VERSION,
    "num_train": 20000,
    "num_validation": 500,
    "num_test": 500,
    "seed": 0,
    "vocab_size": 256,
}
VOCAB_FILE = "spm.model"
_STAMP = "DONE.json"


def quickstart_dir(cache_dir: str | None = None) -> str:
  return os.path.join(cache_dir or common.padir_cache_dir(), "quickstart", QUICKSTART_VERSION)


def _build(directory: str) -> None:
  c = QUICKSTART_CONFIG
  paths = corpus.write_corpus(
      directory, c["num_train"], c["num_validation"], c["num_test"], c["seed"]
  )
  train_de, train_en = paths["train"]
  vocab.train_sentencepiece(
      vocab.read_lines([train_de, train_en]),
      os.path.join(directory, VOCAB_FILE[: -len(".model")]),
      vocab_size=c["vocab_size"],
      seed=c["seed"],
      num_threads=1,
  )
  with open(os.path.join(directory, _STAMP), "w") as f:
    json.dump(c, f, sort_keys=True)


@gin.configurable
def ensure_quickstart_data(cache_dir: str | None = None) -> tuple[str, str]:
  """Creates the quickstart corpus and vocabulary if needed.

  Returns:
    (data_dir, vocab_path): data_dir holds {train,validation,test}.{de,en}; vocab_path is the
    SentencePiece model (pad 0, eos 1, unk 2, <mask> 3).
  """
  directory = quickstart_dir(cache_dir)
  vocab_path = os.path.join(directory, VOCAB_FILE)
  stamp = os.path.join(directory, _STAMP)
  if not os.path.exists(stamp):
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".building-", dir=parent)
    try:
      _build(tmp)
      try:
        os.rename(tmp, directory)
      except OSError:
        # Another process finished first (rename onto a non-empty directory fails), or a
        # stale incomplete directory is in the way: replace only the latter.
        if os.path.exists(stamp):
          return directory, vocab_path
        shutil.rmtree(directory, ignore_errors=True)
        os.rename(tmp, directory)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return directory, vocab_path


def _quickstart_vocab_resolver(key: str) -> str:
  del key
  return ensure_quickstart_data()[1]


common.VOCAB_RESOLVERS["quickstart"] = _quickstart_vocab_resolver


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
  del shuffle_files, seed
  data_dir, _ = ensure_quickstart_data()
  return pipelines.parallel_text_dataset(
      os.path.join(data_dir, f"{split}.de"), os.path.join(data_dir, f"{split}.en"), validate=False
  )


def register_quickstart_task() -> str:
  """Registers padir_quickstart_de_en (idempotent); data are created on first use."""
  common.add_task_once(
      functools.partial(
          common.make_task,
          TASK_NAME,
          seqio.FunctionDataSource(_dataset_fn, splits=("train", "validation", "test")),
          common.DeferredSentencePieceVocabulary("quickstart", VOCAB_FILE),
          "en",
      ),
      TASK_NAME,
  )
  return TASK_NAME
