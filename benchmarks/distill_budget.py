"""Distils the training text with an AR budget checkpoint: a data directory the trainer reads.

    python -m benchmarks.distill_budget --teacher runs/budget/ar_1200 --out runs/budget/distilled
    python -m benchmarks.train_budget --model padir --max_steps 1200 \
        --train_data_dir runs/budget/distilled --out runs/budget/padir_distilled_1200

The teacher translates every source line of `{data_dir}/de-en/train.de` and the result is written
as `{out}/de-en/train.{de,en}` (the sources as they were, the teacher's translations as the
targets), plus `{out}/distill.json` recording the teacher, the decoding and the counts. The
student keeps the raw text's vocabulary (train_budget builds it from --data_dir, not from
--train_data_dir), so teacher, students and baselines share one vocabulary.

Beam 5 by default (--beam_size 1 for greedy): on Multi30k dev the 800-step teacher scores 6.35
BLEU with beam 5 against 5.53 greedy, and a PaDIR student trained 800 steps on its beam-5
translations scores 5.59, 5.68 and 5.97 (three seeds, T=4, l=5) against 5.25 and 5.08 (two
seeds) on its greedy ones (benchmarks/README.md, issue 17). Beam 5 takes 32 minutes for the 76,610
training sources on the 2-core CPU (load 3-4), greedy 9.5 (load 5-8).
--select reference keeps, of the teacher's beam, the hypothesis closest to the training reference
(sentence BLEU, sacrebleu's exponential smoothing) instead of the teacher's best-scoring one: Kim &
Rush's (2016) sequence-level interpolation. The teacher still decodes every source once with the
same beam; the references only choose among its hypotheses, so the student still learns the
teacher's outputs, the ones nearer the truth. The default, --select teacher, is plain
sequence-level distillation: measured on the 800-step dropout-0 teacher, selection raised the
targets' training-set BLEU from 3.60 to 4.13 (43% of them changed) and the PaDIR student's dev
chrF, but not its dev BLEU (benchmarks/README.md, issue 17, seventh part).

Pairs whose translation comes out empty are left out of both files (counted in distill.json):
an empty target cannot be trained on, and the data readers refuse blank lines.
"""

from __future__ import annotations

import enum
import json
import os
import sys
import time
from collections.abc import Sequence

from padir_t5x import cli
from padir_t5x import progress
from padir_t5x.data import shared_data
from padir_t5x.data import textio


class Selection(enum.Enum):
  """Which of the teacher's beam hypotheses becomes the distilled target."""

  TEACHER = "teacher"  # the teacher's best-scoring hypothesis (sequence-level distillation)
  REFERENCE = "reference"  # the one with the best sentence BLEU to the reference (Kim & Rush)


def closest_to_reference(candidates: Sequence[str], reference: str) -> int:
  """Index of the candidate with the highest sentence BLEU against `reference` (ties: first).

  Sentence BLEU as sacrebleu computes it for one sentence (13a, exponential smoothing, effective
  order), so that a short candidate is not scored zero for a missing 4-gram.
  """
  import sacrebleu  # pylint: disable=g-import-not-at-top

  if not candidates:
    raise ValueError("no candidates to choose from")
  bleu = sacrebleu.metrics.BLEU(effective_order=True)
  scores = [bleu.sentence_score(c, [reference]).score for c in candidates]
  return max(range(len(candidates)), key=lambda i: (scores[i], -i))


def select_targets(
    translations: Sequence, references: Sequence[str] | None, selection: Selection
) -> tuple[list[str], int]:
  """(one target per translation, how many differ from the teacher's best) under `selection`.

  translations: translate.Translation objects; under Selection.REFERENCE they must carry their
  candidates (Translator(keep_candidates=True)), best first, and `references` one line each.
  """
  if selection is Selection.TEACHER:
    return [t.text for t in translations], 0
  if references is None or len(references) != len(translations):
    raise ValueError("Selection.REFERENCE needs one reference per translation")
  targets, changed = [], 0
  for translation, reference in zip(translations, references):
    texts = [text for text, _ in translation.candidates] or [translation.text]
    pick = closest_to_reference(texts, reference)
    targets.append(texts[pick])
    changed += pick != 0
  return targets, changed


def distil(
    translator,
    sources: list[str],
    log=print,
    chunk: int = 2048,
    references: list[str] | None = None,
    selection: Selection = Selection.TEACHER,
) -> tuple[list[str], list[str], dict]:
  """(kept sources, their translations, counts) for `sources` through `translator`.

  Translates in chunks so that progress (and its ETA) shows on long inputs. Under
  Selection.REFERENCE the translator must keep its candidates and `references` hold one line per
  source.
  """
  start = time.perf_counter()
  translations: list[str] = []
  truncated = changed = 0
  for begin in range(0, len(sources), chunk):
    done, report = translator.translate_with_report(sources[begin : begin + chunk])
    chunk_references = None if references is None else references[begin : begin + chunk]
    targets, chunk_changed = select_targets(done, chunk_references, selection)
    translations.extend(targets)
    changed += chunk_changed
    truncated += len(report.truncated_lines)
    finished = begin + len(done)
    log(
        "distilled "
        + progress.progress_text(finished, len(sources), time.perf_counter() - start, "line")
    )
  kept = [(s, t) for s, t in zip(sources, translations) if t.strip()]
  counts = {
      "source_lines": len(sources),
      "kept_pairs": len(kept),
      "empty_translations_dropped": len(sources) - len(kept),
      "truncated_sources": truncated,
      "selection": selection.value,
      "not_the_teachers_best": changed,
      "seconds": round(time.perf_counter() - start, 1),
  }
  return [s for s, _ in kept], [t for _, t in kept], counts


def teacher_run_paths(parser, args) -> tuple[str, str]:
  """(data dir, its de-en/train.de) of a command that decodes the training sources with
  --teacher into --out; exits 2 naming the flag before any work when either is unusable."""
  data_dir = shared_data.data_dir_or_error(parser, args.data_dir)
  cli.check_output_path(
      parser,
      "--out",
      args.out,
      inputs={"--data_dir": data_dir, "--teacher": args.teacher},
      kind="dir",
      make_parents=True,
  )
  source_path = os.path.join(data_dir, "de-en", "train.de")
  if not os.path.isfile(source_path):
    parser.error(f"--data_dir: no training file {source_path}")
  return data_dir, source_path


def write_data_dir(out: str, sources: Sequence[str], targets: Sequence[str]) -> None:
  """`out/de-en/train.{de,en}`: the data directory train_budget --train_data_dir reads."""
  pair_dir = os.path.join(out, "de-en")
  os.makedirs(pair_dir, exist_ok=True)
  for language, lines in (("de", sources), ("en", targets)):
    textio.write_text_lines(os.path.join(pair_dir, f"train.{language}"), lines)


@cli.entry_point
def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--teacher", required=True, help="AR core checkpoint directory")
  parser.add_argument("--out", required=True, help="data directory to write (de-en/train.*)")
  parser.add_argument("--data_dir", default=None, help="default: $PADIR_DATA_DIR or ../shared/data")
  parser.add_argument("--beam_size", type=cli.positive_int, default=5)
  parser.add_argument("--batch_size", type=cli.positive_int, default=64)
  parser.add_argument(
      "--select",
      choices=[s.value for s in Selection],
      default=Selection.TEACHER.value,
      help="teacher: its best-scoring hypothesis; reference: of its beam, the one with the best "
      "sentence BLEU to the training reference (Kim & Rush 2016, sequence-level interpolation)",
  )
  parser.add_argument(
      "--max_lines", type=cli.non_negative_int, default=0, help="> 0: only the first N (tests)"
  )
  args = parser.parse_args(argv)
  data_dir, source_path = teacher_run_paths(parser, args)
  selection = Selection(args.select)
  reference_path = os.path.join(data_dir, "de-en", "train.en")
  if selection is Selection.REFERENCE and not os.path.isfile(reference_path):
    parser.error(f"--select reference: no reference file {reference_path}")
  if selection is Selection.REFERENCE and args.beam_size < 2:
    parser.error("--select reference: needs --beam_size 2 or more (one hypothesis: no choice)")

  from padir_t5x.core import checkpoints  # pylint: disable=g-import-not-at-top
  from padir_t5x import translate  # pylint: disable=g-import-not-at-top

  try:
    translator = translate.Translator.from_checkpoint(
        args.teacher,
        kind="ar",
        beam_size=args.beam_size,
        batch_size=args.batch_size,
        keep_candidates=selection is Selection.REFERENCE,
    )
  except checkpoints.CheckpointError as error:
    parser.error(f"--teacher: {error}")
  sources = [line for _, line in textio.iter_text_lines(source_path)]
  references = None
  if selection is Selection.REFERENCE:
    references = [line for _, line in textio.iter_text_lines(reference_path)]
    if len(references) != len(sources):
      parser.error(
          f"--select reference: {reference_path} has {len(references)} lines, "
          f"{source_path} {len(sources)}"
      )
  if args.max_lines:
    sources = sources[: args.max_lines]
    references = None if references is None else references[: args.max_lines]
  kept_sources, targets, counts = distil(
      translator,
      sources,
      log=lambda m: print(m, flush=True),
      references=references,
      selection=selection,
  )
  write_data_dir(args.out, kept_sources, targets)
  record = {
      "teacher": os.path.abspath(args.teacher),
      "source": os.path.abspath(source_path),
      "beam_size": args.beam_size,
      **counts,
  }
  with open(os.path.join(args.out, "distill.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=2)
  print(json.dumps(record))
  return 0


if __name__ == "__main__":
  sys.exit(main())
