"""Resumable training: a budget run killed mid-way (SIGKILL, a real subprocess) and resumed draws
the loss curve of an uninterrupted run; the run state's refusals (padir_t5x.core.resume)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import budget_data
from benchmarks import train_budget
from padir_t5x import corpus
from padir_t5x.core import resume

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Tiny shapes: a few ms a step, so the run outlives its first periodic saves by a wide margin.
TINY_FLAGS = [
    "--model", "ar", "--max_steps", "1000", "--minutes", "0", "--vocab_size", "120",
    "--max_length", "32", "--emb_dim", "16", "--num_heads", "2", "--mlp_dim", "32",
    "--num_layers", "1", "--peak_learning_rate", "3e-3",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  root = tmp_path_factory.mktemp("resume_data")
  os.makedirs(root / "de-en")
  pairs = corpus.generate_pairs(600, seed=3)
  for side, language in enumerate(("de", "en")):
    with open(root / "de-en" / f"train.{language}", "w", encoding="utf-8") as f:
      f.writelines(pair[side] + "\n" for pair in pairs)
  return str(root)


def _command(data_dir: str, out: str, vocab_dir: str, *extra: str) -> list[str]:
  return [
      sys.executable, "-m", "benchmarks.train_budget", *TINY_FLAGS, "--data_dir", data_dir,
      "--vocab_dir", vocab_dir, "--out", out, *extra,
  ]  # fmt: skip


def _run(command: list[str]) -> subprocess.CompletedProcess:
  done = subprocess.run(
      command, cwd=REPO, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def test_a_killed_and_resumed_run_draws_the_uninterrupted_loss_curve(tiny_data, tmp_path):
  vocab_dir = str(tmp_path / "vocab")
  whole = str(tmp_path / "whole")
  _run(_command(tiny_data, whole, vocab_dir, "--checkpoint_minutes", "0"))
  expected = np.load(os.path.join(whole, train_budget.LOSS_CURVE_FILE))
  assert expected.shape == (1000,) and np.all(np.isfinite(expected))
  assert not os.path.exists(resume.state_path(whole))  # a finished run keeps no state

  # Saves about every 0.1 s of training; killed (no chance to clean up) after its second save.
  broken = str(tmp_path / "broken")
  started = time.monotonic()
  process = subprocess.Popen(
      _command(tiny_data, broken, vocab_dir, "--checkpoint_minutes", "0.0015"),
      cwd=REPO,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      stdin=subprocess.DEVNULL,
      env={**os.environ, "PYTHONUNBUFFERED": "1"},
  )
  saves = 0
  for line in process.stdout:
    saves += "saved the run state" in line
    if saves == 2:
      process.send_signal(signal.SIGKILL)
      break
  process.wait(timeout=60)
  assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
  killed_at = resume.read_meta(broken)["step"]
  assert 0 < killed_at < 1000
  # The saved training seconds are this run's, not a clock reading: positive and at most the
  # wall time since the run started.
  killed_seconds = resume.read_meta(broken)["progress"]["seconds"]
  assert 0 < killed_seconds < time.monotonic() - started
  assert not os.path.exists(os.path.join(broken, "config.json"))

  # Without --resume the unfinished run is refused, not overwritten.
  refused = subprocess.run(
      _command(tiny_data, broken, vocab_dir), cwd=REPO, capture_output=True, text=True
  )
  assert refused.returncode == 2
  assert "holds an unfinished run (saved at step" in refused.stderr
  assert "--resume" in refused.stderr

  # Resumed under other settings: refused, naming the setting.
  other = _command(tiny_data, broken, vocab_dir, "--resume")
  other[other.index("--peak_learning_rate") + 1] = "1e-3"
  refused = subprocess.run(other, cwd=REPO, capture_output=True, text=True)
  assert refused.returncode == 2 and "peak_learning_rate" in refused.stderr

  resumed = _run(_command(tiny_data, broken, vocab_dir, "--resume"))
  assert f"resumed at step {killed_at}" in resumed.stdout
  assert f"({killed_seconds:.0f}s trained)" in resumed.stdout
  with open(os.path.join(broken, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["train"]["seconds"] > killed_seconds
  curve = np.load(os.path.join(broken, train_budget.LOSS_CURVE_FILE))
  np.testing.assert_allclose(curve, expected, rtol=1e-5, atol=1e-6)
  whole_params, resumed_params = (np.load(os.path.join(d, "params.npz")) for d in (whole, broken))
  for key in whole_params.files:
    np.testing.assert_allclose(resumed_params[key], whole_params[key], rtol=1e-5, atol=1e-6)

  # A finished run is never resumed or overwritten.
  for extra, message in (("--resume", "holds a finished run"), ("--seed=1", "already holds")):
    refused = subprocess.run(
        _command(tiny_data, broken, vocab_dir, extra), cwd=REPO, capture_output=True, text=True
    )
    assert refused.returncode == 2 and message in refused.stderr, refused.stderr


def test_run_state_round_trip_and_refusals(tmp_path):
  params = {"a": {"kernel": jnp.arange(6.0).reshape(2, 3)}, "b": jnp.ones((4,), jnp.float32)}
  opt_state = (jnp.zeros((), jnp.int32), {"mu": jnp.full((2, 3), 0.5)})
  rng = jax.random.PRNGKey(7)
  losses = np.array([3.0, 2.5, 2.0], np.float32)
  path = resume.save(str(tmp_path), params, opt_state, rng, 3, losses, {"lr": 1e-3}, {"s": 1.5})
  assert os.path.basename(path) == resume.STATE_FILE
  assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no temporary left
  got_params, got_opt, got_rng, step, got_losses, settings, progress = resume.load(
      str(tmp_path), params, opt_state
  )
  np.testing.assert_array_equal(got_params["a"]["kernel"], params["a"]["kernel"])
  np.testing.assert_array_equal(got_opt[1]["mu"], opt_state[1]["mu"])
  np.testing.assert_array_equal(got_rng, rng)
  assert (step, settings, progress) == (3, {"lr": 1e-3}, {"s": 1.5})
  np.testing.assert_array_equal(got_losses, losses)
  assert resume.read_meta(str(tmp_path))["step"] == 3

  with pytest.raises(resume.ResumeError, match="needs float32\\[3, 2\\]"):
    resume.load(str(tmp_path), {"a": {"kernel": jnp.zeros((3, 2))}, "b": params["b"]}, opt_state)
  with pytest.raises(resume.ResumeError, match="holds 2 params leaves, this run has 1"):
    resume.load(str(tmp_path), {"b": params["b"]}, opt_state)
  with pytest.raises(resume.ResumeError, match="no run state to resume"):
    resume.read_meta(str(tmp_path / "elsewhere"))
  truncated = tmp_path / "truncated"
  os.makedirs(truncated)
  with open(path, "rb") as f:
    (truncated / resume.STATE_FILE).write_bytes(f.read()[:100])
  with pytest.raises(resume.ResumeError, match="not a readable run state"):
    resume.read_meta(str(truncated))
  assert resume.settings_differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == [
      "b: saved 2, now 3",
      "c: saved None, now 4",
  ]


def test_train_budget_refuses_a_missing_state_before_any_work(tmp_path):
  start = time.perf_counter()
  with pytest.raises(SystemExit) as exit_info:
    train_budget.main(["--out", str(tmp_path / "new"), "--resume", "--data_dir", str(tmp_path)])
  assert exit_info.value.code == 2
  assert time.perf_counter() - start < 5


def test_buckets_end_at_max_length():
  assert budget_data.buckets_for(80) == budget_data.DEFAULT_BUCKETS
  assert budget_data.buckets_for(32) == ((32, 64),)
  assert budget_data.buckets_for(100) == ((32, 64), (80, 24), (100, 19))
  assert budget_data.buckets_for(16) == ((16, 120),)
