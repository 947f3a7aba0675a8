"""The core never imports t5x: only padir_t5x/models.py (the adapter) may.

Reads the import statements of every Python file in the package, tasks/ and benchmarks/ with `ast`,
so a lazy `import t5x` inside a function is caught as well as a top-level one.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ADAPTERS = {REPO / "padir_t5x" / "models.py"}


def _imported_modules(path: pathlib.Path) -> set[str]:
  tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
  return names


def _core_files():
  for folder in ("padir_t5x", "tasks", "benchmarks"):
    for path in sorted((REPO / folder).rglob("*.py")):
      if path not in ADAPTERS:
        yield path


def test_there_are_core_files_to_check():
  assert len(list(_core_files())) >= 5


@pytest.mark.parametrize("path", list(_core_files()), ids=lambda p: str(p.relative_to(REPO)))
def test_core_module_does_not_import_t5x(path):
  offending = sorted(m for m in _imported_modules(path) if m == "t5x" or m.startswith("t5x."))
  assert (
      not offending
  ), f"{path.relative_to(REPO)} imports {offending}; only padir_t5x/models.py may"


def test_detector_sees_nested_imports(tmp_path):
  sample = tmp_path / "sample.py"
  sample.write_text("def f():\n  from t5x import models\n  import t5x.utils\n")
  assert _imported_modules(sample) == {"t5x", "t5x.utils"}
