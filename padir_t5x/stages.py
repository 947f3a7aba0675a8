"""A resumable pipeline of named stages, each finished exactly once (padir_t5x.em, .distill).

A plan is a list of `Stage`s; `run_plan` runs them in order, skipping each stage whose directory
`{run_dir}/stages/{name}/DONE.json` exists. A stage works in `stages/.partial-{name}` and is
renamed into place after its DONE marker (with counts) is written, so a kill at any moment leaves
either a finished stage or a partial directory. On rerun a partial directory of a python stage
(write/select/eval) is discarded and redone; that of a t5x stage (train/infer) is kept, because
t5x resumes by itself (train from its latest checkpoint, infer from its completed chunks).

The engine knows nothing of EM or t5x: the caller passes the stages, the action that runs each
`Stage.action`, and the runner handed to the actions. `{run_dir}/run.json` records the config,
so a rerun with different settings fails instead of mixing two runs in one directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

STAGE_KINDS = ("train", "infer", "select", "write", "eval")
# t5x resumes these by itself, so their partial directories are kept across kills.
RESUMABLE_KINDS = ("train", "infer")
DONE_FILE = "DONE.json"
RUN_FILE = "run.json"
PARTIAL_PREFIX = ".partial-"
# Config fields that may change between runs of the same run directory: more rounds only append
# stages; the interpreter and working directory do not change any stage's result.
MUTABLE_FIELDS = ("rounds", "python", "cwd", "env")


class StageError(RuntimeError):
  """A stage cannot run or its inputs are inconsistent; the message says where.

  padir_t5x.em calls it EmError (the same class).
  """


class RunConfig(Protocol):
  """What the engine needs of a run's config (padir_t5x.em.EmConfig is one)."""

  run_dir: str

  def validate(self) -> None:
    """Raises StageError if the config cannot run."""

  def to_json(self) -> dict[str, Any]:
    """The settings that define the run, as JSON values (stored in run.json)."""


@dataclasses.dataclass(frozen=True)
class Stage:
  """One step of the pipeline.

  name: also the stage directory's name. kind: one of STAGE_KINDS. action: the key of the
  function that runs it in the caller's action table. inputs: names of earlier stages whose
  outputs it reads. outputs: paths, relative to the stage directory, that it produces. round:
  EM round (0 = AR pre-training).
  """

  name: str
  kind: str
  action: str
  inputs: tuple[str, ...]
  outputs: tuple[str, ...]
  round: int = 0


@dataclasses.dataclass
class StageContext:
  """What an action gets: the run's config and runner, its stage, and `work`, the partial
  directory it writes into."""

  config: Any  # the caller's config (padir_t5x.em.EmConfig)
  runner: Any  # the caller's runner (padir_t5x.t5x_adapter.jobs.StageRunner)
  stage: Stage
  work: str

  def input_dir(self, stage_name: str, output: str = "") -> str:
    """The finished directory of an input stage, or one of its outputs."""
    return os.path.join(stage_dir(self.config.run_dir, stage_name), output)


# An action runs one stage in StageContext.work and returns its counts (kept in DONE.json).
Action = Callable[[StageContext], dict[str, Any]]
# on_event(stage, event): see run_plan.
EventHook = Callable[[Stage, str], None]


def check_plan(stages: Sequence[Stage]) -> None:
  """Names unique, kinds known, every input produced by an earlier stage."""
  seen = set()
  for stage in stages:
    if stage.kind not in STAGE_KINDS:
      raise StageError(f"stage {stage.name}: unknown kind {stage.kind!r}")
    if stage.name in seen:
      raise StageError(f"stage name {stage.name!r} appears twice in the plan")
    missing = [name for name in stage.inputs if name not in seen]
    if missing:
      raise StageError(f"stage {stage.name} reads {missing}, which no earlier stage produces")
    seen.add(stage.name)


def stage_dir(run_dir: str, name: str) -> str:
  """Where a finished stage's outputs and DONE marker are."""
  return os.path.join(run_dir, "stages", name)


def partial_dir(run_dir: str, name: str) -> str:
  """Where an unfinished stage works; renamed to stage_dir once its DONE marker is written."""
  return os.path.join(run_dir, "stages", PARTIAL_PREFIX + name)


def read_done(run_dir: str, name: str) -> dict[str, Any] | None:
  """The DONE marker of a finished stage, or None."""
  path = os.path.join(stage_dir(run_dir, name), DONE_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def outputs_text(stage: Stage) -> str:
  """' -> a, b': the stage's outputs, for its log line."""
  return f" -> {', '.join(stage.outputs) or '(outside)'}"


def default_description(stage: Stage) -> str:
  """A stage's log line when the caller gives no description: its action and outputs."""
  return stage.action + outputs_text(stage)


# ---------------------------------------------------------------------------------------------
# Durable files.
def fsync_dir(path: str) -> None:
  """Makes a rename inside `path` durable (best effort: not every file system allows it)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_json_atomic(path: str, value: Any) -> None:
  """Writes JSON to a temporary file, syncs it and renames it: readers never see half a file."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _finish(run_dir: str, stage: Stage) -> None:
  os.rename(partial_dir(run_dir, stage.name), stage_dir(run_dir, stage.name))
  fsync_dir(os.path.join(run_dir, "stages"))


def check_run_config(config: RunConfig, extra: Mapping[str, Any] | None = None) -> None:
  """Stores the config on the first run; later runs must agree except on MUTABLE_FIELDS.

  `extra`: more settings that define the run (e.g. distill's checkpoint), checked alike.
  """
  path = os.path.join(config.run_dir, RUN_FILE)
  current = config.to_json()
  current.update(json.loads(json.dumps(dict(extra or {}))))
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      stored = json.load(f)
    changed = sorted(
        k
        for k in set(stored) | set(current)
        if k not in MUTABLE_FIELDS and stored.get(k) != current.get(k)
    )
    if changed:
      details = "; ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in changed)
      raise StageError(
          f"{path}: this run directory was started with another configuration "
          f"({details}); use a new run_dir"
      )
  os.makedirs(os.path.join(config.run_dir, "stages"), exist_ok=True)
  write_json_atomic(path, current)


# ---------------------------------------------------------------------------------------------
# The resumable runner.
def run_plan(
    config: RunConfig,
    runner: Any,
    stages: Sequence[Stage],
    actions: Mapping[str, Action],
    log: Callable[[str], None] = print,
    on_event: EventHook | None = None,
    extra: Mapping[str, Any] | None = None,
    describe: Callable[[Stage], str] = default_description,
) -> dict[str, dict[str, Any]]:
  """Runs every unfinished stage in order; returns {stage name: DONE marker}.

  `actions` maps Stage.action to its function; `runner` is handed to the actions (in their
  StageContext); `extra` is recorded in run.json beside the config and must not change between
  runs; `describe(stage)` is the stage's log line.

  `on_event(stage, event)` is called at 'start', 'executed' (action returned), 'marked' (DONE
  written, not yet renamed) and 'finished'; tests raise there to simulate kills.
  """
  config.validate()
  stages = list(stages)
  check_plan(stages)
  unknown = sorted({s.action for s in stages} - set(actions))
  if unknown:
    raise StageError(f"no action for {unknown}")
  check_run_config(config, extra)
  hook = on_event or (lambda stage, event: None)
  done = {}
  total_start = time.time()
  for number, stage in enumerate(stages, start=1):
    final, work = stage_dir(config.run_dir, stage.name), partial_dir(config.run_dir, stage.name)
    marker = read_done(config.run_dir, stage.name)
    prefix = f"[em {number}/{len(stages)}] {stage.name} ({stage.kind})"
    if marker is None and os.path.exists(final):
      raise StageError(
          f"{final} exists without {DONE_FILE}; it was not written by this " "pipeline; remove it"
      )
    if marker is None and os.path.exists(os.path.join(work, DONE_FILE)):
      # Killed between writing the marker and the rename: the stage is complete.
      _finish(config.run_dir, stage)
      marker = read_done(config.run_dir, stage.name)
      log(f"{prefix}: completed before the interruption; moved into place")
    if marker is not None:
      log(f"{prefix}: done already ({_counts_text(marker['counts'])}), skipped")
      done[stage.name] = marker
      continue
    if os.path.exists(work):
      if stage.kind in RESUMABLE_KINDS:
        log(f"{prefix}: resuming t5x's partial work in {work}")
      else:
        shutil.rmtree(work)
    os.makedirs(work, exist_ok=True)
    log(f"{prefix}: {describe(stage)}")
    hook(stage, "start")
    start = time.time()
    counts = actions[stage.action](StageContext(config, runner, stage, work))
    seconds = round(time.time() - start, 1)
    hook(stage, "executed")
    marker = {
        "stage": dataclasses.asdict(stage),
        "counts": counts,
        "seconds": seconds,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    write_json_atomic(os.path.join(work, DONE_FILE), marker)
    hook(stage, "marked")
    _finish(config.run_dir, stage)
    hook(stage, "finished")
    log(f"{prefix}: done in {seconds:.1f} s ({_counts_text(counts)})")
    done[stage.name] = marker
  log(
      f"[em] all {len(stages)} stages done ({time.time() - total_start:.1f} s this run); "
      f"run directory {config.run_dir}"
  )
  return done


def _counts_text(counts: Mapping[str, Any]) -> str:
  return ", ".join(f"{k} {v}" for k, v in counts.items())
