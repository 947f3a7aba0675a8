"""Running `python -m t5x.train` / `t5x.infer` / ... as a subprocess, for the t5x-dependent tests
(tests/test_gin.py, test_partitioning.py). Not a test module: pytest puts tests/ on sys.path."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_module(args, log_path, env, timeout=900):
  """Runs `python -m ARGS...` from the repository root with `env`, its output into `log_path`;
  returns the log, failing the test (with the log's end) on a nonzero exit."""
  with open(log_path, "w") as log:
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        timeout=timeout,
    )
  text = pathlib.Path(log_path).read_text()
  assert proc.returncode == 0, text[-5000:]
  return text
