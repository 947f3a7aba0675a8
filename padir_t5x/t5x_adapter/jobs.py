"""t5x jobs for the stages of padir_t5x.em / .distill, and readers of what t5x writes.

* `TrainJob` / `InferJob` / `EvalJob` say what one t5x run does; `train_stage_gin` etc. turn one
  into the gin lines bound after the experiment's own gin files; `T5xRunner` runs `python -m
  t5x.train|t5x.infer|t5x.eval` as a subprocess (tests use a fake `StageRunner`), so this module
  never imports t5x.
* t5x.infer's JSON-lines output (`InferRecord`) is checked line by line against the examples fed
  in: with shuffle off t5x writes one line per input example, in input order, and we do not trust
  that blindly; line i's `inputs_pretokenized` (and, when scoring, `targets_pretokenized`) must
  equal example i's text, else the stage fails naming the file, line and index.
* The N-best `Candidate`s from a beam-search output, their scores from a score output, and their
  files (flat shards + `candidates.meta.jsonl`); t5x.eval's metrics.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from padir_t5x import progress
from padir_t5x.data import textio
from padir_t5x.stages import DONE_FILE, StageContext, StageError, read_done, stage_dir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    raise StageError(f"{directory}: no '*{suffix}' written by t5x.eval")
  metrics = {}
  for name in names:
    path = os.path.join(directory, name)
    with open(path, encoding="utf-8") as f:
      lines = [line for line in f if line.strip()]
    if not lines:
      raise StageError(f"{path}: empty")
    try:
      record = json.loads(lines[-1])
    except json.JSONDecodeError as e:
      raise StageError(f"{path}: line {len(lines)} is not valid JSON ({e})") from None
    if not isinstance(record, dict):
      raise StageError(f"{path}: line {len(lines)} is not an object")
    metrics[name[: -len(suffix)]] = {
        key: float(value)
        for key, value in record.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"
    }
  return metrics


# How a user installs t5x beside this package (docs/training.md): t5x, airio and jestimator are
# not on PyPI and pin git HEADs that conflict with ours, so they come --no-deps at the commits of
# constraints/t5x.txt, after the t5x extra's PyPI packages.
T5X_INSTALL_HINT = (
    "pip install -e '.[t5x]' -c constraints/t5x.txt, then "
    "pip install --no-deps -c constraints/t5x.txt t5x airio jestimator (docs/training.md)"
)
# t5x.train's metric writer (clu's LoggingWriter) logs "[STEP] collection=train loss=..., ..."
# every stats period; the last such step in t5x.log is the run's progress.
_TRAIN_STEP = re.compile(r"\[(\d+)\] collection=train\b")


def t5x_importable(python: str = "", cwd: str = "", env: Mapping[str, str] | None = None) -> bool:
  """Whether `python -m t5x.train` would find t5x: `python` (default: this interpreter) looks for
  it from `cwd` (default: the repository root) with `env` added, as T5xRunner runs it.

  Only the package is looked up (importlib.util.find_spec, a fraction of a second), not imported.
  """
  command = [
      python or sys.executable,
      "-c",
      "import importlib.util, sys; sys.exit(importlib.util.find_spec('t5x') is None)",
  ]
  try:
    result = subprocess.run(
        command,
        cwd=cwd or REPO_ROOT,
        env=dict(os.environ, **dict(env or {})),
        capture_output=True,
        check=False,
    )
  except OSError:  # the interpreter itself is missing
    return False
  return result.returncode == 0


def last_train_step(log_path: str, tail_bytes: int = 1 << 16) -> int | None:
  """The last step t5x.train logged in `log_path` (its last `tail_bytes`), None if none yet."""
  try:
    with open(log_path, "rb") as f:
      f.seek(max(os.path.getsize(log_path) - tail_bytes, 0))
      text = f.read().decode("utf-8", errors="replace")
  except OSError:
    return None
  steps = _TRAIN_STEP.findall(text)
  return int(steps[-1]) if steps else None


@dataclasses.dataclass
class T5xRunner:
  """Runs `python -m t5x.train|t5x.infer|t5x.eval` as subprocesses; output goes to `t5x.log`.

  Every `progress_every` seconds it logs a progress line: for t5x.train the last step t5x
  logged, of the job's total, with rate and ETA (padir_t5x.progress); else the time so far.
  """

  python: str = ""
  cwd: str = ""
  env: tuple[tuple[str, str], ...] = ()
  log: Callable[[str], None] = print
  progress_every: float = 60.0

  def _run(
      self,
      module: str,
      gin_files: Sequence[str],
      stage_gin: str,
      work_dir: str,
      total_steps: int | None = None,
  ) -> None:
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
      process = subprocess.Popen(
          command, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT
      )
      try:
        returncode = self._wait(process, module, log_path, total_steps)
      except BaseException:  # Ctrl-C, or a failure while logging: do not leave t5x running
        process.kill()
        process.wait()
        raise
    if returncode != 0:
      with open(log_path, encoding="utf-8", errors="replace") as f:
        tail = f.read()[-3000:]
      raise StageError(f"{module} exited with status {returncode}; log: {log_path}\n...{tail}")

  def _wait(self, process, module: str, log_path: str, total_steps: int | None) -> int:
    """Waits for `process`, logging a progress line every `progress_every` seconds.

    The rate (and ETA) counts from the first step seen in the log, so that neither t5x's
    compilation nor the steps of an earlier, resumed run (the log is appended to) distort it.
    """
    start = time.perf_counter()
    first_seen = None  # (time, step) of the first step this run logged
    next_report = start + self.progress_every
    resumed_at = last_train_step(log_path) if total_steps else None
    while True:
      try:
        return process.wait(timeout=max(0.05, min(5.0, next_report - time.perf_counter())))
      except subprocess.TimeoutExpired:
        pass
      now = time.perf_counter()
      if now < next_report:
        continue
      next_report = now + self.progress_every
      step = last_train_step(log_path) if total_steps else None
      if step is None or (first_seen is None and step == resumed_at):
        self.log(f"  {module}: running for {progress.clock(now - start)} (log: {log_path})")
        continue
      if first_seen is None:
        first_seen = (now, step)
      seen_for = now - first_seen[0]
      rate = (step - first_seen[1]) / seen_for if seen_for > 0 else math.nan
      self.log(f"  {module}: {progress.progress_text(step, total_steps, now - start, rate=rate)}")

  def train(self, job: TrainJob) -> None:
    self._run(
        "t5x.train",
        job.gin_files,
        train_stage_gin(job),
        os.path.dirname(job.model_dir.rstrip("/")),
        total_steps=job.steps,
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
    raise StageError(
        f"{output_dir}: expected one t5x.infer output '*{suffix}', found "
        f"{found or 'none'} (t5x infer sharding is not supported here)"
    )
  return os.path.join(output_dir, found[0])


def iter_infer_records(path: str, mode: str) -> Iterator[InferRecord]:
  """Parses a t5x.infer output file; StageError naming file and line on malformed lines."""
  field = "score" if mode == "score" else "prediction"
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise StageError(f"{path}: line {number} is not valid JSON ({e})") from None
      if not isinstance(record, dict) or not isinstance(record.get("inputs"), dict):
        raise StageError(f"{path}: line {number}: no 'inputs' object")
      if field not in record:
        raise StageError(f"{path}: line {number}: no '{field}' field (t5x mode {mode!r}?)")
      yield InferRecord(path, number, record["inputs"], record[field], record.get("aux") or {})


def _check_text(record: InferRecord, feature: str, expected: str, index: int) -> None:
  key = f"{feature}_pretokenized"
  if key not in record.inputs:
    raise StageError(
        f"{record.path}: line {record.line}: no inputs.{key}; the task must keep "
        "its raw text (seqio.preprocessors.tokenize does)"
    )
  if record.inputs[key] != expected:
    raise StageError(
        f"{record.path}: line {record.line}: inputs.{key} "
        f"{record.inputs[key]!r} differs from example {index} ({expected!r}): "
        "t5x.infer output is not in input order"
    )


def _check_count(path: str, got: int, expected: int) -> None:
  if got != expected:
    raise StageError(f"{path}: {got} lines for {expected} input examples")


@dataclasses.dataclass(frozen=True)
class Candidate:
  """Candidate `rank` (0 = the AR model's best beam) for source `source_index`."""

  source_index: int
  rank: int
  source: str
  target: str
  ar_score: float = 0.0


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
      raise StageError(
          f"{record.path}: line {record.line}: 'prediction' is one text, not the "
          "beam; bind models.DecoderParams.return_all_decodes = True"
      )
    if len(beams) < num_candidates:
      raise StageError(
          f"{record.path}: line {record.line}: {len(beams)} beams, need "
          f"{num_candidates}; is the model's default_decoder_params "
          "@models.DecoderParams() with num_decodes >= num_candidates?"
      )
    scores = record.aux.get("scores", [0.0] * len(beams))
    if not isinstance(scores, list) or len(scores) != len(beams):
      raise StageError(
          f"{record.path}: line {record.line}: aux.scores does not match the " f"{len(beams)} beams"
      )
    # Best beam last in t5x; rank 0 = best.
    for rank in range(num_candidates):
      text = beams[len(beams) - 1 - rank]
      if not isinstance(text, str):
        raise StageError(f"{record.path}: line {record.line}: beam {rank} is not a text")
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
      raise StageError(
          f"{record.path}: line {record.line}: score {record.value!r} is not a " "number"
      )
    scores.append(float(record.value))
  _check_count(records[0].path if records else "<t5x output>", len(records), len(candidates))
  return scores


# ---------------------------------------------------------------------------------------------
# Candidate files.
def write_candidates(directory: str, candidates: Sequence[Candidate], num_shards: int) -> None:
  """Shards `candidates/` (flat, one pair per candidate) + `candidates.meta.jsonl`."""
  textio.write_distilled_shards(
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
  """The candidates `write_candidates` wrote, checked against their shards line by line."""
  pairs = textio.read_distilled_shards(os.path.join(directory, "candidates"), "train")
  meta_path = os.path.join(directory, "candidates.meta.jsonl")
  candidates = []
  with open(meta_path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      try:
        meta = json.loads(line)
        fields = [meta[k] for k in ("index", "source_index", "rank", "ar_score")]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise StageError(
            f"{meta_path}: line {number}: not a candidate record " f"({type(e).__name__}: {e})"
        ) from None
      if fields[0] != number - 1 or number > len(pairs):
        raise StageError(
            f"{meta_path}: line {number}: index {fields[0]} does not "
            f"match the {len(pairs)} candidate shards"
        )
      source, target = pairs[number - 1]
      candidates.append(Candidate(fields[1], fields[2], source, target, fields[3]))
  _check_count(meta_path, len(candidates), len(pairs))
  return candidates


# ---------------------------------------------------------------------------------------------
# Finished stages and infer stages.
def final_checkpoint(run_dir: str, stage_name: str) -> str:
  """The checkpoint a finished train stage left (its DONE marker names it)."""
  done = read_done(run_dir, stage_name)
  if done is None:
    raise StageError(f"stage {stage_name} is not finished (no {DONE_FILE})")
  return os.path.join(stage_dir(run_dir, stage_name), done["counts"]["checkpoint"])


def run_infer(
    ctx: StageContext,
    gin_files: Sequence[str],
    bindings: Sequence[str],
    data_dir: str,
    checkpoint: str,
    mode: str,
    num_decodes: int | None = None,
) -> str:
  """Runs t5x.infer for an infer stage into `{ctx.work}/infer`; returns its output file.

  The batch size and target language come from the stage's config (infer_batch_size,
  target_language); `num_decodes` is the beam size for mode 'predict_with_aux'.
  """
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


def count_output_lines(path: str) -> int:
  """Lines in a t5x output file (raw, unparsed: an infer stage's count)."""
  with open(path, "rb") as f:
    return sum(1 for _ in f)
