"""Shared pytest fixtures: the real-data directory and a tiny SentencePiece vocabulary."""

import pytest

from padir_t5x.shared_data import find_data_dir


@pytest.fixture(scope="session")
def data_dir():
  """Directory of the real parallel text (README.md there); skips the test when absent."""
  found = find_data_dir()
  if found is None:
    pytest.skip(
        "real parallel data not found: set $PADIR_DATA_DIR or provide ../shared/data "
        "relative to the repository root"
    )
  return found


@pytest.fixture(scope="session")
def tiny_vocab_path(tmp_path_factory):
  """A 200-piece SentencePiece model (pad 0, eos 1, unk 2, <mask> 3) on synthetic text."""
  from padir_t5x import corpus, vocab

  pairs = corpus.generate_pairs(2000, seed=1)
  prefix = str(tmp_path_factory.mktemp("tiny_vocab") / "tiny")
  return vocab.train_sentencepiece(
      [s for pair in pairs for s in pair], prefix, vocab_size=200, seed=0, num_threads=1
  )


@pytest.fixture(scope="session")
def quickstart_vocab_path(tmp_path_factory):
  """The quickstart's SentencePiece model (256 pieces), built in a temporary cache.

  tasks.ensure_quickstart_data with an explicit cache_dir, so the user's ~/.cache (or
  $PADIR_CACHE_DIR) is neither read nor written.
  """
  from tasks import quickstart

  cache_dir = tmp_path_factory.mktemp("padir_cache")
  return quickstart.ensure_quickstart_data(str(cache_dir))[1]
