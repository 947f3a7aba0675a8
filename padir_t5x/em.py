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

Design: `plan(config)` is a pure list of `Stage`s, `ACTIONS` (padir_t5x/em_actions.py, with
the E-step's `select_best`) says what runs each one, and `run` hands both to
padir_t5x.stages.run_plan, the resumable engine: a finished stage (its DONE marker) is skipped, a
killed one is redone or, for t5x stages, resumed by t5x. t5x runs go through a `StageRunner`
(padir_t5x.t5x_adapter.jobs: `T5xRunner` shells out to `python -m t5x.train` / `t5x.infer` /
`t5x.eval`; tests use a fake), so this module never imports t5x.

Order: every dataset is a set of JSON-lines shards (padir_t5x.data.textio: {"index", "source",
"target"}, order preserved, tabs/newlines safe), read by the seqio task that
`padir_t5x.distill.shards_task` registers (with the model's `VOCABULARY` gin macro as its
vocabulary, as t5x requires equal vocabularies; this project's and t5x's model files define
it). t5x's outputs are checked line by line against the examples fed in
(padir_t5x.t5x_adapter.jobs), so a reordered or truncated output fails instead of mispairing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import gin

from padir_t5x import cli, em_report
from padir_t5x.t5x_adapter import jobs as t5x_jobs
from padir_t5x.cli import UsageError
from padir_t5x.em_actions import ACTIONS, EmError, describe
from padir_t5x.em_config import GIN_LIST_FIELDS
from padir_t5x.em_config import EmConfig
from padir_t5x.stages import EventHook, Stage, check_plan, read_done, run_plan, stage_dir
from padir_t5x.t5x_adapter.jobs import REPO_ROOT, StageRunner, T5xRunner

# Kept reachable as em.NAME: they lived here before padir_t5x.stages and the job runner existed.
from padir_t5x.stages import DONE_FILE as DONE_FILE
from padir_t5x.stages import PARTIAL_PREFIX as PARTIAL_PREFIX
from padir_t5x.stages import RESUMABLE_KINDS as RESUMABLE_KINDS
from padir_t5x.stages import STAGE_KINDS as STAGE_KINDS
from padir_t5x.stages import partial_dir as partial_dir
from padir_t5x.t5x_adapter.jobs import InferJob as InferJob
from padir_t5x.t5x_adapter.jobs import eval_stage_gin as eval_stage_gin
from padir_t5x.t5x_adapter.jobs import infer_stage_gin as infer_stage_gin
from padir_t5x.t5x_adapter.jobs import train_stage_gin as train_stage_gin


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
# Running the plan, and its products.
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
