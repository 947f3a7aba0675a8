"""How much of PaDIR's gap is its length predictor: dev BLEU with the lengths given.

    python -m benchmarks.length_oracle --padir benchmarks/checkpoints/padir_distilled_dropout0 \
        --teacher benchmarks/checkpoints/ar_dropout0 --out benchmarks/results/length_oracle.json

One PaDIR checkpoint decodes the dev split (default `dev-multi30k`; never a test set) with its
recorded decoding settings, once per row, the only change being the lengths its hypotheses are
given:
- `predicted`: the length predictor's top-l (the normal decode);
- `gold`, `gold+-R`: the reference's length (pieces + EOS), and the 2R + 1 lengths around it;
- `teacher`, `teacher+-R` (with --teacher): the length of an AR model's beam output, the lengths a
  student of that teacher was trained on.
With several lengths the decoder's usual score (DecodingConfig.score, plus the length log-prob)
picks one, as it picks among the predicted ones. If `gold` beat `predicted` by far, better
lengths would close the gap; if not, the token predictions are what lags.

Per row: SacreBLEU (13a), chrF, and how often the chosen hypothesis has the reference's length.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys

import jax
import numpy as np

from benchmarks import quality
from benchmarks import timing
from padir_t5x.core import checkpoints
from padir_t5x import cli
from padir_t5x import EOS_ID
from padir_t5x.data import metrics
from padir_t5x.data import textio


def length_windows(centres: np.ndarray, radius: int, max_length: int) -> np.ndarray:
  """[N, 2R + 1] int32 lengths centre-R..centre+R, clipped to 2..max_length (one content token).

  Args:
    centres: [N] int lengths (EOS included).
    radius: R >= 0.
    max_length: t, the longest decodable length.
  """
  offsets = np.arange(-radius, radius + 1)  # [2R + 1]
  return np.clip(centres[:, None] + offsets[None, :], 2, max_length).astype(np.int32)


@functools.partial(jax.jit, static_argnames=("module", "config", "max_decode_length"))
def decode_at_lengths(module, params, tokens, rng, config, max_decode_length, lengths):
  """The best hypothesis per source: (sequences [b, t], lengths [b]).

  Args:
    tokens: [b, s] int32 EOS-terminated sources.
    lengths: [b, l'] int32 lengths to decode, or None for the predictor's top-l.
  """
  from padir_t5x.decoders import decoding  # pylint: disable=g-import-not-at-top
  from padir_t5x.core import network  # pylint: disable=g-import-not-at-top

  encoded, length_logits = network.encode_and_predict_length(module, params, tokens)  # [b, s, d]
  refine_fn = decoding.network_refine_fn(module, params, encoded, tokens)
  result = decoding.iterative_refinement_decode(
      refine_fn, length_logits, rng, config, max_decode_length, length_beam_lengths=lengths
  )  # sequences [b, c, t], best last
  return result.sequences[:, -1, :], result.lengths[:, -1]


def decode_rows(translator, encoded: list[list[int]], lengths: np.ndarray | None, seed: int = 0):
  """(texts, chosen lengths [N]) of `encoded` sources given `lengths` [N, l'] (None: predicted).

  Batches of translator.batch_size rows padded with EOS-only sources, at the model's full input
  width, so one shape compiles per row kind.
  """
  from padir_t5x import vocab  # pylint: disable=g-import-not-at-top

  size, width = translator.batch_size, translator.max_input_length
  texts: list[str] = []
  chosen: list[int] = []
  for batch_index, begin in enumerate(range(0, len(encoded), size)):
    rows = encoded[begin : begin + size]
    tokens = np.zeros((size, width), np.int32)
    tokens[:, 0] = EOS_ID
    for row, ids in enumerate(rows):
      tokens[row, : len(ids)] = ids
      tokens[row, len(ids)] = EOS_ID
    given = None
    if lengths is not None:
      given = np.full((size, lengths.shape[1]), 2, np.int32)
      given[: len(rows)] = lengths[begin : begin + size]
    sequences, best_lengths = decode_at_lengths(
        translator.module,
        translator.params,
        tokens,
        jax.random.fold_in(jax.random.PRNGKey(seed), batch_index),
        translator.decoding_config,
        translator.max_decode_length,
        given,
    )
    texts.extend(vocab.ids_to_text(translator.processor, np.asarray(sequences)[: len(rows)]))
    chosen.extend(np.asarray(best_lengths)[: len(rows)].tolist())
  return texts, np.array(chosen)


@cli.entry_point
def main(argv=None) -> int:
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--padir", required=True, help="PaDIR core checkpoint directory")
  parser.add_argument("--teacher", default=None, help="AR core checkpoint: its output lengths")
  parser.add_argument("--teacher_beam", type=cli.positive_int, default=5)
  parser.add_argument(
      "--radius", type=cli.non_negative_int, default=2, help="R of the +-R rows (0: none)"
  )
  parser.add_argument("--data_dir", default=None, help="default: $PADIR_DATA_DIR or ../shared/data")
  parser.add_argument("--split", default="dev-multi30k")
  parser.add_argument(
      "--max_sentences", type=cli.non_negative_int, default=0, help="> 0: the first N (tests)"
  )
  parser.add_argument("--batch_size", type=cli.positive_int, default=64)
  parser.add_argument("--seed", type=cli.seed_int, default=0)
  parser.add_argument("--out", default="benchmarks/results/length_oracle.json")
  args = parser.parse_args(argv)

  # Every flag is checked before a checkpoint is loaded or a sentence decoded.
  cli.check_output_path(parser, "--out", args.out, make_parents=True)
  for flag, path, kind in (("--padir", args.padir, "padir"), ("--teacher", args.teacher, "ar")):
    if path is None:
      continue
    if not os.path.isfile(os.path.join(path, checkpoints.CONFIG_FILE)):
      parser.error(f"{flag}: no core checkpoint at {path!r} (no {checkpoints.CONFIG_FILE})")
    found = checkpoints.read_config(path)["kind"]
    if found != kind:
      parser.error(f"{flag}: {path} holds a model of kind {found!r} (config.json), not {kind!r}")
  sources, references = quality.read_dev_pairs(parser, args)

  from padir_t5x import translate  # pylint: disable=g-import-not-at-top

  translator = translate.Translator.from_checkpoint(
      args.padir, kind="padir", batch_size=args.batch_size
  )
  encoded, truncated = translator.encode(sources)
  t = translator.max_decode_length
  gold = np.array([len(translator.processor.encode(r)) + 1 for r in references])  # EOS included
  centres = {"gold": gold}
  if args.teacher:
    teacher = translate.Translator.from_checkpoint(
        args.teacher, kind="ar", beam_size=args.teacher_beam, batch_size=args.batch_size
    )
    outputs = teacher.translate(sources, details=True)
    centres["teacher"] = np.array([o.length for o in outputs])  # EOS included
  rows_to_run = [("predicted", None)]
  for name, centre in centres.items():
    rows_to_run.append((name, length_windows(centre, 0, t)))
    if args.radius:
      rows_to_run.append((f"{name}+-{args.radius}", length_windows(centre, args.radius, t)))

  bleu = metrics.make_bleu_metric("en")
  results = []
  for name, lengths in rows_to_run:
    texts, chosen = decode_rows(translator, encoded, lengths, args.seed)
    row = {
        "lengths": name,
        "bleu": round(bleu(references, texts)["bleu"], 2),
        "chrf": round(metrics.chrf(references, texts)["chrf"], 2),
        "chosen_length_is_gold": round(float(np.mean(chosen == gold)), 4),
    }
    results.append(row)
    print(
        f"{name:14s} BLEU {row['bleu']:6.2f}  chrF {row['chrf']:6.2f}  "
        f"chosen length = gold {row['chosen_length_is_gold']:.3f}",
        flush=True,
    )
  out = {
      "padir": os.path.abspath(args.padir),
      "teacher": args.teacher and os.path.abspath(args.teacher),
      "teacher_beam": args.teacher_beam if args.teacher else None,
      "split": args.split,
      "num_sentences": len(sources),
      "truncated_sources": len(truncated),
      "decoding": {
          f.name: str(getattr(translator.decoding_config, f.name))
          for f in dataclasses.fields(translator.decoding_config)
          if f.name != "word_starts"  # a table over the vocabulary
      },
      "machine": timing.environment(),
      "results": results,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  textio.write_atomically(args.out, (json.dumps(out, indent=1) + "\n").encode("utf-8"))
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
