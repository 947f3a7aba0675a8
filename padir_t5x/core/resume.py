"""A training run's whole state in one file, written atomically, so a killed run can go on.

A long run outlives the machine it started on (a session, a pre-emptible VM): the trainer calls
`save` every few minutes and, with --resume, `load` continues from the last save. What makes the
continuation the *same* run, with the loss curve an uninterrupted run would have drawn:
  - the parameters, the optimiser state (Adam's moments and its step count) and the loop's
    PRNG key, bit for bit (float32 leaves, no conversion);
  - the step count, from which the caller replays its deterministic data order and reads the
    learning rate of a step-indexed schedule;
  - the per-step losses so far, so the curve of a resumed run is one array;
  - the run's settings (a JSON dict), compared by the caller with the resuming command's so that
    a run is never continued under other settings.

The file is `train_state.npz` in the run's output directory: leaves under 'params/<i>' and
'opt_state/<i>' in jax.tree_util's flattening order (the caller rebuilds the trees from the
structure of a freshly initialised state, so no pickling), the rest under fixed names. It is
written to a temporary name and renamed into place (os.replace), so a kill at any moment leaves
either the previous state or the new one, never half of one. No jax import here beyond tree
utilities: the state is numpy on the way in and out.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import jax
import numpy as np

STATE_FILE = "train_state.npz"


class ResumeError(ValueError):
  """A run state is missing, damaged or belongs to another run; the message names the file."""


def state_path(run_dir: str) -> str:
  return os.path.join(run_dir, STATE_FILE)


def save(
    run_dir: str,
    params: Any,
    opt_state: Any,
    rng: Any,
    step: int,
    losses: np.ndarray,
    settings: dict,
    progress: dict,
) -> str:
  """Writes the run state atomically to run_dir/train_state.npz; returns its path.

  Args:
    params / opt_state: pytrees of arrays (their leaves are stored in tree_flatten order).
    rng: the loop's PRNG key (uint32 [2]) after `step` steps.
    step: steps done.
    losses: float32 [step], the training loss of every step done.
    settings: the run's settings (JSON-serialisable), checked on resume.
    progress: other counters of the run (JSON-serialisable), e.g. training seconds so far.
  """
  os.makedirs(run_dir, exist_ok=True)
  arrays = {}
  for name, tree in (("params", params), ("opt_state", opt_state)):
    for i, leaf in enumerate(jax.tree_util.tree_leaves(tree)):
      arrays[f"{name}/{i}"] = np.asarray(leaf)
  arrays["rng"] = np.asarray(jax.random.key_data(rng) if _is_typed_key(rng) else rng)
  arrays["step"] = np.asarray(step, np.int64)
  arrays["losses"] = np.asarray(losses, np.float32)
  arrays["meta"] = np.asarray(json.dumps({"settings": settings, "progress": progress}))
  path = state_path(run_dir)
  tmp = os.path.join(run_dir, f".{STATE_FILE}.tmp{os.getpid()}.npz")
  with open(tmp, "wb") as f:
    np.savez(f, **arrays)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def _is_typed_key(rng) -> bool:
  return hasattr(rng, "dtype") and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key)


def read_meta(run_dir: str) -> dict:
  """{'settings', 'progress', 'step'} of the saved state, without reading the arrays' data."""
  with _open(run_dir) as data:
    meta = json.loads(str(data["meta"]))
    return {**meta, "step": int(data["step"])}


def load(run_dir: str, params_template: Any, opt_state_template: Any):
  """The saved state, rebuilt into the structures of the templates.

  Args:
    params_template / opt_state_template: a freshly initialised state of the same run (only
      its tree structure, leaf shapes and dtypes are used).

  Returns:
    (params, opt_state, rng uint32 [2], step, losses float32 [step], settings, progress).

  Raises ResumeError naming the file when it is missing, unreadable, or its leaves do not fit
  the templates (another network or optimiser).
  """
  path = state_path(run_dir)
  with _open(run_dir) as data:
    trees = []
    for name, template in (("params", params_template), ("opt_state", opt_state_template)):
      leaves, treedef = jax.tree_util.tree_flatten(template)
      stored = sorted((k for k in data.files if k.startswith(name + "/")), key=_index)
      if len(stored) != len(leaves):
        raise ResumeError(
            f"{path} holds {len(stored)} {name} leaves, this run has {len(leaves)}: "
            "saved by another network or optimiser"
        )
      restored = []
      for key, want in zip(stored, leaves):
        got = data[key]
        if got.shape != tuple(want.shape) or got.dtype != np.dtype(want.dtype):
          raise ResumeError(
              f"{path}: {key} is {got.dtype}{list(got.shape)}, this run needs "
              f"{np.dtype(want.dtype)}{list(want.shape)}"
          )
        restored.append(got)
      trees.append(jax.tree_util.tree_unflatten(treedef, restored))
    meta = json.loads(str(data["meta"]))
    step = int(data["step"])
    losses = np.asarray(data["losses"], np.float32)
    rng = np.asarray(data["rng"])
  if losses.shape != (step,):
    raise ResumeError(f"{path} records {step} steps but {losses.shape[0]} losses")
  return trees[0], trees[1], rng, step, losses, meta["settings"], meta["progress"]


def _index(key: str) -> int:
  return int(key.rsplit("/", 1)[1])


class _open:
  """np.load of the state file as a context manager, its failures as ResumeError."""

  def __init__(self, run_dir: str):
    self.path = state_path(run_dir)

  def __enter__(self):
    if not os.path.isfile(self.path):
      raise ResumeError(f"no run state to resume: {self.path} not found")
    try:
      self.data = np.load(self.path, allow_pickle=False)
      missing = {"meta", "step", "losses", "rng"} - set(self.data.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      raise ResumeError(f"{self.path} is not a readable run state ({e})") from None
    if missing:
      self.data.close()
      raise ResumeError(f"{self.path} is not a run state: no {sorted(missing)}")
    return self.data

  def __exit__(self, *exc):
    self.data.close()
    return False


def settings_differences(saved: dict, current: dict) -> list[str]:
  """'name: saved X, now Y' for every setting that differs (keys of either side)."""
  return [
      f"{name}: saved {saved.get(name)!r}, now {current.get(name)!r}"
      for name in sorted(set(saved) | set(current))
      if saved.get(name) != current.get(name)
  ]
