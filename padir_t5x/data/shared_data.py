"""Where the real parallel text for tests and benchmarks lives (never copied into the repo), and
the package's cache directory."""

from __future__ import annotations

import os

DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "padir_t5x")

# In a source checkout (pip install -e .), the package sits at <repo>/padir_t5x (this file at
# <repo>/padir_t5x/data/shared_data.py).
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def find_data_dir() -> str | None:
  """$PADIR_DATA_DIR, else ../shared/data next to the repository root; None if absent."""
  for candidate in (
      os.environ.get("PADIR_DATA_DIR"),
      os.path.join(_REPO_ROOT, "..", "shared", "data"),
  ):
    if candidate and os.path.isdir(candidate):
      return os.path.abspath(candidate)
  return None


def data_dir_or_error(parser, data_dir: str | None) -> str:
  """A command's data directory: its --data_dir value, else `find_data_dir()`; when neither
  exists, `parser.error` (exit 2) says how to give one, before any work."""
  found = data_dir or find_data_dir()
  if found is None:
    parser.error("no data: pass --data_dir or set $PADIR_DATA_DIR")
  return found


def padir_cache_dir() -> str:
  """$PADIR_CACHE_DIR, default ~/.cache/padir_t5x: the quickstart corpus, the shared vocabulary,
  translate's JAX compilation cache."""
  return os.path.expanduser(os.environ.get("PADIR_CACHE_DIR") or DEFAULT_CACHE_DIR)
