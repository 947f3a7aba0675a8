"""Releases a trained core checkpoint into models/: bfloat16 parameters, a model card, the table.

    python -m benchmarks.release --checkpoint RUN_DIR --name caption_ar_teacher \
        --description "..." --quality benchmarks/results/quality.json --system teacher

A released model is what a user downloads with the repository, so it must be small and say what
it is. The parameters are stored in bfloat16 (checkpoints.save_checkpoint(param_dtype=
'bfloat16'): half the bytes; the loader restores float32), and config.json gains a model card
(checkpoints.MODEL_CARD_FIELDS: the data, the size, the training budget from the run's record,
and the dev scores read from benchmarks/results/quality.json rows of --system, never typed).
models/README.md's table is then regenerated from every released model's card.

The card's scores are the float32 run's; `python -m benchmarks.quality --ar NAME=models/NAME`
measures the released (bfloat16-rounded) parameters themselves (models/README.md says both).
"""

from __future__ import annotations

import json
import os
import platform
import shutil

from padir_t5x.core import checkpoints
from padir_t5x import cli

MODELS_DIR = "models"
TABLE_START = "<!-- models-table:start -->"
TABLE_END = "<!-- models-table:end -->"


def dev_scores(quality_files: list[str], system: str) -> dict:
  """{split: {'bleu', 'chrf', 'setting', ...}} of `system`'s best-BLEU row in each file."""
  scores = {}
  for path in quality_files:
    with open(path, encoding="utf-8") as f:
      report = json.load(f)
    rows = [r for r in report["results"] if r["system"] == system]
    if not rows:
      raise ValueError(f"{path} has no row of system {system!r}")
    best = max(rows, key=lambda r: r["bleu"])
    entry = {"bleu": best["bleu"], "chrf": best["chrf"], "setting": best["setting"]}
    for extra in ("stutter_rate", "length_accuracy", "decoder_passes_per_sentence"):
      if extra in best:
        entry[extra] = best[extra]
    scores[report.get("split", os.path.basename(path))] = entry
  return scores


def size_text(transformer: dict) -> str:
  return (
      f"d={transformer['emb_dim']}, {transformer['num_encoder_layers']}+"
      f"{transformer['num_decoder_layers']} layers, {transformer['num_heads']} heads, "
      f"FFN {transformer['mlp_dim']}"
  )


def model_card(meta: dict, name: str, description: str, scores: dict) -> dict:
  """The card of a checkpoint's config.json `meta` (its 'train' record gives the budget)."""
  train = meta.get("train") or {}
  budget = train.get("budget_config") or {}
  data_dir = train.get("train_data_dir", "")
  distilled = bool(budget.get("init_from")) or "distil" in data_dir
  card = {
      "name": name,
      "description": description,
      "data": (
          "../shared/data de-en train (76,610 pairs: Multi30k train and tests, WMT news tests, "
          "Tatoeba)" + (", targets distilled by a teacher" if distilled else ", raw targets")
      ),
      "languages": "de-en",
      "num_params": int(train.get("num_params", 0)),
      "size": size_text(meta["transformer"]),
      "steps": int(train.get("steps", 0)),
      "train_minutes": round(float(train.get("seconds", 0.0)) / 60.0, 1),
      "machine": f"{os.cpu_count()}-core CPU ({platform.machine()})",
      "dev_scores": scores,
  }
  checkpoints.check_model_card(card, "the new model card")
  return card


def release(checkpoint: str, out: str, card: dict) -> None:
  """Writes `checkpoint` to `out` in bfloat16 with `card`, atomically (temp dir, rename)."""
  module, params, meta = checkpoints.load_checkpoint(checkpoint)
  tmp = out.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  checkpoints.save_checkpoint(
      tmp,
      params,
      module.config,
      meta["kind"],
      vocab_model=meta["vocab_model"],
      vocab_high=meta.get("vocab_high"),
      train_record=meta.get("train"),
      decoding=meta.get("decoding"),
      param_dtype="bfloat16",
      model_card=card,
  )
  os.replace(tmp, out)


def models_table(models_dir: str) -> str:
  """A markdown table of every released model's card under `models_dir`, by name."""
  lines = [
      "| model | kind | size | parameters | steps | minutes | dev-multi30k BLEU / chrF | "
      "newstest2013 BLEU / chrF | setting |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for name in sorted(os.listdir(models_dir)):
    directory = os.path.join(models_dir, name)
    if not checkpoints.is_core_checkpoint(directory):
      continue
    meta = checkpoints.read_config(directory)
    card = meta.get("model_card")
    if card is None:
      continue
    scores = card["dev_scores"]

    def cell(split: str) -> str:
      s = scores.get(split)
      return f"{s['bleu']:.2f} / {s['chrf']:.2f}" if s else "-"

    setting = (scores.get("dev-multi30k") or next(iter(scores.values()), {})).get("setting", "")
    lines.append(
        f"| [{name}]({name}/) | {meta['kind']} | {card['size']} | {card['num_params']:,} | "
        f"{card['steps']:,} | {card['train_minutes']:g} | {cell('dev-multi30k')} | "
        f"{cell('dev')} | {setting} |"
    )
  return "\n".join(lines)


def write_table(readme: str, models_dir: str) -> None:
  """Replaces the table between the markers of `readme` with `models_table`."""
  with open(readme, encoding="utf-8") as f:
    text = f.read()
  if TABLE_START not in text or TABLE_END not in text:
    raise ValueError(f"{readme} has no {TABLE_START} ... {TABLE_END} markers")
  head, rest = text.split(TABLE_START, 1)
  _, tail = rest.split(TABLE_END, 1)
  with open(readme, "w", encoding="utf-8") as f:
    f.write(head + TABLE_START + "\n" + models_table(models_dir) + "\n" + TABLE_END + tail)


@cli.entry_point
def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", required=True, help="the trained core checkpoint")
  parser.add_argument("--name", required=True, help="the released model's directory name")
  parser.add_argument("--description", required=True, help="what it translates, what it does not")
  parser.add_argument(
      "--quality",
      action="append",
      required=True,
      help="a benchmarks.quality JSON holding rows of --system (repeatable: one per split)",
  )
  parser.add_argument("--system", required=True, help="the quality rows' system name")
  parser.add_argument("--models_dir", default=MODELS_DIR)
  parser.add_argument("--force", action="store_true", help="replace a released model")
  args = parser.parse_args(argv)
  out = os.path.join(args.models_dir, args.name)
  cli.check_output_path(
      parser,
      "--name",
      out,
      inputs={"--checkpoint": args.checkpoint, "--quality": args.quality},
      kind="dir",
      replaces=True,
  )
  if os.path.exists(out) and not args.force:
    parser.error(f"--name: {out} exists (pass --force to replace it)")
  readme = os.path.join(args.models_dir, "README.md")
  if not os.path.isfile(readme):
    parser.error(f"--models_dir: {readme} not found")
  cli.check_output_path(parser, "--models_dir", readme)
  try:
    meta = checkpoints.read_config(args.checkpoint)
  except checkpoints.CheckpointError as error:
    parser.error(f"--checkpoint: {error}")
  for path in args.quality:
    if not os.path.isfile(path):
      parser.error(f"--quality: {path} not found")
  try:
    card = model_card(meta, args.name, args.description, dev_scores(args.quality, args.system))
  except (ValueError, KeyError) as error:
    parser.error(f"--quality/--system: {error}")
  if os.path.exists(out):
    shutil.rmtree(out)
  release(args.checkpoint, out, card)
  write_table(readme, args.models_dir)
  size = os.path.getsize(os.path.join(out, checkpoints.PARAMS_FILE)) / 2**20
  print(f"released {out} ({size:.1f} MiB of parameters); {readme} updated")
  return 0


if __name__ == "__main__":
  main()
