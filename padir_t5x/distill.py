"""Sequence-level distillation: an AR teacher beam-decodes a training set with t5x.infer.

    python -m padir_t5x.distill --checkpoint=/tmp/ar/checkpoint_1500 \
        --train_files DATA/train.de DATA/train.en --output_dir=/data/distilled \
        --corpus=quickstart_de_en
    # WMT, then train with the *_distilled tasks (PADIR_DISTILLED_DIR=/data/distilled):
    python -m padir_t5x.distill --checkpoint=... --task=padir_wmt14_de_en \
        --teacher_gin=gin/experiments/recipe/wmt_ar.gin \
        --teacher_gin=gin/experiments/recipe/infer.gin \
        --teacher_gin=gin/partitioning/data_parallel.gin --teacher_binding="VOCAB_PAIR = 'de_en'" \
        --output_dir=/data/distilled --corpus=wmt14_de_en --num_shards=16

The result is `{output_dir}/{corpus}/train.jsonl-NNNNN-of-NNNNN` (padir_t5x.data.textio format:
{"index", "source", "target"}, JSON-escaped, so tabs and newlines inside sentences survive;
shard order = corpus order), exactly where the padir_*_distilled tasks read it. It runs as a
resumable pipeline (padir_t5x.stages): prepare (sources as shards) -> decode (t5x.infer, shuffle
off, beam search) -> write; rerunning after a kill resumes; work files are kept in
`{output_dir}/{corpus}.work`. The order of t5x's outputs is checked line by line against the
sources (see padir_t5x.t5x_adapter.jobs), so a reordered or truncated output fails instead of
mispairing.

`shards_task` (below) is the seqio task over such shards that every em/distill t5x stage uses.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any
from collections.abc import Sequence

from padir_t5x import cli, em, em_actions, stages
from padir_t5x.t5x_adapter import jobs as t5x_jobs
from padir_t5x.data import textio

DISTILL_STAGES = [
    stages.Stage("prepare", "write", "prepare", (), ("data",)),
    stages.Stage("teacher_decode", "infer", "teacher_decode", ("prepare",), ("infer",)),
    stages.Stage("write", "write", "write_distilled", ("prepare", "teacher_decode"), ()),
]


# ---------------------------------------------------------------------------------------------
# The seqio task over JSON-lines shards (used from the gin files that padir_t5x.em writes).
def shards_task_name(directory: str, split: str = "train") -> str:
  """A stable task name per (absolute directory, split)."""
  key = f"{os.path.abspath(directory)}\0{split}".encode("utf-8")
  return f"padir_shards_{hashlib.sha1(key).hexdigest()[:12]}"


def shards_task(
    directory: str,
    vocabulary,
    split: str = "train",
    target_language: str = "en",
    name: str | None = None,
) -> str:
  """Registers (once) a translation task whose `split` is the shards in `directory`.

  Pass the model's own vocabulary (gin: `%VOCABULARY`), since t5x checks that task and model
  vocabularies are equal. Returns the task name, so gin can bind
  `MIXTURE_OR_TASK_NAME = @distill.shards_task()`.
  """
  import seqio
  # TensorFlow: only the t5x processes that read the task need it
  from padir_t5x.data import pipelines
  from tasks import common

  name = name or shards_task_name(directory, split)
  if name in seqio.TaskRegistry.names():
    return name
  textio.distilled_shard_paths(directory, split)  # fail now, naming the directory

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
    del shuffle_files, seed  # Order matters for inference; t5x.train shuffles examples.
    return pipelines.distilled_dataset(directory, split)

  source = seqio.FunctionDataSource(dataset_fn, splits=(split,))
  seqio.TaskRegistry.add_provider(name, common.make_task(name, source, vocabulary, target_language))
  return name


# ---------------------------------------------------------------------------------------------
# Distillation as a pipeline.
def _decode_action(checkpoint: str) -> stages.Action:
  """The teacher (at `checkpoint`) beam-decodes the prepared sources with t5x.infer."""

  def action(ctx: stages.StageContext) -> dict[str, Any]:
    c = ctx.config
    path = t5x_jobs.run_infer(
        ctx,
        c.teacher_infer_gin,
        c.teacher_bindings,
        ctx.input_dir("prepare", "data"),
        checkpoint,
        "predict_with_aux",
        num_decodes=c.beam_size,
    )
    return {"decoded": t5x_jobs.count_output_lines(path), "beam_size": c.beam_size}

  return action


def _write_action(output_dir: str) -> stages.Action:
  """The decodes, checked against the sources, become the corpus shards in `output_dir`."""

  def action(ctx: stages.StageContext) -> dict[str, Any]:
    pairs = textio.read_distilled_shards(ctx.input_dir("prepare", "data"), "train")
    path = t5x_jobs.infer_output_path(ctx.input_dir("teacher_decode", "infer"), "predict_with_aux")
    candidates = t5x_jobs.candidates_from_decodes(
        pairs, list(t5x_jobs.iter_infer_records(path, "predict_with_aux")), 1
    )
    shards = textio.write_distilled_shards(
        output_dir, "train", [(c.source, c.target) for c in candidates], ctx.config.num_shards
    )
    changed = sum(1 for (_, target), c in zip(pairs, candidates) if c.target != target)
    return {
        "examples": len(candidates),
        "shards": len(shards),
        "differs_from_reference": changed,
        "output_dir": output_dir,
    }

  return action


def describe(stage: stages.Stage) -> str:
  """The log line of a distillation stage."""
  text = {
      "teacher_decode": "the teacher beam-decodes the training sources",
      "write_distilled": "check the beams against the sources; write the corpus",
  }.get(stage.action)
  return em_actions.describe(stage) if text is None else text + stages.outputs_text(stage)


def distill(
    config: em.EmConfig,
    checkpoint: str,
    output_dir: str,
    runner: t5x_jobs.StageRunner | None = None,
    log=print,
) -> dict[str, Any]:
  """Runs (or resumes) the distillation; `config.run_dir` is the work directory.

  Uses config's training data (train_files or task, limit), teacher_infer_gin,
  teacher_bindings, beam_size, num_shards, infer_batch_size.
  """
  runner = runner or t5x_jobs.T5xRunner(python=config.python, cwd=config.cwd, env=config.env)
  actions = {
      "prepare": em_actions.action_prepare,
      "teacher_decode": _decode_action(checkpoint),
      "write_distilled": _write_action(output_dir),
  }
  done = stages.run_plan(
      config,
      runner,
      DISTILL_STAGES,
      actions,
      log=log,
      extra={"checkpoint": os.path.abspath(checkpoint), "output_dir": os.path.abspath(output_dir)},
      describe=describe,
  )
  return done["write"]["counts"]


def build_parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(
      prog="python -m padir_t5x.distill", description=__doc__.split("\n\n")[0]
  )
  parser.add_argument("--checkpoint", required=True, help="the AR teacher's t5x checkpoint")
  parser.add_argument(
      "--output_dir", required=True, help="distilled-corpus root ($PADIR_DISTILLED_DIR)"
  )
  parser.add_argument(
      "--corpus",
      required=True,
      help="subdirectory, e.g. wmt14_de_en (what the *_distilled task reads)",
  )
  parser.add_argument("--train_files", nargs=2, metavar=("SOURCE", "TARGET"))
  parser.add_argument("--task", help="seqio task whose split is decoded")
  cli.add_module_flag(parser)
  parser.add_argument("--split", default="train")
  parser.add_argument("--limit", type=cli.positive_int)
  parser.add_argument(
      "--teacher_gin",
      action="append",
      help="t5x.infer gin files of the teacher (repeat; default: the " "quickstart AR twin)",
  )
  parser.add_argument("--teacher_binding", action="append", default=[])
  parser.add_argument("--beam_size", type=cli.positive_int, default=4)
  parser.add_argument("--batch_size", type=cli.positive_int)
  parser.add_argument("--num_shards", type=cli.positive_int, default=4)
  parser.add_argument("--target_language", default="en")
  parser.add_argument("--work_dir", help="default: {output_dir}/{corpus}.work")
  parser.add_argument("--python", default="", help="interpreter with t5x (default: this one)")
  parser.add_argument("--cwd", default="", help="directory t5x runs in (default: repo root)")
  return parser


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if not os.path.isdir(args.checkpoint):
    parser.error(f"argument --checkpoint: directory not found: {args.checkpoint}")
  cli.check_output_path(
      parser,
      "--output_dir",
      args.output_dir,
      inputs={"--checkpoint": args.checkpoint, "--train_files": args.train_files},
      kind="dir",
      make_parents=True,
  )
  if args.module and not args.task:
    parser.error("argument --module: goes with --task")
  if args.task:
    # The entry point registers the padir_* tasks (and the user's, --module); the library
    # functions never import `tasks`.
    import tasks  # noqa: F401

    cli.import_modules(args.module)
    cli.check_registered_task(args.task)

  defaults = em.EmConfig()
  config = em.EmConfig(
      run_dir=args.work_dir or os.path.join(args.output_dir, f"{args.corpus}.work"),
      train_files=tuple(args.train_files) if args.train_files else None,
      task=args.task,
      split=args.split,
      limit=args.limit,
      rounds=0,
      num_candidates=1,
      beam_size=args.beam_size,
      teacher_infer_gin=tuple(args.teacher_gin or defaults.teacher_infer_gin),
      teacher_bindings=tuple(args.teacher_binding),
      infer_batch_size=args.batch_size,
      target_language=args.target_language,
      num_shards=args.num_shards,
      python=args.python,
      cwd=args.cwd,
  )
  try:
    config.validate()
  except stages.StageError as error:
    parser.error(str(error))
  # Missing files or t5x: status 2 now, not after the first stage.
  em.preflight(config, gin_fields=("teacher_infer_gin",))
  counts = distill(config, args.checkpoint, os.path.join(args.output_dir, args.corpus))
  print(
      f"[distill] {counts['examples']} pairs in {counts['shards']} shards under "
      f"{counts['output_dir']} ({counts['differs_from_reference']} differ from the "
      "reference)"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
