"""The EM loop of Sun & Yang (2020) for PaDIR, as a resumable pipeline of t5x runs.

    python -m padir_t5x.em --run_dir=runs/em_quickstart --gin_file=gin/em/quickstart.gin
    python -m padir_t5x.em --run_dir=runs/em_quickstart ...      # after a kill: resumes

Round 0 trains the autoregressive (AR) model on the raw data. Round k = 1..K then runs
  rk_ar_decode   (infer)  the AR model of round k-1 beam-decodes N candidates per training source;
  rk_candidates  (write)  the candidates are checked against the sources and written as shards;
                          the top beam of each source is the NAR model's training data;
  rk_nar_train   (train)  M-step: PaDIR (the NAR model) trains on the AR outputs;
  rk_nar_score   (infer)  PaDIR scores every candidate (PadirModel.score_batch, t5x mode 'score');
  rk_select      (select) E-step: the best-scoring candidate per source (ties: best beam rank);
  rk_ar_train    (train)  the next AR model trains on the selected pairs.
The candidates are the support of the regularised posterior (the AR model's N-best list); the
NAR score picks among them. The last round's rk_nar_train checkpoint is the result.

For measurements, `raw_baseline` adds r0_nar_train (PaDIR on the raw targets, same steps), and
`student_eval_gin` / `teacher_eval_gin` (t5x.eval configs) add an `*_eval` stage after every
PaDIR / AR training: its DONE marker holds the metrics. So r0_nar_eval (raw targets),
r1_nar_eval (distilled by the round-0 AR model) and rK_nar_eval (after EM round K) are one
table, which `--report` prints.

Design: `plan(config)` is a pure list of `Stage`s; `run_plan` runs them in order, skipping each
stage whose directory `{run_dir}/stages/{name}/DONE.json` exists. A stage works in
`stages/.partial-{name}` and is renamed into place after its DONE marker (with counts) is
written, so a kill at any moment leaves either a finished stage or a partial directory. On rerun
a partial directory of a python stage (write/select) is discarded and redone; that of a t5x
stage is kept, because t5x resumes by itself (train from its latest checkpoint, infer from its
completed chunks). t5x runs go through a `StageRunner` (`T5xRunner` shells out to `python -m
t5x.train` / `t5x.infer`; tests use a fake), so this module never imports t5x.

Order: every dataset is a set of JSON-lines shards (padir_t5x.pipelines: {"index", "source",
"target"}, order preserved, tabs/newlines safe), read by the seqio task that
`padir_t5x.distill.shards_task` registers (with the model's `VOCABULARY` gin macro as its
vocabulary, as t5x requires equal vocabularies; this project's and t5x's model files define
it). t5x.infer with shuffle off writes one output line per input example, in input order; we
do not trust that blindly: line i's `inputs_pretokenized` (and, when scoring,
`targets_pretokenized`) must equal example i's text, else the stage fails naming the file, line
and index.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import (Any, Protocol)
from collections.abc import Callable, Iterator, Mapping, Sequence

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGE_KINDS = ("train", "infer", "select", "write", "eval")
# t5x resumes these by itself, so their partial directories are kept across kills.
RESUMABLE_KINDS = ("train", "infer")
DONE_FILE = "DONE.json"
RUN_FILE = "run.json"
PARTIAL_PREFIX = ".partial-"
# Config fields that may change between runs of the same run directory: more rounds only append
# stages; the interpreter and working directory do not change any stage's result.
MUTABLE_FIELDS = ("rounds", "python", "cwd", "env")


class EmError(RuntimeError):
  """A stage cannot run or its inputs are inconsistent; the message says where."""


# ---------------------------------------------------------------------------------------------
# Configuration.
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
    for name in (
        "train_files",
        "teacher_train_gin",
        "teacher_infer_gin",
        "student_train_gin",
        "student_score_gin",
        "teacher_bindings",
        "student_bindings",
        "teacher_eval_gin",
        "student_eval_gin",
    ):
      value = getattr(self, name)
      if value is not None:
        setattr(self, name, tuple(value))
    self.env = tuple(tuple(item) for item in self.env)

  def validate(self) -> None:
    if not self.run_dir:
      raise EmError("EmConfig.run_dir is required")
    if (self.train_files is None) == (self.task is None):
      raise EmError(
          "give exactly one of EmConfig.train_files (source, target) and " "EmConfig.task"
      )
    if self.train_files is not None and len(self.train_files) != 2:
      raise EmError(f"EmConfig.train_files must be (source, target), got " f"{self.train_files!r}")
    for name in ("rounds", "num_candidates", "beam_size", "ar_steps", "nar_steps", "num_shards"):
      if getattr(self, name) < (0 if name == "rounds" else 1):
        raise EmError(f"EmConfig.{name} must be positive, got {getattr(self, name)}")
    if self.num_candidates > self.beam_size:
      raise EmError(
          f"EmConfig.num_candidates ({self.num_candidates}) must not exceed "
          f"beam_size ({self.beam_size}): beam search returns beam_size "
          "hypotheses"
      )
    if self.limit is not None and self.limit < 1:
      raise EmError(f"EmConfig.limit must be positive, got {self.limit}")
    if self.checkpoint_period is not None:
      for steps in (self.ar_steps, self.nar_steps):
        if steps % self.checkpoint_period:
          raise EmError(
              f"EmConfig.checkpoint_period ({self.checkpoint_period}) must "
              f"divide ar_steps and nar_steps ({steps})"
          )

  def to_json(self) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(self)))


# ---------------------------------------------------------------------------------------------
# The plan.
@dataclasses.dataclass(frozen=True)
class Stage:
  """One step of the pipeline.

  name: also the stage directory's name. kind: one of STAGE_KINDS. action: what runs it
  (see ACTIONS). inputs: names of earlier stages whose outputs it reads. outputs: paths,
  relative to the stage directory, that it produces. round: EM round (0 = AR pre-training).
  """

  name: str
  kind: str
  action: str
  inputs: tuple[str, ...]
  outputs: tuple[str, ...]
  round: int = 0


def _trained(config: EmConfig, train: Stage) -> list[Stage]:
  """A train stage, followed by its eval stage when the model's eval gin is configured."""
  teacher = train.action == "ar_train"
  if not (config.teacher_eval_gin if teacher else config.student_eval_gin):
    return [train]
  return [
      train,
      Stage(
          train.name[: -len("_train")] + "_eval",
          "eval",
          "ar_eval" if teacher else "nar_eval",
          (train.name,),
          ("eval",),
          train.round,
      ),
  ]


def _ar_train(config: EmConfig, k: int, data_stage: str) -> list[Stage]:
  return _trained(
      config, Stage(f"r{k}_ar_train", "train", "ar_train", (data_stage,), ("model",), k)
  )


def _nar_train(config: EmConfig, k: int, data_stage: str) -> list[Stage]:
  return _trained(
      config, Stage(f"r{k}_nar_train", "train", "nar_train", (data_stage,), ("model",), k)
  )


def plan(config: EmConfig) -> list[Stage]:
  """The stages of an EM run, in execution order (pure; stage names are stable)."""
  stages = [
      Stage("prepare", "write", "prepare", (), ("data",), 0),
      *_ar_train(config, 0, "prepare"),
  ]
  if config.raw_baseline:
    stages += _nar_train(config, 0, "prepare")
  for k in range(1, config.rounds + 1):
    previous_ar = f"r{k - 1}_ar_train"
    stages += [
        Stage(f"r{k}_ar_decode", "infer", "ar_decode", ("prepare", previous_ar), ("infer",), k),
        Stage(
            f"r{k}_candidates",
            "write",
            "candidates",
            ("prepare", f"r{k}_ar_decode"),
            ("candidates", "candidates.meta.jsonl", "distilled"),
            k,
        ),
        *_nar_train(config, k, f"r{k}_candidates"),
    ]
    if k < config.rounds or config.final_e_step:
      stages += [
          Stage(
              f"r{k}_nar_score",
              "infer",
              "nar_score",
              (f"r{k}_candidates", f"r{k}_nar_train"),
              ("infer",),
              k,
          ),
          Stage(
              f"r{k}_select",
              "select",
              "select",
              ("prepare", f"r{k}_candidates", f"r{k}_nar_score"),
              ("selected", "selection.jsonl"),
              k,
          ),
          *_ar_train(config, k, f"r{k}_select"),
      ]
  check_plan(stages)
  return stages


def check_plan(stages: Sequence[Stage]) -> None:
  """Names unique, kinds known, every input produced by an earlier stage."""
  seen = set()
  for stage in stages:
    if stage.kind not in STAGE_KINDS:
      raise EmError(f"stage {stage.name}: unknown kind {stage.kind!r}")
    if stage.name in seen:
      raise EmError(f"stage name {stage.name!r} appears twice in the plan")
    missing = [name for name in stage.inputs if name not in seen]
    if missing:
      raise EmError(f"stage {stage.name} reads {missing}, which no earlier stage produces")
    seen.add(stage.name)


def stage_dir(run_dir: str, name: str) -> str:
  return os.path.join(run_dir, "stages", name)


def partial_dir(run_dir: str, name: str) -> str:
  return os.path.join(run_dir, "stages", PARTIAL_PREFIX + name)


def read_done(run_dir: str, name: str) -> dict[str, Any] | None:
  """The DONE marker of a finished stage, or None."""
  path = os.path.join(stage_dir(run_dir, name), DONE_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def final_checkpoint(run_dir: str, stage_name: str) -> str:
  """The checkpoint a finished train stage left (its DONE marker names it)."""
  done = read_done(run_dir, stage_name)
  if done is None:
    raise EmError(f"stage {stage_name} is not finished (no {DONE_FILE})")
  return os.path.join(stage_dir(run_dir, stage_name), done["counts"]["checkpoint"])


# ---------------------------------------------------------------------------------------------
# Selection (the E-step's argmax), pure.
@dataclasses.dataclass(frozen=True)
class Candidate:
  """Candidate `rank` (0 = the AR model's best beam) for source `source_index`."""

  source_index: int
  rank: int
  source: str
  target: str
  ar_score: float = 0.0


def select_best(
    candidates: Sequence[Candidate], scores: Sequence[float], num_sources: int
) -> list[tuple[Candidate, float]]:
  """The highest-scoring candidate of every source, in source order.

  Ties go to the lowest rank (the AR model's preference). Every source index in
  [0, num_sources) must have at least one candidate, and no (source, rank) may repeat.

  Returns:
    [(chosen candidate, its score)] of length num_sources, entry i for source i.
  Raises:
    EmError naming the offending source index / candidate.
  """
  if len(candidates) != len(scores):
    raise EmError(f"{len(candidates)} candidates but {len(scores)} scores")
  best: dict[int, tuple[Candidate, float]] = {}
  seen = set()
  for position, (candidate, score) in enumerate(zip(candidates, scores)):
    key = (candidate.source_index, candidate.rank)
    if key in seen:
      raise EmError(
          f"candidate {position}: source index {candidate.source_index} rank "
          f"{candidate.rank} appears twice"
      )
    seen.add(key)
    if not 0 <= candidate.source_index < num_sources:
      raise EmError(
          f"candidate {position}: source index {candidate.source_index} is "
          f"outside [0, {num_sources})"
      )
    if not isinstance(score, (int, float)) or math.isnan(score):
      raise EmError(
          f"candidate {position} (source index {candidate.source_index}, rank "
          f"{candidate.rank}): score {score!r} is not a number"
      )
    current = best.get(candidate.source_index)
    if (
        current is None
        or score > current[1]
        or (score == current[1] and candidate.rank < current[0].rank)
    ):
      best[candidate.source_index] = (candidate, float(score))
  missing = [i for i in range(num_sources) if i not in best]
  if missing:
    raise EmError(
        f"source index {missing[0]} has no candidate"
        + (f" ({len(missing)} sources lack one)" if len(missing) > 1 else "")
    )
  return [best[i] for i in range(num_sources)]


# ---------------------------------------------------------------------------------------------
# Reading t5x.infer outputs.
@dataclasses.dataclass(frozen=True)
class InferRecord:
  """One line of a t5x.infer JSON-lines output."""

  path: str
  line: int
  inputs: Mapping[str, Any]
  value: Any  # 'prediction' (predict modes) or 'score' (score mode)
  aux: Mapping[str, Any]


def infer_output_path(output_dir: str, mode: str) -> str:
  """The single `{task}-{mode}.jsonl-00000-of-00001` file t5x.infer wrote into output_dir."""
  suffix = f"-{mode}.jsonl-00000-of-00001"
  found = sorted(name for name in os.listdir(output_dir) if name.endswith(suffix))
  if len(found) != 1:
    raise EmError(
        f"{output_dir}: expected one t5x.infer output '*{suffix}', found "
        f"{found or 'none'} (t5x infer sharding is not supported here)"
    )
  return os.path.join(output_dir, found[0])


def iter_infer_records(path: str, mode: str) -> Iterator[InferRecord]:
  """Parses a t5x.infer output file; EmError naming file and line on malformed lines."""
  field = "score" if mode == "score" else "prediction"
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise EmError(f"{path}: line {number} is not valid JSON ({e})") from None
      if not isinstance(record, dict) or not isinstance(record.get("inputs"), dict):
        raise EmError(f"{path}: line {number}: no 'inputs' object")
      if field not in record:
        raise EmError(f"{path}: line {number}: no '{field}' field (t5x mode {mode!r}?)")
      yield InferRecord(path, number, record["inputs"], record[field], record.get("aux") or {})


def _check_text(record: InferRecord, feature: str, expected: str, index: int) -> None:
  key = f"{feature}_pretokenized"
  if key not in record.inputs:
    raise EmError(
        f"{record.path}: line {record.line}: no inputs.{key}; the task must keep "
        "its raw text (seqio.preprocessors.tokenize does)"
    )
  if record.inputs[key] != expected:
    raise EmError(
        f"{record.path}: line {record.line}: inputs.{key} "
        f"{record.inputs[key]!r} differs from example {index} ({expected!r}): "
        "t5x.infer output is not in input order"
    )


def _check_count(path: str, got: int, expected: int) -> None:
  if got != expected:
    raise EmError(f"{path}: {got} lines for {expected} input examples")


def candidates_from_decodes(
    pairs: Sequence[tuple[str, str]], records: Sequence[InferRecord], num_candidates: int
) -> list[Candidate]:
  """Candidates (ranks 0..N-1 per source, best beam first) from a beam-search output.

  `records` come from t5x.infer mode 'predict_with_aux' with return_all_decodes: 'prediction'
  holds the beam's texts in increasing score order (t5x's convention), aux 'scores' their
  log-probabilities.
  """
  candidates = []
  for index, ((source, _), record) in enumerate(zip(pairs, records)):
    _check_text(record, "inputs", source, index)
    beams = record.value
    if not isinstance(beams, list):
      raise EmError(
          f"{record.path}: line {record.line}: 'prediction' is one text, not the "
          "beam; bind models.DecoderParams.return_all_decodes = True"
      )
    if len(beams) < num_candidates:
      raise EmError(
          f"{record.path}: line {record.line}: {len(beams)} beams, need "
          f"{num_candidates}; is the model's default_decoder_params "
          "@models.DecoderParams() with num_decodes >= num_candidates?"
      )
    scores = record.aux.get("scores", [0.0] * len(beams))
    if not isinstance(scores, list) or len(scores) != len(beams):
      raise EmError(
          f"{record.path}: line {record.line}: aux.scores does not match the " f"{len(beams)} beams"
      )
    # Best beam last in t5x; rank 0 = best.
    for rank in range(num_candidates):
      text = beams[len(beams) - 1 - rank]
      if not isinstance(text, str):
        raise EmError(f"{record.path}: line {record.line}: beam {rank} is not a text")
      candidates.append(Candidate(index, rank, source, text, float(scores[len(beams) - 1 - rank])))
  _check_count(records[0].path if records else "<t5x output>", len(records), len(pairs))
  return candidates


def scores_from_records(
    candidates: Sequence[Candidate], records: Sequence[InferRecord]
) -> list[float]:
  """The score of each candidate from a t5x.infer mode 'score' output, checked line by line."""
  scores = []
  for index, (candidate, record) in enumerate(zip(candidates, records)):
    _check_text(record, "inputs", candidate.source, index)
    _check_text(record, "targets", candidate.target, index)
    if not isinstance(record.value, (int, float)):
      raise EmError(f"{record.path}: line {record.line}: score {record.value!r} is not a " "number")
    scores.append(float(record.value))
  _check_count(records[0].path if records else "<t5x output>", len(records), len(candidates))
  return scores


# ---------------------------------------------------------------------------------------------
# Candidate files.
def write_candidates(directory: str, candidates: Sequence[Candidate], num_shards: int) -> None:
  """Shards `candidates/` (flat, one pair per candidate) + `candidates.meta.jsonl`."""
  from padir_t5x import pipelines  # TensorFlow: imported only when a stage needs it

  pipelines.write_distilled_shards(
      os.path.join(directory, "candidates"),
      "train",
      [(c.source, c.target) for c in candidates],
      num_shards,
  )
  with open(os.path.join(directory, "candidates.meta.jsonl"), "w", encoding="utf-8") as f:
    for flat, c in enumerate(candidates):
      f.write(
          json.dumps(
              {
                  "index": flat,
                  "source_index": c.source_index,
                  "rank": c.rank,
                  "ar_score": c.ar_score,
              }
          )
          + "\n"
      )


def read_candidates(directory: str) -> list[Candidate]:
  from padir_t5x import pipelines

  pairs = pipelines.read_distilled_shards(os.path.join(directory, "candidates"), "train")
  meta_path = os.path.join(directory, "candidates.meta.jsonl")
  candidates = []
  with open(meta_path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      try:
        meta = json.loads(line)
        fields = [meta[k] for k in ("index", "source_index", "rank", "ar_score")]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise EmError(
            f"{meta_path}: line {number}: not a candidate record " f"({type(e).__name__}: {e})"
        ) from None
      if fields[0] != number - 1 or number > len(pairs):
        raise EmError(
            f"{meta_path}: line {number}: index {fields[0]} does not "
            f"match the {len(pairs)} candidate shards"
        )
      source, target = pairs[number - 1]
      candidates.append(Candidate(fields[1], fields[2], source, target, fields[3]))
  _check_count(meta_path, len(candidates), len(pairs))
  return candidates


# ---------------------------------------------------------------------------------------------
# Running t5x.
@dataclasses.dataclass(frozen=True)
class TrainJob:
  """t5x.train of `gin_files` on the shards in data_dir for `steps` steps into model_dir."""

  gin_files: tuple[str, ...]
  bindings: tuple[str, ...]
  data_dir: str
  model_dir: str
  steps: int
  checkpoint_period: int
  target_language: str = "en"


@dataclasses.dataclass(frozen=True)
class InferJob:
  """t5x.infer (mode 'predict_with_aux' or 'score') of a checkpoint on data_dir's shards."""

  gin_files: tuple[str, ...]
  bindings: tuple[str, ...]
  data_dir: str
  checkpoint: str
  output_dir: str
  mode: str
  num_decodes: int | None = None  # beam size for 'predict_with_aux'
  batch_size: int | None = None
  target_language: str = "en"


@dataclasses.dataclass(frozen=True)
class EvalJob:
  """t5x.eval of a checkpoint on `split` of the task the gin files name."""

  gin_files: tuple[str, ...]
  bindings: tuple[str, ...]
  checkpoint: str
  output_dir: str
  split: str


class StageRunner(Protocol):
  """Runs the t5x part of train, infer and eval stages (real: T5xRunner; tests: a fake)."""

  def train(self, job: TrainJob) -> None:
    """Leaves `{job.model_dir}/checkpoint_{job.steps}`; raises on failure."""

  def infer(self, job: InferJob) -> None:
    """Leaves t5x.infer's `*-{job.mode}.jsonl-00000-of-00001` in job.output_dir."""

  def evaluate(self, job: EvalJob) -> None:
    """Leaves t5x.eval's `inference_eval/{task}-metrics.jsonl` in job.output_dir."""


def _gin_str(value: str) -> str:
  return repr(str(value))


def _task_lines(data_dir: str, target_language: str) -> list[str]:
  return [
      "from padir_t5x import distill",
      "MIXTURE_OR_TASK_NAME = @distill.shards_task()",
      f"distill.shards_task.directory = {_gin_str(os.path.abspath(data_dir))}",
      "distill.shards_task.vocabulary = %VOCABULARY",
      f"distill.shards_task.target_language = {_gin_str(target_language)}",
  ]


def train_stage_gin(job: TrainJob) -> str:
  """gin bound after the job's files: data, steps, directories; no evaluation."""
  lines = [
      "# Written by padir_t5x.em: stage settings, bound after the experiment's files.",
      "from __gin__ import dynamic_registration",
      "import __main__ as train_script",
      "from t5x import utils",
      *_task_lines(job.data_dir, job.target_language),
      f"MODEL_DIR = {_gin_str(os.path.abspath(job.model_dir))}",
      f"TRAIN_STEPS = {job.steps}",
      f"CHECKPOINT_PERIOD = {job.checkpoint_period}",
      f"EVAL_PERIOD = {job.checkpoint_period}",
      f"utils.SaveCheckpointConfig.period = {job.checkpoint_period}",
      "utils.SaveCheckpointConfig.keep = 1",
      # The data sets of a stage have only a 'train' split; evaluate checkpoints afterwards
      # with t5x.eval on the real task.
      "train_script.train.train_eval_dataset_cfg = None",
      "train_script.train.infer_eval_dataset_cfg = None",
      *job.bindings,
  ]
  return "\n".join(lines) + "\n"


def infer_stage_gin(job: InferJob) -> str:
  """gin bound after the job's files: data (split 'train', in order), checkpoint, mode."""
  lines = [
      "# Written by padir_t5x.em: stage settings, bound after the experiment's files.",
      "from __gin__ import dynamic_registration",
      "import __main__ as infer_script",
      "from t5x import models",
      "from t5x import utils",
      *_task_lines(job.data_dir, job.target_language),
      f"CHECKPOINT_PATH = {_gin_str(os.path.abspath(job.checkpoint))}",
      f"INFER_OUTPUT_DIR = {_gin_str(os.path.abspath(job.output_dir))}",
      f"infer_script.infer.mode = {_gin_str(job.mode)}",
      "utils.DatasetConfig.split = 'train'",
      "utils.DatasetConfig.shuffle = False",
      "utils.DatasetConfig.mixture_or_task_name = %MIXTURE_OR_TASK_NAME",
  ]
  if job.batch_size:
    lines.append(f"utils.DatasetConfig.batch_size = {job.batch_size}")
  if job.num_decodes:
    lines += [
        f"models.DecoderParams.num_decodes = {job.num_decodes}",
        "models.DecoderParams.return_all_decodes = True",
    ]
  return "\n".join(lines + list(job.bindings)) + "\n"


def eval_stage_gin(job: EvalJob) -> str:
  """gin bound after the job's t5x.eval files: checkpoint, output directory, split."""
  lines = [
      "# Written by padir_t5x.em: stage settings, bound after the experiment's files.",
      "from __gin__ import dynamic_registration",
      "from t5x import utils",
      f"CHECKPOINT_PATH = {_gin_str(os.path.abspath(job.checkpoint))}",
      f"EVAL_OUTPUT_DIR = {_gin_str(os.path.abspath(job.output_dir))}",
      f"utils.DatasetConfig.split = {_gin_str(job.split)}",
      *job.bindings,
  ]
  return "\n".join(lines) + "\n"


def read_eval_metrics(output_dir: str) -> dict[str, dict[str, float]]:
  """{task: {metric: value}} from t5x.eval's `inference_eval/*-metrics.jsonl` (last line).

  seqio's JSONLogger writes one line per evaluated step: {"step": N, "bleu": ..., ...};
  non-numeric values (e.g. text samples) are left out.
  """
  directory = os.path.join(output_dir, "inference_eval")
  suffix = "-metrics.jsonl"
  names = (
      sorted(n for n in os.listdir(directory) if n.endswith(suffix))
      if os.path.isdir(directory)
      else []
  )
  if not names:
    raise EmError(f"{directory}: no '*{suffix}' written by t5x.eval")
  metrics = {}
  for name in names:
    path = os.path.join(directory, name)
    with open(path, encoding="utf-8") as f:
      lines = [line for line in f if line.strip()]
    if not lines:
      raise EmError(f"{path}: empty")
    try:
      record = json.loads(lines[-1])
    except json.JSONDecodeError as e:
      raise EmError(f"{path}: line {len(lines)} is not valid JSON ({e})") from None
    if not isinstance(record, dict):
      raise EmError(f"{path}: line {len(lines)} is not an object")
    metrics[name[: -len(suffix)]] = {
        key: float(value)
        for key, value in record.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"
    }
  return metrics


@dataclasses.dataclass
class T5xRunner:
  """Runs `python -m t5x.train|t5x.infer` as subprocesses; output goes to `t5x.log`."""

  python: str = ""
  cwd: str = ""
  env: tuple[tuple[str, str], ...] = ()
  log: Callable[[str], None] = print

  def _run(self, module: str, gin_files: Sequence[str], stage_gin: str, work_dir: str) -> None:
    os.makedirs(work_dir, exist_ok=True)
    gin_path = os.path.join(work_dir, f"{module.split('.')[-1]}_stage.gin")
    with open(gin_path, "w", encoding="utf-8") as f:
      f.write(stage_gin)
    cwd = self.cwd or REPO_ROOT
    command = [
        self.python or sys.executable,
        "-m",
        module,
        *[f"--gin_file={path}" for path in gin_files],
        f"--gin_file={gin_path}",
        f"--gin_search_paths={cwd}",
        "--alsologtostderr",
    ]
    log_path = os.path.join(work_dir, "t5x.log")
    self.log(f"  $ (cd {cwd} && {' '.join(command)}) >> {log_path}")
    env = dict(os.environ, **dict(self.env))
    with open(log_path, "a", encoding="utf-8") as log_file:
      result = subprocess.run(
          command, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, check=False
      )
    if result.returncode != 0:
      with open(log_path, encoding="utf-8", errors="replace") as f:
        tail = f.read()[-3000:]
      raise EmError(
          f"{module} exited with status {result.returncode}; log: {log_path}\n" f"...{tail}"
      )

  def train(self, job: TrainJob) -> None:
    self._run(
        "t5x.train", job.gin_files, train_stage_gin(job), os.path.dirname(job.model_dir.rstrip("/"))
    )

  def infer(self, job: InferJob) -> None:
    self._run(
        "t5x.infer",
        job.gin_files,
        infer_stage_gin(job),
        os.path.dirname(job.output_dir.rstrip("/")),
    )

  def evaluate(self, job: EvalJob) -> None:
    self._run(
        "t5x.eval", job.gin_files, eval_stage_gin(job), os.path.dirname(job.output_dir.rstrip("/"))
    )


# ---------------------------------------------------------------------------------------------
# Stage actions: each works in `work` (the partial directory) and returns its counts.
@dataclasses.dataclass
class StageContext:
  config: EmConfig
  runner: StageRunner
  stage: Stage
  work: str

  def input_dir(self, stage_name: str, output: str = "") -> str:
    return os.path.join(stage_dir(self.config.run_dir, stage_name), output)


def read_training_pairs(config: EmConfig) -> list[tuple[str, str]]:
  """The raw training pairs (first `limit`), from files or a seqio task."""
  from padir_t5x import pipelines

  if config.train_files is not None:
    pairs = pipelines.read_parallel_files(*config.train_files)
  else:
    pairs = _task_pairs(config.task, config.split, config.limit)
  return pairs[: config.limit] if config.limit else pairs


def _task_pairs(task_name: str, split: str, limit: int | None) -> list[tuple[str, str]]:
  import seqio
  import tasks  # noqa: F401  (registers the padir_* tasks)

  task = seqio.get_mixture_or_task(task_name)
  dataset = task.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False)
  if limit:
    dataset = dataset.take(limit)
  pairs = []
  for number, example in enumerate(dataset.as_numpy_iterator()):
    for key in ("inputs_pretokenized", "targets_pretokenized"):
      if key not in example:
        raise EmError(f"task {task_name!r} split {split!r} example {number}: no {key}")
    pairs.append(
        (
            example["inputs_pretokenized"].decode("utf-8"),
            example["targets_pretokenized"].decode("utf-8"),
        )
    )
  return pairs


def _read_pairs(directory: str) -> list[tuple[str, str]]:
  from padir_t5x import pipelines

  return pipelines.read_distilled_shards(directory, "train")


def _write_pairs(directory: str, pairs: Sequence[tuple[str, str]], num_shards: int) -> None:
  from padir_t5x import pipelines

  pipelines.write_distilled_shards(directory, "train", pairs, num_shards)


def action_prepare(ctx: StageContext) -> dict[str, Any]:
  pairs = read_training_pairs(ctx.config)
  if not pairs:
    raise EmError("the training data are empty")
  _write_pairs(os.path.join(ctx.work, "data"), pairs, ctx.config.num_shards)
  return {"examples": len(pairs)}


def _train(ctx: StageContext, gin_files, bindings, data_dir: str, steps: int) -> dict[str, Any]:
  model_dir = os.path.join(ctx.work, "model")
  job = TrainJob(
      tuple(gin_files),
      tuple(bindings),
      data_dir,
      model_dir,
      steps,
      ctx.config.checkpoint_period or steps,
      ctx.config.target_language,
  )
  ctx.runner.train(job)
  checkpoint = os.path.join("model", f"checkpoint_{steps}")
  if not os.path.isdir(os.path.join(ctx.work, checkpoint)):
    raise EmError(f"training finished without {os.path.join(ctx.work, checkpoint)}")
  return {"steps": steps, "checkpoint": checkpoint, "train_examples": _count_examples(data_dir)}


def _count_examples(data_dir: str) -> int:
  from padir_t5x import pipelines

  return sum(1 for _ in pipelines.iter_distilled_shards(data_dir, "train"))


def action_ar_train(ctx: StageContext) -> dict[str, Any]:
  c = ctx.config
  source = ctx.stage.inputs[0]
  data = ctx.input_dir(source, "data" if source == "prepare" else "selected")
  return _train(ctx, c.teacher_train_gin, c.teacher_bindings, data, c.ar_steps)


def action_nar_train(ctx: StageContext) -> dict[str, Any]:
  c = ctx.config
  source = ctx.stage.inputs[0]
  data = ctx.input_dir(source, "data" if source == "prepare" else "distilled")
  return _train(ctx, c.student_train_gin, c.student_bindings, data, c.nar_steps)


def _evaluate(ctx: StageContext, gin_files, bindings) -> dict[str, Any]:
  output_dir = os.path.join(ctx.work, "eval")
  train_stage = ctx.stage.inputs[0]
  checkpoint = final_checkpoint(ctx.config.run_dir, train_stage)
  ctx.runner.evaluate(
      EvalJob(tuple(gin_files), tuple(bindings), checkpoint, output_dir, ctx.config.eval_split)
  )
  return {
      "split": ctx.config.eval_split,
      "checkpoint": os.path.relpath(checkpoint, ctx.config.run_dir),
      "metrics": read_eval_metrics(output_dir),
  }


def action_ar_eval(ctx: StageContext) -> dict[str, Any]:
  return _evaluate(ctx, ctx.config.teacher_eval_gin, ctx.config.teacher_bindings)


def action_nar_eval(ctx: StageContext) -> dict[str, Any]:
  return _evaluate(ctx, ctx.config.student_eval_gin, ctx.config.student_bindings)


def _infer(
    ctx: StageContext, gin_files, bindings, data_dir, checkpoint, mode, num_decodes=None
) -> str:
  output_dir = os.path.join(ctx.work, "infer")
  ctx.runner.infer(
      InferJob(
          tuple(gin_files),
          tuple(bindings),
          data_dir,
          checkpoint,
          output_dir,
          mode,
          num_decodes,
          ctx.config.infer_batch_size,
          ctx.config.target_language,
      )
  )
  return infer_output_path(output_dir, mode)


def _count_lines(path: str) -> int:
  with open(path, "rb") as f:
    return sum(1 for _ in f)


def action_ar_decode(ctx: StageContext) -> dict[str, Any]:
  c = ctx.config
  path = _infer(
      ctx,
      c.teacher_infer_gin,
      c.teacher_bindings,
      ctx.input_dir("prepare", "data"),
      final_checkpoint(c.run_dir, ctx.stage.inputs[1]),
      "predict_with_aux",
      num_decodes=c.beam_size,
  )
  return {"decoded": _count_lines(path), "beam_size": c.beam_size}


def action_candidates(ctx: StageContext) -> dict[str, Any]:
  c = ctx.config
  pairs = _read_pairs(ctx.input_dir("prepare", "data"))
  decode_dir = ctx.input_dir(ctx.stage.inputs[1], "infer")
  path = infer_output_path(decode_dir, "predict_with_aux")
  records = list(iter_infer_records(path, "predict_with_aux"))
  candidates = candidates_from_decodes(pairs, records, c.num_candidates)
  write_candidates(ctx.work, candidates, c.num_shards)
  # The NAR model's training data: the AR model's best beam per source (sequence-level KD).
  _write_pairs(
      os.path.join(ctx.work, "distilled"),
      [(cand.source, cand.target) for cand in candidates if cand.rank == 0],
      c.num_shards,
  )
  return {"sources": len(pairs), "candidates": len(candidates)}


def action_nar_score(ctx: StageContext) -> dict[str, Any]:
  c = ctx.config
  path = _infer(
      ctx,
      c.student_score_gin,
      c.student_bindings,
      ctx.input_dir(ctx.stage.inputs[0], "candidates"),
      final_checkpoint(c.run_dir, ctx.stage.inputs[1]),
      "score",
  )
  return {"scored": _count_lines(path)}


def action_select(ctx: StageContext) -> dict[str, Any]:
  pairs = _read_pairs(ctx.input_dir("prepare", "data"))
  candidates = read_candidates(ctx.input_dir(ctx.stage.inputs[1]))
  path = infer_output_path(ctx.input_dir(ctx.stage.inputs[2], "infer"), "score")
  scores = scores_from_records(candidates, list(iter_infer_records(path, "score")))
  chosen = select_best(candidates, scores, len(pairs))
  for index, ((source, _), (candidate, _)) in enumerate(zip(pairs, chosen)):
    if candidate.source != source:
      raise EmError(
          f"source index {index}: candidate source {candidate.source!r} differs "
          f"from the training source {source!r}"
      )
  _write_pairs(
      os.path.join(ctx.work, "selected"),
      [(cand.source, cand.target) for cand, _ in chosen],
      ctx.config.num_shards,
  )
  with open(os.path.join(ctx.work, "selection.jsonl"), "w", encoding="utf-8") as f:
    for index, (cand, score) in enumerate(chosen):
      f.write(
          json.dumps(
              {"index": index, "rank": cand.rank, "nar_score": score, "ar_score": cand.ar_score}
          )
          + "\n"
      )
  return {
      "sources": len(chosen),
      "candidates": len(candidates),
      "not_top_beam": sum(1 for cand, _ in chosen if cand.rank != 0),
  }


ACTIONS: dict[str, Callable[[StageContext], dict[str, Any]]] = {
    "prepare": action_prepare,
    "ar_train": action_ar_train,
    "ar_decode": action_ar_decode,
    "candidates": action_candidates,
    "nar_train": action_nar_train,
    "nar_score": action_nar_score,
    "select": action_select,
    "ar_eval": action_ar_eval,
    "nar_eval": action_nar_eval,
}


# ---------------------------------------------------------------------------------------------
# The resumable runner.
EventHook = Callable[[Stage, str], None]


def _fsync_dir(path: str) -> None:
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


def _write_json_atomic(path: str, value: Any) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _finish(run_dir: str, stage: Stage) -> None:
  os.rename(partial_dir(run_dir, stage.name), stage_dir(run_dir, stage.name))
  _fsync_dir(os.path.join(run_dir, "stages"))


def check_run_config(config: EmConfig, extra: Mapping[str, Any] | None = None) -> None:
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
      raise EmError(
          f"{path}: this run directory was started with another configuration "
          f"({details}); use a new run_dir"
      )
  os.makedirs(os.path.join(config.run_dir, "stages"), exist_ok=True)
  _write_json_atomic(path, current)


def run_plan(
    config: EmConfig,
    runner: StageRunner,
    stages: Sequence[Stage] | None = None,
    log: Callable[[str], None] = print,
    on_event: EventHook | None = None,
    actions: Mapping[str, Callable[[StageContext], dict[str, Any]]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
  """Runs every unfinished stage in order; returns {stage name: DONE marker}.

  `actions` maps Stage.action to its function (default ACTIONS); `extra` is recorded in
  run.json beside the config and must not change between runs.

  `on_event(stage, event)` is called at 'start', 'executed' (action returned), 'marked' (DONE
  written, not yet renamed) and 'finished'; tests raise there to simulate kills.
  """
  config.validate()
  stages = list(stages if stages is not None else plan(config))
  check_plan(stages)
  actions = ACTIONS if actions is None else actions
  unknown = sorted({s.action for s in stages} - set(actions))
  if unknown:
    raise EmError(f"no action for {unknown}")
  check_run_config(config, extra)
  hook = on_event or (lambda stage, event: None)
  done = {}
  total_start = time.time()
  for number, stage in enumerate(stages, start=1):
    final, work = stage_dir(config.run_dir, stage.name), partial_dir(config.run_dir, stage.name)
    marker = read_done(config.run_dir, stage.name)
    prefix = f"[em {number}/{len(stages)}] {stage.name} ({stage.kind})"
    if marker is None and os.path.exists(final):
      raise EmError(
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
    _write_json_atomic(os.path.join(work, DONE_FILE), marker)
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


def describe(stage: Stage) -> str:
  return {
      "prepare": "write the raw training pairs as shards",
      "ar_train": "train the AR model on "
      + ("the raw data" if stage.round == 0 else f"round {stage.round}'s selected pairs"),
      "ar_decode": "AR model beam-decodes the training sources",
      "candidates": "check the beams against the sources; write candidates + top-1 corpus",
      "nar_train": (
          "train PaDIR on the raw targets (baseline)"
          if stage.round == 0
          else "M-step: train PaDIR on the AR outputs"
      ),
      "ar_eval": "t5x.eval of the AR model",
      "nar_eval": "t5x.eval of PaDIR",
      "nar_score": "PaDIR scores every candidate",
      "select": "E-step: keep the best-scoring candidate per source",
      "teacher_decode": "the teacher beam-decodes the training sources",
      "write_distilled": "check the beams against the sources; write the corpus",
  }.get(stage.action, stage.action) + f" -> {', '.join(stage.outputs) or '(outside)'}"


def result_paths(config: EmConfig) -> dict[str, str]:
  """Where the final products are (those of the last planned stages)."""
  stages = plan(config)
  last_nar = [s for s in stages if s.action == "nar_train"]
  last_sel = [s for s in stages if s.action == "select"]
  paths = {}
  if last_nar:
    paths["nar_model"] = os.path.join(stage_dir(config.run_dir, last_nar[-1].name), "model")
    paths["distilled"] = os.path.join(
        stage_dir(config.run_dir, last_nar[-1].inputs[0]), "distilled"
    )
  if last_sel:
    paths["selected"] = os.path.join(stage_dir(config.run_dir, last_sel[-1].name), "selected")
  return paths


def _trained_on(stage: Stage) -> str:
  if stage.action == "ar_train":
    return "raw targets" if stage.round == 0 else f"round {stage.round} E-step selection"
  if stage.round == 0:
    return "raw targets"
  return (
      "AR round 0 top beam (distilled)"
      if stage.round == 1
      else f"AR round {stage.round - 1} top beam (EM round {stage.round})"
  )


def _format_metric(name: str, values: Mapping[str, float]) -> str:
  if name not in values:
    return ""
  # Rates (stutter) are fractions: two decimals would round 1.5% to 0.02.
  return f"{values[name]:.4f}" if name.endswith("rate") else f"{values[name]:.2f}"


def report(config: EmConfig, metric_names: Sequence[str] = ("bleu", "chrf", "stutter_rate")) -> str:
  """A markdown table of every finished eval stage: model, its data, steps, time, metrics."""
  rows = []
  header = None
  stages = {stage.name: stage for stage in plan(config)}
  for stage in stages.values():
    if stage.kind != "eval":
      continue
    done, train_done = read_done(config.run_dir, stage.name), read_done(
        config.run_dir, stage.inputs[0]
    )
    if done is None or train_done is None:
      continue
    train_stage = stages[stage.inputs[0]]
    for task, values in sorted(done["counts"]["metrics"].items()):
      names = [m for m in metric_names if m in values] or sorted(values)
      if header is None:
        header = names
      rows.append(
          [
              stage.inputs[0],
              "AR" if stage.action == "ar_eval" else "PaDIR",
              _trained_on(train_stage),
              str(train_done["counts"]["steps"]),
              str(train_done["counts"]["train_examples"]),
              f"{train_done['seconds'] / 60:.1f}",
              f"{task} ({done['counts']['split']})",
              *[_format_metric(m, values) for m in header],
          ]
      )
  if not rows:
    return "(no finished eval stage)"
  columns = [
      "stage",
      "model",
      "trained on",
      "steps",
      "train pairs",
      "train min",
      "eval on",
      *header,
  ]
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line.
_FLAG_TYPES = {
    "rounds": int,
    "num_candidates": int,
    "beam_size": int,
    "ar_steps": int,
    "nar_steps": int,
    "limit": int,
    "checkpoint_period": int,
    "infer_batch_size": int,
    "num_shards": int,
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m padir_t5x.em",
      description=__doc__.split("\n\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
      "--gin_file",
      action="append",
      default=[],
      help="gin file(s) binding EmConfig.* (e.g. gin/em/quickstart.gin)",
  )
  parser.add_argument(
      "--gin",
      action="append",
      default=[],
      dest="gin_bindings",
      help="gin binding, e.g. --gin 'EmConfig.rounds = 2'",
  )
  parser.add_argument("--run_dir", help="run directory (resumes if it exists)")
  parser.add_argument("--train_files", nargs=2, metavar=("SOURCE", "TARGET"))
  parser.add_argument("--task", help="seqio task whose split is the training data")
  parser.add_argument("--split")
  for name, kind in _FLAG_TYPES.items():
    parser.add_argument(f"--{name}", type=kind)
  for name in (
      "teacher_train_gin",
      "teacher_infer_gin",
      "student_train_gin",
      "student_score_gin",
      "teacher_bindings",
      "student_bindings",
      "teacher_eval_gin",
      "student_eval_gin",
  ):
    parser.add_argument(
        f"--{name}", action="append", help="repeat for several (replaces the configured list)"
    )
  parser.add_argument("--final_e_step", choices=("true", "false"))
  parser.add_argument("--raw_baseline", choices=("true", "false"))
  parser.add_argument("--eval_split")
  parser.add_argument("--python", help="interpreter with t5x (default: this one)")
  parser.add_argument("--cwd", help="directory t5x runs in (default: the repository root)")
  parser.add_argument("--dry_run", action="store_true", help="print the plan and stop")
  parser.add_argument(
      "--report", action="store_true", help="print the table of finished eval stages and stop"
  )
  return parser


def config_from_args(args: argparse.Namespace) -> EmConfig:
  """EmConfig from the gin files/bindings, then the flags (flags win)."""
  gin.add_config_file_search_path(REPO_ROOT)
  # Not finalized: a stage may import modules with gin configurables later (the padir_*
  # tasks, when the training data are a seqio task), which a locked config would refuse.
  gin.parse_config_files_and_bindings(args.gin_file, args.gin_bindings, finalize_config=False)
  config = EmConfig()
  overrides = {}
  for field in dataclasses.fields(EmConfig):
    value = getattr(args, field.name, None)
    if value is not None:
      overrides[field.name] = value
  for name in ("final_e_step", "raw_baseline"):
    if name in overrides:
      overrides[name] = overrides[name] == "true"
  # The two data options exclude each other: a flag for one replaces a gin binding of the other.
  if "train_files" in overrides and "task" not in overrides:
    overrides["task"] = None
  if "task" in overrides and "train_files" not in overrides:
    overrides["train_files"] = None
  return dataclasses.replace(config, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  config = config_from_args(args)
  config.validate()
  stages = plan(config)
  if args.dry_run:
    for stage in stages:
      state = "done" if read_done(config.run_dir, stage.name) else "todo"
      print(
          f"{state}  {stage.name:16s} {stage.kind:6s} inputs={list(stage.inputs)} "
          f"outputs={list(stage.outputs)}"
      )
    return 0
  if args.report:
    print(report(config))
    return 0
  runner = T5xRunner(python=config.python, cwd=config.cwd, env=config.env)
  run_plan(config, runner, stages)
  for name, path in result_paths(config).items():
    print(f"[em] {name}: {path}")
  if any(stage.kind == "eval" for stage in stages):
    print(report(config))
  return 0


if __name__ == "__main__":
  sys.exit(main())
