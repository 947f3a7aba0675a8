"""One style for the repository: pyink (2-space indentation, double quotes) and ruff's typing rules.

The configuration is in pyproject.toml. To fix a failure: `pyink . && ruff check --fix .`.
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)


def test_code_is_pyink_formatted():
  result = _run("pyink", "--check", ".")
  assert result.returncode == 0, "run `pyink .`:\n" + result.stderr[-3000:]


def test_ruff_typing_and_unused_import_rules():
  result = _run("ruff", "check", ".")
  assert result.returncode == 0, "run `ruff check --fix .`:\n" + result.stdout[-3000:]
