"""The README's results table, generated from benchmarks/results/quality.json.

    python -m benchmarks.results_table                          # print the table
    python -m benchmarks.results_table --check README.md        # status 1 if its table is stale
    python -m benchmarks.results_table --write README.md        # rewrite its table in place

A file holds the table between the marker comments `<!-- results-table:start -->` and
`<!-- results-table:end -->`; --check and --write take any number of such files. Every figure
comes from quality.json (`python -m benchmarks.quality` writes it): the rows below name a system
and a decoding setting, never a number. Where a system is listed once per seed, the row is the
mean over the seeds. The ratio column divides each row's BLEU by the AR beam-5 row of its
comparison. When a (system, setting) pair occurs more than once, the last (latest) row counts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Sequence

from padir_t5x import cli

START = "<!-- results-table:start -->"
END = "<!-- results-table:end -->"
DEFAULT_QUALITY = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results", "quality.json"
)


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of the table: quality.json rows picked by system name(s) and setting."""

  comparison: str  # what is held equal between the rows of one comparison
  systems: tuple[str, ...]  # several: one per seed, averaged
  setting: str  # quality.json's "setting" (decoding), e.g. "beam=5" or "T=4,l=5"
  model: str  # what the model is, in words
  reference: bool = False  # the AR beam-5 row the comparison's ratios divide by


EQUAL_STEPS = "equal steps"
EQUAL_STEPS_LONGER = "equal steps, longer training"
EQUAL_WALL_CLOCK = "equal wall-clock, each alone"
CAPTION = "the released caption teacher (models/)"
STUDENTS = "its students, equal steps on its beam-5 translations (models/)"

ROWS = (
    Row(EQUAL_STEPS, ("ar_dropout0",), "beam=1", "AR, greedy"),
    Row(EQUAL_STEPS, ("ar_dropout0",), "beam=5", "AR, beam 5", reference=True),
    Row(EQUAL_STEPS, ("padir_distilled_dropout0",), "T=4,l=5", "PaDIR, distilled from AR beam 5"),
    Row(
        EQUAL_STEPS,
        (
            "padir_distilled_drop0_lr4e-3",
            "padir_distilled_drop0_lr4e-3_seed1",
            "padir_distilled_drop0_lr4e-3_seed2",
        ),
        "T=4,l=5",
        "PaDIR, the same recipe at peak LR 4e-3",
    ),
    Row(EQUAL_STEPS_LONGER, ("ar_2400_drop0_lr3e-3",), "beam=5", "AR, beam 5", reference=True),
    Row(
        EQUAL_STEPS_LONGER,
        ("padir_distilled_2400_drop0_lr4e-3_t3e-3",),
        "T=4,l=5",
        "PaDIR, distilled from that AR's beam 5",
    ),
    Row(EQUAL_WALL_CLOCK, ("ar_wall3.5_drop0",), "beam=5", "AR, beam 5", reference=True),
    Row(
        EQUAL_WALL_CLOCK,
        ("padir_wall3.5_drop0_s1",),
        "T=4,l=5",
        "PaDIR, 1 training stage, distilled from AR beam 5",
    ),
    Row(CAPTION, ("caption_ar_teacher",), "beam=1", "AR teacher, greedy"),
    Row(CAPTION, ("caption_ar_teacher",), "beam=5", "AR teacher, beam 5", reference=True),
    Row(STUDENTS, ("caption_ar_student",), "beam=1", "AR student, greedy"),
    Row(STUDENTS, ("caption_ar_student",), "beam=5", "AR student, beam 5", reference=True),
    Row(STUDENTS, ("caption_padir_student",), "T=4,l=5", "PaDIR student, 2 training stages"),
    Row(STUDENTS, ("caption_padir_s1",), "T=4,l=5", "PaDIR student, 1 training stage"),
    Row(
        STUDENTS,
        ("caption_padir_student",),
        "T=4,l=5,k=1",
        "the same, the 3 later passes over the best length only",
    ),
)

HEADER = (
    "| comparison | model | quality.json system | decoding | training | BLEU | x AR beam 5 | chrF "
    "| sequential steps / sentence |"
)


def _find(results: Sequence[dict], system: str, setting: str) -> dict:
  found = [r for r in results if r.get("system") == system and r.get("setting") == setting]
  if not found:
    raise ValueError(f"quality.json has no row with system {system!r} and setting {setting!r}")
  return found[-1]


def _mean(values: Sequence[float]) -> float:
  return sum(values) / len(values)


def _training(rows: Sequence[dict]) -> str:
  steps = sorted({r["train"]["steps"] for r in rows})
  text = " / ".join(f"{s:,}" for s in steps) + " steps"
  if any(r["train"].get("budget") == "wall_clock" for r in rows):
    minutes = sorted({r["train"]["minutes"] for r in rows})
    text += " in " + " / ".join(f"{m:g}" for m in minutes) + " min"
  return text


def table(quality: dict) -> str:
  """The markdown table (with its caption line) for quality.json's contents."""
  results = quality["results"]
  picked = [(row, [_find(results, s, row.setting) for s in row.systems]) for row in ROWS]
  references = {}
  for row, found in picked:
    if row.reference:
      references[row.comparison] = _mean([r["bleu"] for r in found])
  lines = [
      f"Split `{quality['split']}` ({quality['num_sentences']:,} sentences), SacreBLEU and chrF; "
      "rows of `benchmarks/results/quality.json`.",
      "",
      HEADER,
      "|---" * HEADER.count(" | ") + "|---|",
  ]
  previous = None
  for row, found in picked:
    bleu = _mean([r["bleu"] for r in found])
    if row.comparison not in references:
      raise ValueError(f"comparison {row.comparison!r} has no reference row")
    # The comparison is named on its first row only.
    comparison, previous = ("" if row.comparison == previous else row.comparison), row.comparison
    name = f"`{row.systems[0]}`"
    if len(row.systems) > 1:
      name += f" (mean of {len(row.systems)} seeds)"
    cells = [
        comparison,
        row.model,
        name,
        row.setting,
        _training(found),
        f"{bleu:.2f}",
        f"{bleu / references[row.comparison]:.2f}",
        f"{_mean([r['chrf'] for r in found]):.2f}",
        f"{_mean([r['decoder_passes_per_sentence'] for r in found]):.2f}",
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


_BLOCK = re.compile(re.escape(START) + r"\n(.*?)\n?" + re.escape(END), flags=re.S)


def embedded_table(text: str) -> str:
  """The text between the markers; ValueError when they are missing."""
  match = _BLOCK.search(text)
  if match is None:
    raise ValueError(f"no {START} ... {END} block")
  return match.group(1).strip()


def replace_table(text: str, new_table: str) -> str:
  embedded_table(text)  # raises when the markers are missing
  return _BLOCK.sub(lambda _: f"{START}\n{new_table}\n{END}", text, count=1)


def load_quality(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


@cli.entry_point
def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quality", default=DEFAULT_QUALITY, help="quality.json to read")
  group = parser.add_mutually_exclusive_group()
  group.add_argument("--check", nargs="+", metavar="FILE", help="status 1 if a table differs")
  group.add_argument("--write", nargs="+", metavar="FILE", help="rewrite the table in place")
  args = parser.parse_args(argv)
  for path in (args.quality, *(args.check or ()), *(args.write or ())):
    if not os.path.isfile(path):
      parser.error(f"no such file: {path!r}")

  generated = table(load_quality(args.quality))
  if args.check:
    stale = [p for p in args.check if embedded_table(_read(p)) != generated]
    for path in stale:
      print(
          f"{path}: the results table differs from quality.json's; "
          f"run `python -m benchmarks.results_table --write {path}`",
          file=sys.stderr,
      )
    return 1 if stale else 0
  if args.write:
    for path in args.write:
      text = _read(path)
      updated = replace_table(text, generated)
      if updated != text:
        with open(path, "w", encoding="utf-8") as f:
          f.write(updated)
        print(f"{path}: table rewritten")
    return 0
  print(generated)
  return 0


def _read(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return f.read()


if __name__ == "__main__":
  sys.exit(main())
