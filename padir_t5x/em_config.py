"""What defines an EM run (padir_t5x.em) or a distillation (padir_t5x.distill): `EmConfig`.

It is a gin configurable (gin/em/*.gin bind `EmConfig.*`), stored in `{run_dir}/run.json` on the
first run and compared on every later one (padir_t5x.stages.check_run_config).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import gin

from padir_t5x.stages import StageError

# The fields that hold lists of gin files or bindings (the CLI repeats a flag for each item).
GIN_LIST_FIELDS = (
    "teacher_train_gin",
    "teacher_infer_gin",
    "student_train_gin",
    "student_score_gin",
    "teacher_bindings",
    "student_bindings",
    "teacher_eval_gin",
    "student_eval_gin",
)


@gin.configurable
@dataclasses.dataclass
class EmConfig:
  """Everything that defines an EM run (stored in {run_dir}/run.json).

  Training data: `train_files` (source file, target file; line-aligned text) or `task` (a
  registered seqio task; its `split` is read through the task's preprocessors and the raw
  `inputs_pretokenized`/`targets_pretokenized` texts are kept). `limit` keeps the first
  examples only (e.g. 64 for a smoke test).

  gin files: `*_train_gin` are full t5x.train configs (model + run settings, e.g.
  gin/experiments/quickstart_ar.gin), `teacher_infer_gin` / `student_score_gin` full
  t5x.infer configs; the stage settings (data, steps, directories, mode) are bound after
  them. `*_bindings` are extra gin lines appended last (e.g. "WARMUP_STEPS = 2").
  """

  run_dir: str = ""
  train_files: tuple[str, str] | None = None
  task: str | None = None
  split: str = "train"
  limit: int | None = None
  rounds: int = 2
  num_candidates: int = 4
  beam_size: int = 4
  ar_steps: int = 1500
  nar_steps: int = 1500
  checkpoint_period: int | None = None  # default: one checkpoint, at the end of a stage
  teacher_train_gin: tuple[str, ...] = ("gin/experiments/quickstart_ar.gin",)
  teacher_infer_gin: tuple[str, ...] = ("gin/em/quickstart_ar_infer.gin",)
  student_train_gin: tuple[str, ...] = ("gin/experiments/quickstart.gin",)
  student_score_gin: tuple[str, ...] = ("gin/experiments/quickstart_infer.gin",)
  teacher_bindings: tuple[str, ...] = ()
  student_bindings: tuple[str, ...] = ()
  # Measurement: PaDIR on the raw targets too (stage r0_nar_train), and t5x.eval after each
  # training (empty = no eval stages) on `eval_split` of the eval gin's task.
  raw_baseline: bool = False
  teacher_eval_gin: tuple[str, ...] = ()
  student_eval_gin: tuple[str, ...] = ()
  eval_split: str = "validation"
  infer_batch_size: int | None = None
  target_language: str = "en"
  num_shards: int = 4
  # False: the last round stops after its NAR training (its E-step would only feed a round
  # K+1); raising `rounds` later still extends the run.
  final_e_step: bool = True
  python: str = ""  # default: this interpreter
  cwd: str = ""  # directory the t5x commands run in (gin paths are relative to it)
  env: tuple[tuple[str, str], ...] = ()  # extra environment variables for t5x commands

  def __post_init__(self):
    for name in ("train_files", *GIN_LIST_FIELDS):
      value = getattr(self, name)
      if value is not None:
        setattr(self, name, tuple(value))
    self.env = tuple(tuple(item) for item in self.env)

  def validate(self) -> None:
    if not self.run_dir:
      raise StageError("EmConfig.run_dir is required")
    if (self.train_files is None) == (self.task is None):
      raise StageError(
          "give exactly one of EmConfig.train_files (source, target) and " "EmConfig.task"
      )
    if self.train_files is not None and len(self.train_files) != 2:
      raise StageError(
          f"EmConfig.train_files must be (source, target), got " f"{self.train_files!r}"
      )
    for name in ("rounds", "num_candidates", "beam_size", "ar_steps", "nar_steps", "num_shards"):
      if getattr(self, name) < (0 if name == "rounds" else 1):
        raise StageError(f"EmConfig.{name} must be positive, got {getattr(self, name)}")
    if self.num_candidates > self.beam_size:
      raise StageError(
          f"EmConfig.num_candidates ({self.num_candidates}) must not exceed "
          f"beam_size ({self.beam_size}): beam search returns beam_size "
          "hypotheses"
      )
    if self.limit is not None and self.limit < 1:
      raise StageError(f"EmConfig.limit must be positive, got {self.limit}")
    if self.checkpoint_period is not None:
      for steps in (self.ar_steps, self.nar_steps):
        if steps % self.checkpoint_period:
          raise StageError(
              f"EmConfig.checkpoint_period ({self.checkpoint_period}) must "
              f"divide ar_steps and nar_steps ({steps})"
          )

  def to_json(self) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(self)))
