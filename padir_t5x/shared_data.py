"""Where the real parallel text for tests and benchmarks lives (never copied into the repo)."""

from __future__ import annotations

import os

# In a source checkout (pip install -e .), the package sits at <repo>/padir_t5x.
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_data_dir() -> str | None:
  """$PADIR_DATA_DIR, else ../shared/data next to the repository root; None if absent."""
  for candidate in (
      os.environ.get("PADIR_DATA_DIR"),
      os.path.join(_REPO_ROOT, "..", "shared", "data"),
  ):
    if candidate and os.path.isdir(candidate):
      return os.path.abspath(candidate)
  return None
