"""The results table of an EM run: one row per finished eval stage (`python -m padir_t5x.em
--report`), read from the DONE markers of the eval stages and of the trainings they evaluated."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from padir_t5x.stages import Stage, read_done


def _trained_on(stage: Stage) -> str:
  """What a train stage of the EM plan trained on, in words."""
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


def eval_table(run_dir: str, plan: Sequence[Stage], metric_names: Sequence[str]) -> str:
  """A markdown table of every finished eval stage of `plan`: model, its data, steps, time,
  metrics (`metric_names` where the eval wrote them, else all of them)."""
  rows = []
  header = None
  stages = {stage.name: stage for stage in plan}
  for stage in stages.values():
    if stage.kind != "eval":
      continue
    done, train_done = read_done(run_dir, stage.name), read_done(run_dir, stage.inputs[0])
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
