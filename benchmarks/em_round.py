r"""The EM round's E-step on core checkpoints: the AR model's N-best, scored and selected by PaDIR.

    python -m benchmarks.em_round nbest --teacher AR_DIR --out RUN/nbest
    python -m benchmarks.em_round select --student PADIR_DIR --candidates RUN/nbest \
        --out RUN/selected
    python -m benchmarks.train_budget --model ar --init_from AR_DIR \
        --train_data_dir RUN/selected --out RUN/ar_round1 ...          # the M-step's AR
    python -m benchmarks.em_round nbest --teacher RUN/ar_round1 --out RUN/nbest_round1
    python -m benchmarks.train_budget --model padir \
        --train_data_dir RUN/nbest_round1/distilled ...                 # the M-step's PaDIR

Sun & Yang (2020) alternate the two models: the NAR model picks, among the AR model's N-best of
each training source, the target it finds likeliest; the AR model is trained on those picks; the
NAR model is trained again on the new AR model's beam output. padir_t5x.em runs the round through
t5x; this is the same round on the core trainer, for models trained by benchmarks.train_budget.
It shares em's code where the round's meaning lives: the candidate files
(t5x_adapter.jobs.write_candidates / read_candidates), PaDIR's score (core.scoring, which
PadirModel.score_batch also calls) and the selection (em_actions.select_best).

`nbest` decodes every training source (`{data_dir}/de-en/train.de`) with the AR model's beam and
keeps every hypothesis that ended, best first; `--out/distilled` holds each source's best as a
data directory (the next PaDIR model's distilled training data, as distill_budget writes it). It works in chunks, each saved atomically under
`--out/parts`, so that a stopped run continues where it stopped when run again with the same
flags (any other flags are refused). Empty hypotheses are left out (the trainer refuses empty
lines), and so is a source none of whose hypotheses is non-empty (counted in nbest.json).

`select` scores every candidate with the PaDIR model, keeps each source's best (ties to the AR
model's preference) and writes `--out/de-en/train.{de,en}` (what train_budget --train_data_dir
reads), `selection.jsonl` (each source's chosen rank and both scores) and `select.json`.

`targets` says what a round changed in the training targets: each data directory's targets
against the training references (BLEU, chrF and mean words on a seeded sample of the sources
every set holds) and how often two sets give a source the same target.

    python -m benchmarks.em_round targets --targets round0=DISTILLED --targets selected=S \
        --targets round1=RUN/nbest_round1/distilled [--sample 10000 --seed 0 --out F.json]
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from benchmarks import distill_budget
from padir_t5x import cli
from padir_t5x import progress
from padir_t5x.data import shared_data
from padir_t5x.data import textio

PARTS_DIR = "parts"
SETTINGS_FILE = "settings.json"
NBEST_RECORD = "nbest.json"
SELECT_RECORD = "select.json"
DISTILLED_DIR = "distilled"  # nbest's best hypothesis per source, as a data directory
WIDTH_MULTIPLE = 16  # scoring pads each batch's widths to a multiple of this: few compiled shapes


# ------------------------------------------------------------------------------------------------
# nbest
def _part_path(out: str, index: int) -> str:
  return os.path.join(out, PARTS_DIR, f"part-{index:05d}.jsonl")


def _file_sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def check_settings(out: str, settings: dict) -> None:
  """Writes `settings` into a new run directory, or checks that an existing run used them.

  Raises:
    ValueError naming the file and the first differing setting, so that parts decoded under
    other flags (another teacher, beam or chunk size) are never mixed into one candidate set.
  """
  path = os.path.join(out, SETTINGS_FILE)
  if not os.path.exists(path):
    os.makedirs(os.path.join(out, PARTS_DIR), exist_ok=True)
    textio.write_atomically(path, json.dumps(settings, indent=2).encode("utf-8"))
    return
  with open(path, encoding="utf-8") as f:
    earlier = json.load(f)
  for key in sorted(set(earlier) | set(settings)):
    if earlier.get(key) != settings.get(key):
      raise ValueError(
          f"{path}: this run was started with {key}={earlier.get(key)!r}, not "
          f"{settings.get(key)!r}; rerun with the same flags or pick another --out"
      )


def chunk_candidates(translations, begin: int) -> list[dict]:
  """The candidate records of one chunk: source_index = begin + row, ranks best first.

  translations: translate.Translation objects with their candidates kept. Empty hypotheses are
  left out.
  """
  records = []
  for row, translation in enumerate(translations):
    rank = 0
    for text, score in translation.candidates:
      if not text.strip():
        continue
      records.append({"line": begin + row, "rank": rank, "target": text, "ar_score": float(score)})
      rank += 1
  return records


def run_nbest(translator, sources: Sequence[str], out: str, chunk: int, log=print) -> dict:
  """Decodes the chunks not yet saved under out/parts, then writes the candidate files.

  Returns the counts nbest.json records.
  """
  from padir_t5x.t5x_adapter import jobs  # pylint: disable=g-import-not-at-top

  start = time.perf_counter()
  num_chunks = (len(sources) + chunk - 1) // chunk
  resumed = sum(os.path.exists(_part_path(out, i)) for i in range(num_chunks))
  if resumed:
    log(f"resuming: {resumed} of {num_chunks} chunks already decoded")
  decoded_now = 0
  for index in range(num_chunks):
    path = _part_path(out, index)
    if os.path.exists(path):
      continue
    begin = index * chunk
    done, _ = translator.translate_with_report(list(sources[begin : begin + chunk]))
    lines = "".join(json.dumps(r) + "\n" for r in chunk_candidates(done, begin))
    textio.write_atomically(path, lines.encode("utf-8"))
    decoded_now += len(done)
    log(
        "n-best "
        + progress.progress_text(
            min(begin + chunk, len(sources)), len(sources), time.perf_counter() - start, "line"
        )
    )
  by_line: dict[int, list[dict]] = collections.defaultdict(list)
  for index in range(num_chunks):
    with open(_part_path(out, index), encoding="utf-8") as f:
      for record in map(json.loads, f):
        by_line[record["line"]].append(record)
  # Sources with no non-empty hypothesis are left out; the rest are numbered densely, as
  # select_best wants every index in [0, n) to have a candidate.
  candidates = []
  kept_lines = sorted(by_line)
  for source_index, line in enumerate(kept_lines):
    for record in by_line[line]:
      candidates.append(
          jobs.Candidate(
              source_index, record["rank"], sources[line], record["target"], record["ar_score"]
          )
      )
  jobs.write_candidates(out, candidates, num_shards=1)
  # The next NAR model's training data: each source's best hypothesis (sequence-level
  # distillation, what em_actions.action_candidates writes for the t5x round).
  best = [c for c in candidates if c.rank == 0]
  distill_budget.write_data_dir(
      os.path.join(out, DISTILLED_DIR), [c.source for c in best], [c.target for c in best]
  )
  ranks = collections.Counter(len(by_line[line]) for line in kept_lines)
  return {
      "source_lines": len(sources),
      "sources_with_candidates": len(kept_lines),
      "sources_without_candidates": len(sources) - len(kept_lines),
      "candidates": len(candidates),
      "candidates_per_source": {str(k): ranks[k] for k in sorted(ranks)},
      "lines_decoded_by_this_run": decoded_now,
      "seconds_this_run": round(time.perf_counter() - start, 1),
  }


# ------------------------------------------------------------------------------------------------
# select
def _fit(ids: list[int], limit: int) -> tuple[list[int], bool]:
  """ids (EOS-terminated) cut to `limit` with EOS kept last; (ids, whether cut)."""
  if len(ids) <= limit:
    return ids, False
  return ids[: limit - 1] + [ids[-1]], True


def _round_up(n: int, multiple: int, cap: int) -> int:
  return min(cap, -(-n // multiple) * multiple)


def score_candidates(loaded, candidates, batch_size: int, log=print) -> tuple[np.ndarray, int]:
  """PaDIR's core.scoring score of every candidate, in candidate order; (scores, pairs cut).

  Sources and targets longer than the network's tables are cut (EOS kept): the trainer drops
  such pairs anyway, so their rank matters little, and every candidate still gets a score.
  Rows are sorted by length and each batch padded to a multiple of 16, so that few shapes
  compile.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  from padir_t5x.core import scoring  # pylint: disable=g-import-not-at-top

  cfg = loaded.module.config
  decoding = loaded.decoding
  sources = common.encode_lines(loaded.vocabulary, [c.source for c in candidates])
  targets = common.encode_lines(loaded.vocabulary, [c.target for c in candidates])
  cut = 0
  for i in range(len(candidates)):
    sources[i], cut_source = _fit(sources[i], cfg.max_input_length)
    targets[i], cut_target = _fit(targets[i], cfg.max_target_length)
    cut += cut_source or cut_target

  @jax.jit
  def score(params, inputs, target_tokens):
    decoder_inputs = scoring.score_decoder_inputs(
        target_tokens,
        fill=decoding.init,
        seed=0,  # PadirModel's default score_seed: the two paths score alike
        table_length=cfg.max_target_length,
        vocab_low=decoding.vocab_low,
        vocab_high=decoding.vocab_high,
        mask_id=decoding.mask_id,
    )
    return scoring.score_targets(loaded.module, params, inputs, target_tokens, decoder_inputs)[0]

  order = sorted(range(len(candidates)), key=lambda i: (len(targets[i]), len(sources[i])))
  scores = np.zeros(len(candidates), np.float32)
  start = time.perf_counter()
  for begin in range(0, len(order), batch_size):
    rows = order[begin : begin + batch_size]
    source_width = _round_up(
        max(len(sources[i]) for i in rows), WIDTH_MULTIPLE, cfg.max_input_length
    )
    target_width = _round_up(
        max(len(targets[i]) for i in rows), WIDTH_MULTIPLE, cfg.max_target_length
    )
    inputs = np.zeros((batch_size, source_width), np.int32)
    target_tokens = np.zeros((batch_size, target_width), np.int32)
    inputs[:, 0] = target_tokens[:, 0] = 1  # padding rows: EOS only, scores dropped
    for row, i in enumerate(rows):
      inputs[row, : len(sources[i])] = sources[i]
      target_tokens[row, : len(targets[i])] = targets[i]
    batch_scores = np.asarray(score(loaded.params, jnp.asarray(inputs), jnp.asarray(target_tokens)))
    scores[rows] = batch_scores[: len(rows)]
    if (begin // batch_size) % 200 == 0 or begin + batch_size >= len(order):
      log(
          "scored "
          + progress.progress_text(
              min(begin + batch_size, len(order)), len(order), time.perf_counter() - start, "pair"
          )
      )
  return scores, cut


def write_selection(out: str, chosen) -> None:
  """The selected pairs as train_budget's data directory, and selection.jsonl."""
  distill_budget.write_data_dir(out, [c.source for c, _ in chosen], [c.target for c, _ in chosen])
  lines = "".join(
      json.dumps({"index": i, "rank": c.rank, "nar_score": score, "ar_score": c.ar_score}) + "\n"
      for i, (c, score) in enumerate(chosen)
  )
  textio.write_atomically(os.path.join(out, "selection.jsonl"), lines.encode("utf-8"))


# ------------------------------------------------------------------------------------------------
def build_parser() -> cli.ArgumentParser:
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  nbest = commands.add_parser("nbest", help="the AR model's N-best of every training source")
  nbest.add_argument("--teacher", required=True, help="AR core checkpoint directory")
  nbest.add_argument("--out", required=True, help="directory of the candidates (resumable)")
  nbest.add_argument("--data_dir", default=None, help="default: $PADIR_DATA_DIR or ../shared/data")
  nbest.add_argument("--beam_size", type=cli.int_range(2), default=5)
  nbest.add_argument("--batch_size", type=cli.positive_int, default=64)
  nbest.add_argument("--chunk", type=cli.positive_int, default=2048, help="lines per saved part")
  nbest.add_argument(
      "--max_lines", type=cli.non_negative_int, default=0, help="> 0: only the first N (tests)"
  )
  select = commands.add_parser("select", help="score the candidates with PaDIR, keep the best")
  select.add_argument("--student", required=True, help="PaDIR core checkpoint directory")
  select.add_argument("--candidates", required=True, help="an `nbest` --out directory")
  select.add_argument("--out", required=True, help="data directory to write (de-en/train.*)")
  select.add_argument("--batch_size", type=cli.positive_int, default=256)
  targets = commands.add_parser("targets", help="target sets against the training references")
  targets.add_argument(
      "--targets",
      action="append",
      required=True,
      help="NAME=DIR, a data directory holding de-en/train.{de,en} (repeatable)",
  )
  targets.add_argument(
      "--data_dir", default=None, help="default: $PADIR_DATA_DIR or ../shared/data"
  )
  targets.add_argument("--sample", type=cli.positive_int, default=10000, help="sources scored")
  targets.add_argument("--seed", type=int, default=0)
  targets.add_argument("--out", default=None, help="JSON file to write")
  return parser


def first_target_per_source(pairs) -> dict[str, str]:
  """{source: target} from [(source, target)], a repeated source keeping its first target."""
  targets: dict[str, str] = {}
  for source, target in pairs:
    targets.setdefault(source, target)
  return targets


def compare_targets(
    references: dict[str, str], target_sets: dict[str, dict[str, str]], sample: int, seed: int
) -> dict:
  """Each target set against the references on one seeded sample of the shared sources.

  Args:
    references: {source: reference}.
    target_sets: {name: {source: target}}.
    sample: at most this many sources are scored (all of them when fewer are shared).
    seed: the sample's seed.

  Returns:
    {'shared_sources', 'scored_sources', 'reference_words', 'sets': {name: {'bleu', 'chrf',
     'words'}}, 'same_target': {'a|b': fraction of the shared sources where a and b agree}}.
  """
  from padir_t5x.data import metrics  # pylint: disable=g-import-not-at-top

  shared = set(references)
  for targets in target_sets.values():
    shared &= set(targets)
  ordered = sorted(shared)
  np.random.default_rng(seed).shuffle(ordered)
  scored = ordered[:sample]
  gold = [references[source] for source in scored]

  def words(lines):
    return round(float(np.mean([len(line.split()) for line in lines])), 2) if lines else 0.0

  sets = {}
  for name, targets in target_sets.items():
    hypotheses = [targets[source] for source in scored]
    sets[name] = {
        "bleu": round(metrics.corpus_bleu(gold, hypotheses), 2),
        "chrf": round(metrics.chrf(gold, hypotheses)["chrf"], 2),
        "words": words(hypotheses),
    }
  names = list(target_sets)
  same = {
      f"{a}|{b}": round(
          sum(target_sets[a][x] == target_sets[b][x] for x in ordered) / max(len(ordered), 1), 4
      )
      for i, a in enumerate(names)
      for b in names[i + 1 :]
  }
  return {
      "shared_sources": len(ordered),
      "scored_sources": len(scored),
      "reference_words": words(gold),
      "sets": sets,
      "same_target": same,
  }


def main_nbest(parser, args) -> int:
  _, source_path = distill_budget.teacher_run_paths(parser, args)
  from padir_t5x.core import checkpoints  # pylint: disable=g-import-not-at-top
  from padir_t5x import translate  # pylint: disable=g-import-not-at-top

  sources = [line for _, line in textio.iter_text_lines(source_path)]
  if args.max_lines:
    sources = sources[: args.max_lines]
  params_path = os.path.join(args.teacher, checkpoints.PARAMS_FILE)
  settings = {
      "teacher": os.path.abspath(args.teacher),
      "teacher_params_sha256": _file_sha256(params_path) if os.path.isfile(params_path) else None,
      "source": os.path.abspath(source_path),
      "source_lines": len(sources),
      "beam_size": args.beam_size,
      "chunk": args.chunk,
  }
  try:
    check_settings(args.out, settings)
  except ValueError as error:
    parser.error(f"--out: {error}")
  try:
    translator = translate.Translator.from_checkpoint(
        args.teacher,
        kind="ar",
        beam_size=args.beam_size,
        batch_size=args.batch_size,
        keep_candidates=True,
    )
  except checkpoints.CheckpointError as error:
    parser.error(f"--teacher: {error}")
  counts = run_nbest(translator, sources, args.out, args.chunk, log=lambda m: print(m, flush=True))
  record = {**settings, **counts}
  textio.write_atomically(
      os.path.join(args.out, NBEST_RECORD), json.dumps(record, indent=2).encode("utf-8")
  )
  print(json.dumps(record))
  return 0


def main_select(parser, args) -> int:
  cli.check_output_path(
      parser,
      "--out",
      args.out,
      inputs={"--candidates": args.candidates, "--student": args.student},
      kind="dir",
      make_parents=True,
  )
  if not os.path.isfile(os.path.join(args.candidates, NBEST_RECORD)):
    parser.error(
        f"--candidates: {args.candidates} has no {NBEST_RECORD}: not a finished `nbest` run"
    )
  from padir_t5x import em_actions  # pylint: disable=g-import-not-at-top
  from padir_t5x.core import checkpoints  # pylint: disable=g-import-not-at-top
  from padir_t5x.core import loading  # pylint: disable=g-import-not-at-top
  from padir_t5x.t5x_adapter import jobs  # pylint: disable=g-import-not-at-top

  try:
    loaded = loading.load(args.student, kind="padir")
  except checkpoints.CheckpointError as error:
    parser.error(f"--student: {error}")
  try:
    candidates = jobs.read_candidates(args.candidates)
  except em_actions.EmError as error:
    parser.error(f"--candidates: {error}")
  start = time.perf_counter()
  scores, cut = score_candidates(
      loaded, candidates, args.batch_size, log=lambda m: print(m, flush=True)
  )
  num_sources = len({c.source_index for c in candidates})
  chosen = em_actions.select_best(candidates, scores.tolist(), num_sources)
  write_selection(args.out, chosen)
  ranks = collections.Counter(c.rank for c, _ in chosen)
  record = {
      "student": os.path.abspath(args.student),
      "candidates_dir": os.path.abspath(args.candidates),
      "sources": num_sources,
      "candidates": len(candidates),
      "pairs_cut_to_the_tables": cut,
      "chosen_rank": {str(k): ranks[k] for k in sorted(ranks)},
      "not_top_beam": num_sources - ranks.get(0, 0),
      "mean_nar_score_chosen": round(float(np.mean([s for _, s in chosen])), 4),
      "seconds": round(time.perf_counter() - start, 1),
  }
  textio.write_atomically(
      os.path.join(args.out, SELECT_RECORD), json.dumps(record, indent=2).encode("utf-8")
  )
  print(json.dumps(record))
  return 0


def _read_pairs(parser, flag: str, data_dir: str) -> dict[str, str]:
  paths = [os.path.join(data_dir, "de-en", f"train.{language}") for language in ("de", "en")]
  try:
    return first_target_per_source(textio.read_parallel_files(*paths))
  except ValueError as error:  # textio's CorpusFileError names the file and line
    parser.error(f"{flag}: {error}")


def main_targets(parser, args) -> int:
  named = {}
  for spec in args.targets:
    name, sep, directory = spec.partition("=")
    if not sep or not name or not directory:
      parser.error(f"--targets: expected NAME=DIR, got {spec!r}")
    if name in named:
      parser.error(f"--targets: the name {name!r} is given twice")
    named[name] = directory
  data_dir = shared_data.data_dir_or_error(parser, args.data_dir)
  if args.out:
    inputs = {"--data_dir": data_dir, **{f"--targets {n}": d for n, d in named.items()}}
    cli.check_output_path(parser, "--out", args.out, inputs=inputs, make_parents=True)
  references = _read_pairs(parser, "--data_dir", data_dir)
  target_sets = {name: _read_pairs(parser, f"--targets {name}", d) for name, d in named.items()}
  report = compare_targets(references, target_sets, args.sample, args.seed)
  report = {"data_dir": os.path.abspath(data_dir), "sample_seed": args.seed, **report}
  for name, row in report["sets"].items():
    print(f"{name:20s} BLEU {row['bleu']:6.2f}  chrF {row['chrf']:6.2f}  words {row['words']:.2f}")
  print(
      f"{'references':20s} words {report['reference_words']:.2f} ({report['scored_sources']} of "
      f"{report['shared_sources']} shared sources)"
  )
  for pair, fraction in report["same_target"].items():
    print(f"same target {pair}: {fraction:.1%}")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    textio.write_atomically(args.out, (json.dumps(report, indent=2) + "\n").encode("utf-8"))
  return 0


@cli.entry_point
def main(argv=None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command == "nbest":
    return main_nbest(parser, args)
  if args.command == "select":
    return main_select(parser, args)
  return main_targets(parser, args)


if __name__ == "__main__":
  sys.exit(main())
