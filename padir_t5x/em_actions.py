"""What each stage of the EM loop (padir_t5x/em.py) does, and the E-step's selection.

`ACTIONS` maps a stage's action to the function that runs it; each works in `ctx.work` (the
stage's partial directory) and returns the counts its DONE marker records. The t5x stages go
through `ctx.runner` (padir_t5x.t5x_adapter.jobs), so this module never imports t5x. The data sets
are JSON-lines shards (padir_t5x.data.textio), read and written here. `select_best` is the E-step's
argmax, pure; `describe` is a stage's log line. padir_t5x/em.py plans the stages and runs them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

from padir_t5x.data import textio
from padir_t5x.em_config import EmConfig
from padir_t5x.stages import Action, Stage, StageContext, StageError, outputs_text
from padir_t5x.t5x_adapter.jobs import (
    Candidate,
    EvalJob,
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

# Every error of a stage, its plan or its config (one class: the engine raises it too).
EmError = StageError


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
