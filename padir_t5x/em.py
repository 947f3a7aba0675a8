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

Design: `plan(config)` is a pure list of `Stage`s, `ACTIONS` says what runs each one, and
`run` hands both to padir_t5x.stages.run_plan, the resumable engine: a finished stage (its
DONE marker) is skipped, a killed one is redone or, for t5x stages, resumed by t5x. t5x runs go
through a `StageRunner` (padir_t5x.t5x_jobs: `T5xRunner` shells out to `python -m t5x.train` /
`t5x.infer` / `t5x.eval`; tests use a fake), so this module never imports t5x.

Order: every dataset is a set of JSON-lines shards (padir_t5x.textio: {"index", "source",
"target"}, order preserved, tabs/newlines safe), read by the seqio task that
`padir_t5x.distill.shards_task` registers (with the model's `VOCABULARY` gin macro as its
vocabulary, as t5x requires equal vocabularies; this project's and t5x's model files define
it). t5x's outputs are checked line by line against the examples fed in (padir_t5x.t5x_jobs),
so a reordered or truncated output fails instead of mispairing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import gin

from padir_t5x import cli, em_report, t5x_jobs, textio
from padir_t5x.cli import UsageError
from padir_t5x.em_config import GIN_LIST_FIELDS
from padir_t5x.em_config import EmConfig
from padir_t5x.stages import (
    Action,
    EventHook,
    Stage,
    StageContext,
    StageError,
    check_plan,
    outputs_text,
    read_done,
    run_plan,
    stage_dir,
)
from padir_t5x.t5x_jobs import (
    REPO_ROOT,
    Candidate,
    EvalJob,
    StageRunner,
    T5xRunner,
    TrainJob,
    candidates_from_decodes,
    count_output_lines,
    final_checkpoint,
    infer_output_path,
    iter_infer_records,
    read_candidates,
    read_eval_metrics,
    run_infer,
    scores_from_records,
    write_candidates,
)

# Kept reachable as em.NAME: they lived here before padir_t5x.stages and .t5x_jobs existed.
from padir_t5x.stages import DONE_FILE as DONE_FILE
from padir_t5x.stages import PARTIAL_PREFIX as PARTIAL_PREFIX
from padir_t5x.stages import RESUMABLE_KINDS as RESUMABLE_KINDS
from padir_t5x.stages import STAGE_KINDS as STAGE_KINDS
from padir_t5x.stages import partial_dir as partial_dir
from padir_t5x.t5x_jobs import InferJob as InferJob
from padir_t5x.t5x_jobs import eval_stage_gin as eval_stage_gin
from padir_t5x.t5x_jobs import infer_stage_gin as infer_stage_gin
from padir_t5x.t5x_jobs import train_stage_gin as train_stage_gin

# Every error of a stage, its plan or its config (one class: the engine raises it too).
EmError = StageError


# ---------------------------------------------------------------------------------------------
# The plan.
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


# ---------------------------------------------------------------------------------------------
# Selection (the E-step's argmax), pure.
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
# Stage actions: each works in `work` (the partial directory) and returns its counts.
def read_training_pairs(config: EmConfig) -> list[tuple[str, str]]:
  """The raw training pairs (first `limit`), from files or a registered seqio task.

  A task must be registered before (the CLIs `import tasks` for that): the core never imports
  the `tasks` package, which builds on it.
  """
  if config.train_files is not None:
    pairs = textio.read_parallel_files(*config.train_files)
  else:
    pairs = _task_pairs(config.task, config.split, config.limit)
  return pairs[: config.limit] if config.limit else pairs


def _task_pairs(task_name: str, split: str, limit: int | None) -> list[tuple[str, str]]:
  import seqio  # Deferred: seqio loads TensorFlow, which training files do not need.

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
  # Stage data sets have one split, 'train' (what the stage gin files read).
  return textio.read_distilled_shards(directory, "train")


def _write_pairs(directory: str, pairs: Sequence[tuple[str, str]], num_shards: int) -> None:
  textio.write_distilled_shards(directory, "train", pairs, num_shards)


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
  return sum(1 for _ in textio.iter_distilled_shards(data_dir, "train"))


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


def action_ar_decode(ctx: StageContext) -> dict[str, Any]:
  c = ctx.config
  path = run_infer(
      ctx,
      c.teacher_infer_gin,
      c.teacher_bindings,
      ctx.input_dir("prepare", "data"),
      final_checkpoint(c.run_dir, ctx.stage.inputs[1]),
      "predict_with_aux",
      num_decodes=c.beam_size,
  )
  return {"decoded": count_output_lines(path), "beam_size": c.beam_size}


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
  path = run_infer(
      ctx,
      c.student_score_gin,
      c.student_bindings,
      ctx.input_dir(ctx.stage.inputs[0], "candidates"),
      final_checkpoint(c.run_dir, ctx.stage.inputs[1]),
      "score",
  )
  return {"scored": count_output_lines(path)}


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


ACTIONS: dict[str, Action] = {
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


def describe(stage: Stage) -> str:
  """The log line of an EM stage: what it does and what it writes."""
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
  }.get(stage.action, stage.action) + outputs_text(stage)


def run(
    config: EmConfig,
    runner: StageRunner,
    log: Callable[[str], None] = print,
    on_event: EventHook | None = None,
) -> dict[str, dict[str, Any]]:
  """Runs (or resumes) the EM plan of `config`; returns {stage name: DONE marker}.

  See padir_t5x.stages.run_plan for `on_event`.
  """
  return run_plan(
      config, runner, plan(config), ACTIONS, log=log, on_event=on_event, describe=describe
  )


def result_paths(config: EmConfig) -> dict[str, str]:
  """Where the final products are (those of the last planned stages).

  'ar_model' and 'nar_model' are the T5X model directories of the last AR and PaDIR training
  stages: the verifier and the drafter of draft-and-verify decoding (`python -m
  padir_t5x.translate --checkpoint AR_MODEL --draft_checkpoint NAR_MODEL`, needs t5x).
  """
  stages = plan(config)
  last_ar = [s for s in stages if s.action == "ar_train"]
  last_nar = [s for s in stages if s.action == "nar_train"]
  last_sel = [s for s in stages if s.action == "select"]
  paths = {}
  if last_ar:
    paths["ar_model"] = os.path.join(stage_dir(config.run_dir, last_ar[-1].name), "model")
  if last_nar:
    paths["nar_model"] = os.path.join(stage_dir(config.run_dir, last_nar[-1].name), "model")
    paths["distilled"] = os.path.join(
        stage_dir(config.run_dir, last_nar[-1].inputs[0]), "distilled"
    )
  if last_sel:
    paths["selected"] = os.path.join(stage_dir(config.run_dir, last_sel[-1].name), "selected")
  return paths


DEFAULT_METRICS = ("bleu", "chrf", "stutter_rate")


def report(config: EmConfig, metric_names: Sequence[str] = DEFAULT_METRICS) -> str:
  """A markdown table of every finished eval stage: model, its data, steps, time, metrics."""
  return em_report.eval_table(config.run_dir, plan(config), metric_names)


# ---------------------------------------------------------------------------------------------
# Checks before the first stage.
# The EmConfig fields that name gin files (the others of GIN_LIST_FIELDS are gin lines).
GIN_FILE_FIELDS = (
    "teacher_train_gin",
    "teacher_infer_gin",
    "student_train_gin",
    "student_score_gin",
    "teacher_eval_gin",
    "student_eval_gin",
)


def _gin_file_found(path: str, cwd: str) -> bool:
  """Whether t5x would find gin file `path`: absolute, or under the directory t5x runs in.

  t5x also searches the directory that holds its own package ('t5x/examples/...' files): those
  are left to t5x, since it may live in another interpreter.
  """
  if path.startswith("t5x/"):
    return True
  return os.path.isfile(path if os.path.isabs(path) else os.path.join(cwd, path))


def preflight(config: EmConfig, gin_fields: Sequence[str] = GIN_FILE_FIELDS) -> None:
  """Checks, before any stage, what would otherwise fail only once a stage reaches it.

  The training files exist; the gin files of `gin_fields` exist (relative paths: under
  config.cwd, default the repository root, where t5x runs); t5x is importable by the
  interpreter the stages use (config.python). Finished stages are not rerun, so a run whose t5x
  stages are all done needs no t5x (e.g. `--report` after the fact).

  Raises cli.UsageError naming the setting, the file or the package (and how to install it).
  """
  if config.train_files is not None:
    for name, path in zip(("source", "target"), config.train_files):
      if not os.path.isfile(path):
        raise UsageError(f"EmConfig.train_files: {name} file not found: {path}")
  cwd = config.cwd or REPO_ROOT
  for field in gin_fields:
    for path in getattr(config, field):
      if not _gin_file_found(path, cwd):
        raise UsageError(f"EmConfig.{field}: gin file not found: {path} (relative to {cwd})")
  pending = [
      stage
      for stage in plan(config)
      if stage.kind in RESUMABLE_KINDS + ("eval",) and read_done(config.run_dir, stage.name) is None
  ]
  if pending and not t5x_jobs.t5x_importable(config.python, cwd, dict(config.env)):
    interpreter = config.python or sys.executable
    raise UsageError(
        f"t5x is not importable by {interpreter} (needed from stage {pending[0].name} on): "
        f"install it with {t5x_jobs.T5X_INSTALL_HINT}, or pass --python with an interpreter "
        "that has it"
    )


# ---------------------------------------------------------------------------------------------
# Command line.
_FLAG_TYPES = {
    "rounds": cli.non_negative_int,
    "num_candidates": cli.positive_int,
    "beam_size": cli.positive_int,
    "ar_steps": cli.positive_int,
    "nar_steps": cli.positive_int,
    "limit": cli.positive_int,
    "checkpoint_period": cli.positive_int,
    "infer_batch_size": cli.positive_int,
    "num_shards": cli.positive_int,
}


def build_parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(
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
  cli.add_module_flag(parser)
  parser.add_argument("--split")
  for name, kind in _FLAG_TYPES.items():
    parser.add_argument(f"--{name}", type=kind)
  for name in GIN_LIST_FIELDS:
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


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  for path in args.gin_file:
    if not os.path.isfile(path) and not os.path.isfile(os.path.join(REPO_ROOT, path)):
      parser.error(f"argument --gin_file: file not found: {path}")
  config = config_from_args(args)
  try:
    config.validate()
  except EmError as error:
    parser.error(str(error))
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
    if not os.path.isdir(config.run_dir):
      parser.error(f"argument --run_dir: run directory not found: {config.run_dir}")
    print(report(config))
    return 0
  if config.task:
    # The entry point registers the padir_* tasks (and the user's, --module); the library
    # functions never import `tasks`.
    import tasks  # noqa: F401

    cli.import_modules(args.module)
    cli.check_registered_task(config.task)
  elif args.module:
    parser.error("argument --module: goes with --task")
  cli.check_output_path(
      parser,
      "--run_dir",
      config.run_dir,
      inputs={"--train_files": config.train_files},
      kind="dir",
      make_parents=True,
  )
  preflight(config)  # a UsageError: status 2, one line (cli.entry_point)
  runner = T5xRunner(python=config.python, cwd=config.cwd, env=config.env)
  run(config, runner)
  for name, path in result_paths(config).items():
    print(f"[em] {name}: {path}")
  if any(stage.kind == "eval" for stage in stages):
    print(report(config))
  return 0


if __name__ == "__main__":
  sys.exit(main())
