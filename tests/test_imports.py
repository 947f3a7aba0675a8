"""The core never imports t5x: only the adapter (padir_t5x/t5x_adapter/models.py, restore.py) may.

Reads the import statements of every Python file in the package, tasks/ and benchmarks/ with `ast`,
so a lazy `import t5x` inside a function is caught as well as a top-level one.
"""

import ast
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
ADAPTERS = {
    REPO / "padir_t5x" / "t5x_adapter" / "models.py",
    REPO / "padir_t5x" / "t5x_adapter" / "restore.py",
}


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
  ), f"{path.relative_to(REPO)} imports {offending}; only padir_t5x/t5x_adapter/models.py may"


def test_detector_sees_nested_imports(tmp_path):
  sample = tmp_path / "sample.py"
  sample.write_text("def f():\n  from t5x import models\n  import t5x.utils\n")
  assert _imported_modules(sample) == {"t5x", "t5x.utils"}


# The text and shard readers, the stage engine and the EM / distill pipelines must load without
# TensorFlow (they only read and write files; seqio/TensorFlow are imported where a seqio task is
# read). `sys.modules['tensorflow'] = None` makes any `import tensorflow` raise ImportError.
TENSORFLOW_FREE = (
    "padir_t5x.data.textio",
    "padir_t5x.stages",
    "padir_t5x.t5x_adapter.jobs",
    "padir_t5x.em_config",
    "padir_t5x.em_report",
    "padir_t5x.em",
    "padir_t5x.distill",
    "padir_t5x.vocab",
    "padir_t5x.core.checkpoints",
    "padir_t5x.decoders.ar_decoding",
    "padir_t5x.translate",
)


@pytest.mark.parametrize("module", TENSORFLOW_FREE)
def test_module_imports_without_tensorflow(module):
  code = f"import sys\nsys.modules['tensorflow'] = None\nimport {module}\n"
  result = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, f"{module} needs TensorFlow at import:\n{result.stderr[-2000:]}"


def _module_level_imports(path: pathlib.Path) -> set[str]:
  """Modules imported when `path` is imported: everything outside function bodies."""
  names = set()
  pending = list(ast.parse(path.read_text(encoding="utf-8")).body)
  while pending:
    node = pending.pop()
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
    pending.extend(ast.iter_child_nodes(node))
  return names


@pytest.mark.parametrize(
    "path", sorted((REPO / "padir_t5x").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO))
)
def test_package_does_not_import_tasks_at_module_level(path):
  # Layering: padir_t5x (the core) <- tasks. `tasks` imports the core, so a module-level import
  # back would be a cycle; command-line entry points import `tasks` inside main() instead.
  offending = sorted(
      m for m in _module_level_imports(path) if m == "tasks" or m.startswith("tasks.")
  )
  assert not offending, f"{path.relative_to(REPO)} imports {offending} at module level"


def test_accelerator_benchmark_needs_only_jax_flax_numpy_and_the_core():
  """The lent GPU machine has jax, flax and optax but no t5x, seqio, TensorFlow or package index:
  benchmarks/accelerator.py must import and build its decoders with everything else blocked."""
  blocked = ("t5x", "seqio", "tensorflow", "tensorflow_text", "sentencepiece", "sacrebleu", "gin")
  code = "import sys\n"
  code += "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
  code += "from benchmarks import accelerator\n"
  code += (
      "assert 'padir_t5x.core.network' in sys.modules"
      " and 'padir_t5x.decoders.ar_decoding' in sys.modules\n"
  )
  result = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, result.stderr[-2000:]


def test_module_paths_that_earlier_t5x_runs_recorded_still_import():
  """A T5X run's config.gin keeps the gin files' imports of its day (`from padir_t5x import
  network`, `schedules`): they import the modules at their new homes, the very same objects."""
  code = (
      "import sys\n"
      "import padir_t5x\n"
      "assert 'padir_t5x.core.network' not in sys.modules\n"
      "from padir_t5x import network, schedules\n"
      "from padir_t5x.core import network as core_network, schedules as core_schedules\n"
      "assert network is core_network and schedules is core_schedules\n"
      "assert network.__spec__.name == 'padir_t5x.core.network'\n"
  )
  result = subprocess.run(
      [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, result.stderr[-2000:]
