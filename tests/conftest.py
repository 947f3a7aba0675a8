"""Shared pytest fixtures: a private cache, the real-data directory, tiny vocabularies."""

import pytest

from padir_t5x.data.shared_data import find_data_dir

# The environment variables of the caches the package (and the libraries it uses) write.
CACHE_VARIABLES = (
    "PADIR_CACHE_DIR",
    "PADIR_VOCAB_DIR",
    "XDG_CACHE_HOME",
    "PADIR_COMPILATION_CACHE",
)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache_dir(tmp_path_factory):
  """Every cache of the test session (and of the commands it runs) under one temporary directory.

  $PADIR_CACHE_DIR (the quickstart corpus, the shared vocabulary), $PADIR_VOCAB_DIR and
  $XDG_CACHE_HOME point into it, so that the suite neither reads nor writes the user's ~/.cache;
  a test may still point one elsewhere with monkeypatch. Subprocesses inherit them.
  $PADIR_COMPILATION_CACHE is '' (translate's JAX compilation cache off: JAX's configuration is
  process-wide, and a test's compile times should not depend on earlier tests); a test that
  checks the cache passes --compilation_cache.
  """
  root = tmp_path_factory.mktemp("cache")
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("PADIR_CACHE_DIR", str(root / "padir_t5x"))
    patch.setenv("PADIR_VOCAB_DIR", str(root / "padir_t5x" / "vocab"))
    patch.setenv("XDG_CACHE_HOME", str(root))
    patch.setenv("PADIR_COMPILATION_CACHE", "")
    yield str(root)


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
def quickstart_vocab_path(isolated_cache_dir):
  """The quickstart's SentencePiece model (256 pieces), built once in the session's cache."""
  from tasks import quickstart

  return quickstart.ensure_quickstart_data()[1]
