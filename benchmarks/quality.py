"""Dev-set quality of AR and PaDIR budget checkpoints, side by side: benchmarks/results/quality.json.

    python -m benchmarks.quality --ar runs/budget/ar_1200 \
        --padir padir_raw=runs/budget/padir_raw_1200 \
        --padir padir_distilled=runs/budget/padir_distilled_1200 \
        --setting 'T=4,l=5:max_passes=4;length_beam=5' --out benchmarks/results/quality.json

Every system translates the whole dev split (default `dev-multi30k`, the Multi30k validation
captions: in-domain for the budget models; no test set is ever used here) through
`padir_t5x.translate.Translator`, the code path of `python -m padir_t5x.translate`: AR with cached
beam search at each --ar_beams size, PaDIR at each --setting (`NAME:FIELD=VALUE;FIELD=VALUE`, any
DecodingConfig field over the checkpoint's recorded decoding defaults). Sources longer than the
model's input table are truncated, as translate does (counted in the output); references are never
filtered.

Per row: SacreBLEU (13a), chrF, the word-level stutter rate (padir_t5x.data.metrics), decoder passes
per sentence (PaDIR: refinement passes after early stopping; AR: output tokens with EOS, the
sequential steps of greedy search, a lower bound for beam search), and the training budget read
from the checkpoint (steps, minutes, target tokens, 'steps' or 'wall_clock'). PaDIR rows also get
the length predictor's dev accuracy (argmax length equal to the reference's, and within 1).

The JSON schema: {"split", "num_sentences", "machine", "results": [{"system", "setting", "train":
{"steps", "minutes", "target_tokens", "budget"}, "bleu", "chrf", "stutter_rate",
"decoder_passes_per_sentence", ...}]}.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from benchmarks import timing
from padir_t5x.core import checkpoints
from padir_t5x import cli
from padir_t5x.core import loading
from padir_t5x.core import layout
from padir_t5x.data import metrics
from padir_t5x.data import shared_data
from padir_t5x.data import textio


def parse_setting(spec: str) -> tuple[str, list[str]]:
  """'T=4,l=5:max_passes=4;length_beam=5' -> ('T=4,l=5', ['max_passes=4', 'length_beam=5'])."""
  name, separator, fields = spec.partition(":")
  if not separator or not name:
    raise ValueError(f"{spec!r} is not NAME:FIELD=VALUE;FIELD=VALUE")
  return name, [item for item in fields.split(";") if item.strip()]


def train_record(checkpoint_dir: str) -> dict:
  """The budget a checkpoint was trained with, from its config.json's train record (and the
  checkpoint it was warm-started from, `train_budget --init_from`, if any)."""
  record = checkpoints.read_config(checkpoint_dir).get("train") or {}
  summary = {
      "steps": record.get("steps"),
      "minutes": round(record["seconds"] / 60.0, 1) if "seconds" in record else None,
      "target_tokens": record.get("target_tokens_seen"),
      # Checkpoints from before step budgets existed were all trained on wall-clock.
      "budget": record.get("budget", "wall_clock"),
      "train_data_dir": record.get("train_data_dir"),
  }
  if "warm_start" in record:
    # The checkpoint's own steps above; those of the checkpoint it started from are not in them.
    summary["warm_start_from"] = record["warm_start"]["checkpoint"]
  return summary


def read_dev_pairs(parser, args, paths=None) -> tuple[list[str], list[str]]:
  """(sources, references) of `paths` (source file, reference file), default
  args.data_dir (or the shared data)/de-en/args.split.{de,en}; the first args.max_sentences
  when > 0. A missing data directory or a bad file ends the command with parser.error."""
  if paths is None:
    data_dir = shared_data.data_dir_or_error(parser, args.data_dir)
    paths = [os.path.join(data_dir, "de-en", f"{args.split}.{lang}") for lang in ("de", "en")]
  try:
    pairs = textio.read_parallel_files(*paths)
  except textio.CorpusFileError as error:
    parser.error(str(error))
  if args.max_sentences:
    pairs = pairs[: args.max_sentences]
  return [s for s, _ in pairs], [r for _, r in pairs]


def length_accuracy(translator, sources: list[str], references: list[str]) -> dict[str, float]:
  """The length predictor's dev accuracy: argmax length == reference length (EOS included), and
  within +-1. Sources are encoded (and truncated) as translate encodes them."""
  from padir_t5x.core import network  # pylint: disable=g-import-not-at-top

  encoded, _ = translator.encode(sources)
  width = translator.max_input_length
  exact = within_one = 0
  for begin in range(0, len(encoded), 64):
    rows = encoded[begin : begin + 64]
    tokens = np.zeros((len(rows), width), np.int32)
    for i, ids in enumerate(rows):
      tokens[i, : len(ids)] = ids
      tokens[i, len(ids)] = 1  # EOS
    _, length_logits = network.encode_and_predict_length(
        translator.module, translator.params, tokens
    )
    gold = np.array(
        [len(translator.processor.encode(r)) + 1 for r in references[begin : begin + 64]]
    )  # EOS included
    hits, near = layout.length_hits(length_logits, gold)
    exact += int(np.sum(hits))
    within_one += int(np.sum(near))
  return {
      "length_accuracy": exact / len(encoded),
      "length_accuracy_within_1": within_one / len(encoded),
  }


def evaluate(translator, sources, references) -> dict:
  """BLEU, chrF, stutter, passes per sentence and decode time of one translator on the dev set."""
  start = time.perf_counter()
  translations, report = translator.translate_with_report(sources)
  seconds = time.perf_counter() - start
  predictions = [t.text for t in translations]
  if translator.kind == "padir":
    passes = float(np.mean([t.passes for t in translations]))
  else:
    passes = float(np.mean([t.length for t in translations]))
  return {
      "bleu": round(metrics.make_bleu_metric("en")(references, predictions)["bleu"], 2),
      "chrf": round(metrics.chrf(references, predictions)["chrf"], 2),
      "stutter_rate": round(metrics.stutter_rate(references, predictions)["stutter_rate"], 4),
      "decoder_passes_per_sentence": round(passes, 2),
      "truncated_sources": len(report.truncated_lines),
      "decode_seconds": round(seconds, 1),
      "examples": [
          {"source": s, "prediction": p, "reference": r}
          for s, p, r in list(zip(sources, predictions, references))[:3]
      ],
  }


@cli.entry_point
def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--ar", action="append", default=[], metavar="[NAME=]DIR")
  parser.add_argument("--padir", action="append", default=[], metavar="[NAME=]DIR")
  parser.add_argument(
      "--ar_beams", type=cli.int_list(1), default=[1, 5], help="comma-separated beam sizes"
  )
  parser.add_argument(
      "--setting",
      action="append",
      default=[],
      metavar="NAME:FIELD=VALUE;...",
      help="a PaDIR decoding setting (repeatable); default: the paper's T=4,l=5",
  )
  parser.add_argument("--data_dir", default=None, help="default: $PADIR_DATA_DIR or ../shared/data")
  parser.add_argument("--split", default="dev-multi30k")
  parser.add_argument(
      "--source",
      default=None,
      help="a source file to translate instead of --data_dir/de-en/SPLIT.de (with --reference)",
  )
  parser.add_argument("--reference", default=None, help="its line-aligned reference file")
  parser.add_argument(
      "--max_sentences", type=cli.non_negative_int, default=0, help="> 0: the first N (tests)"
  )
  parser.add_argument("--batch_size", type=cli.positive_int, default=64)
  parser.add_argument("--out", default="benchmarks/results/quality.json")
  args = parser.parse_args(argv)

  from padir_t5x import translate  # pylint: disable=g-import-not-at-top
  from padir_t5x.decoders.decoding_config import DecodingConfig  # pylint: disable=g-import-not-at-top

  # Every flag is checked before a checkpoint is loaded or a sentence decoded.
  ar_beams = args.ar_beams
  settings = []
  for spec in args.setting or ["T=4,l=5:max_passes=4;length_beam=5"]:
    try:
      name, items = parse_setting(spec)
      settings.append((name, cli.parse_overrides(DecodingConfig, items)))
    except ValueError as error:
      parser.error(f"--setting: {error}")
  systems = []
  for flag, kind in (("--ar", "ar"), ("--padir", "padir")):
    for spec in getattr(args, flag[2:]):
      name, _, path = spec.rpartition("=")
      if not os.path.isfile(os.path.join(path, checkpoints.CONFIG_FILE)):
        parser.error(f"{flag}: no core checkpoint at {path!r} (no {checkpoints.CONFIG_FILE})")
      systems.append((name or kind, kind, path, flag))
  if not systems:
    parser.error("give at least one --ar or --padir checkpoint")
  if (args.source is None) != (args.reference is None):
    parser.error("--source and --reference go together")
  cli.check_output_path(
      parser,
      "--out",
      args.out,
      inputs={"--source": args.source, "--reference": args.reference},
      make_parents=True,
  )
  # Every checkpoint is read whole (config.json, params.npz, vocabulary) before any is decoded.
  loaded = {}
  for _, kind, path, flag in systems:
    try:
      loaded[path] = loading.load(path, kind=kind)
    except checkpoints.CheckpointError as error:
      parser.error(f"{flag}: {error}")
  paths = None if args.source is None else (args.source, args.reference)
  sources, references = read_dev_pairs(parser, args, paths)

  results = []
  for name, kind, path, _ in systems:
    budget = train_record(path)
    runs = (
        [(f"beam={b}", {"beam_size": b}) for b in ar_beams]
        if kind == "ar"
        else [(setting, overrides) for setting, overrides in settings]
    )
    extra = {}
    for setting, options in runs:
      try:
        translator = translate.Translator.from_loaded(
            loaded[path], batch_size=args.batch_size, **options
        )
      except (ValueError, TypeError) as error:
        parser.error(f"{path}: {error}")
      if kind == "padir" and not extra:
        extra = length_accuracy(translator, sources, references)
      row = {
          "system": name,
          "setting": setting,
          "train": budget,
          **evaluate(translator, sources, references),
          **extra,
      }
      if kind == "padir":
        row["decoding"] = {k: str(v) for k, v in options.items()}
      results.append(row)
      print(
          f"{name:18s} {setting:28s} BLEU {row['bleu']:6.2f}  chrF {row['chrf']:6.2f}  "
          f"stutter {row['stutter_rate']:.4f}  passes {row['decoder_passes_per_sentence']:5.2f}"
          + (f"  len acc {extra['length_accuracy']:.3f}" if extra else ""),
          flush=True,
      )
  out = {
      "split": args.split if args.source is None else os.path.abspath(args.source),
      "num_sentences": len(sources),
      "machine": timing.environment(),
      "results": results,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  textio.write_atomically(args.out, (json.dumps(out, indent=1) + "\n").encode("utf-8"))
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
