"""Speed map: PaDIR against the fastest AR a user could pick, by model size, batch and dtype.

    python -m benchmarks.speed_map --out benchmarks/results/speed_map.json \\
        --plot benchmarks/results/speed_map.png                    # the full map (hours on a CPU)
    python -m benchmarks.speed_map --sizes tiny --batch_sizes 1,2 --reps 2 \\
        --source_length 8 --target_length 8                        # a CPU smoke run

Random weights at fixed work, as benchmarks/accelerator.py (whose `random_params` it uses): no
checkpoint, no data, no vocabulary, so every system does the same work whatever the weights
predict. Each size's PaDIR network and its AR twin are drawn once; the CTranslate2 model is
built from the very AR parameters the JAX AR decoders run (padir_t5x.export.
export_ctranslate2_params, synthetic tokens 't0'.. for the ids), so both runtimes time the same
network. Systems (--systems, a subset of these names):

* padir_l1, padir_l3, padir_l5 (jax): decoders.PadirDecoder, T = 4 passes with early stopping
  off, l = 1, 3, 5 length candidates, over exactly --target_length positions (no buckets).
* padir_l5_k1, padir_l5_k2 (jax): l = 5 with candidate pruning (DecodingConfig.refine_top_k):
  the first pass over the 5 candidates, the other 3 over the best k only.
* jax_greedy: decoders.ArGreedyDecoder. Greedy search stops once every row has emitted EOS; a
  random network repeats one ordinary token and never does, so it runs all t steps. Each row
  checks it (the batch's decoder steps == t); a row where it did not is re-timed with
  ArBeamDecoder(beam_size=1, early_stopping=False) and says so ('fallback').
* jax_beam5: decoders.ArBeamDecoder, beam 5, alpha 0.6, early_stopping=False (all t steps).
* ct2_greedy, ct2_beam5: CTranslate2 translate_batch with beam_size 1 or 5 and
  min_decoding_length = max_decoding_length = t (EOS barred until step t: the same t steps),
  compute_type float32 and int8 (--ct2_compute_types), intra_threads = os.cpu_count() (the cores
  XLA's CPU client uses; --ct2_intra_threads) and inter_threads = 1, recorded in each row.

Sizes (vocab_size = embedding rows, vocab_high = the real vocabulary decoded over):

* tiny: d=128, 2+2 layers, 4 heads, FFN 512, vocab 4000 padded to 4096.
* small: d=256, 3+3 layers, 4 heads, FFN 1024, vocab 4000 padded to 4096.
* base: network_config.base_config, d=512, 6+6 layers, 8 heads, FFN 2048, vocab 32128 (all real).
* base_deep_shallow: base with 6 encoder and 2 decoder layers (Kasai et al. 2021), for PaDIR
  and the AR alike.

Sources: --source_length random ordinary ids (the same for every system at a size and batch),
then EOS for the JAX decoders; CTranslate2 gets the ids as token strings and appends the EOS
itself (add_source_eos), so both read source_length + 1 tokens. JAX activations run in each of
--dtypes (float32, bfloat16; parameters stay float32).

Each row: one call per batch timed to completion after a warm-up call (the warm-up minus the
median is compile_s), --reps timed calls: median/p90/p99 ms, sentences/s, the load average
before and after the row; rows follow benchmarks/results/results.json's schema (system,
setting, params, latency_ms, compile_s, throughput_sent_per_s, decoder_passes_per_sentence)
plus runtime, dtype, size, batch and the network's shape. CTranslate2 rows are
{"skipped": reason} where ctranslate2 does not import (a bare accelerator machine).

At the end: a markdown table per size and batch (PaDIR T=4 l=1 and l=5, each at its faster
dtype; the best AR greedy, the fastest of CTranslate2 greedy float32/int8 and JAX greedy; the
best AR beam 5; the ratios AR median / PaDIR median, > 1 when PaDIR is faster) and the crossover,
the smallest size (by parameter count) at which PaDIR l=1 beats the best AR greedy, per batch.
--plot draws those ratios (matplotlib, imported only then).

Imports only jax, flax, numpy, padir_t5x's core and, when present, ctranslate2: no t5x,
TensorFlow, seqio, sentencepiece or sacrebleu (tests/test_speed_map.py runs it with them
blocked).

This module is the command; the timed rows are benchmarks/speed_map_rows.py, the summary (table,
crossover, plot) benchmarks/speed_map_summary.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import jax

from benchmarks import timing
from benchmarks.speed_map_rows import CT2_COMPUTE_TYPES
from benchmarks.speed_map_rows import JAX_DTYPES
from benchmarks.speed_map_rows import PADIR_SYSTEMS
from benchmarks.speed_map_rows import SIZES
from benchmarks.speed_map_rows import SYSTEMS
from benchmarks.speed_map_rows import run
from benchmarks.speed_map_summary import crossover_line
from benchmarks.speed_map_summary import markdown_table
from benchmarks.speed_map_summary import plot
from benchmarks.speed_map_summary import summary
from padir_t5x import cli
from padir_t5x.decoders.decoding_config import DecodingConfig


# ------------------------------------------------------------------------------------------------
# The command.
def _names(parser, flag: str, text: str, allowed: Sequence[str]) -> list[str]:
  items = [item.strip() for item in text.split(",") if item.strip()]
  if not items:
    parser.error(f"argument {flag}: expected a comma-separated subset of {', '.join(allowed)}")
  for item in items:
    if item not in allowed:
      parser.error(f"argument {flag}: {item!r} is not one of {', '.join(allowed)}")
  return list(dict.fromkeys(items))


def parse_args(argv=None):
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="tiny,small,base_deep_shallow,base")
  parser.add_argument("--batch_sizes", type=cli.int_list(1), default=[1, 8, 64])
  parser.add_argument("--dtypes", default="float32,bfloat16", help="JAX activation dtypes")
  parser.add_argument(
      "--ct2_compute_types", default="float32,int8", help="CTranslate2 compute types"
  )
  parser.add_argument(
      "--ct2_device",
      choices=("auto", "cpu", "cuda"),
      default="auto",
      help="auto: cuda where ctranslate2 sees a CUDA device, else cpu",
  )
  parser.add_argument(
      "--ct2_intra_threads",
      type=cli.non_negative_int,
      default=0,
      help="CTranslate2 intra_threads (0: os.cpu_count(), the cores XLA uses); 1 is far "
      "faster on a CPU another job keeps busy",
  )
  parser.add_argument("--systems", default=",".join(SYSTEMS), help="a subset, comma-separated")
  parser.add_argument("--reps", type=cli.positive_int, default=20, help="timed calls per row")
  parser.add_argument("--source_length", type=cli.positive_int, default=32)
  parser.add_argument("--target_length", type=cli.positive_int, default=32)
  parser.add_argument("--seed", type=cli.seed_int, default=0)
  parser.add_argument("--out", default=None, help="JSON file to write (rows and environment)")
  parser.add_argument(
      "--extend",
      default=None,
      help="an earlier --out file whose rows join this run's (this run's row wins where both "
      "time the same size, system, dtype and batch); may be --out itself, so that a map too "
      "long for one sitting is built batch by batch",
  )
  parser.add_argument("--plot", default=None, help="PNG file to draw the speed ratios into")
  args = parser.parse_args(argv)
  # Every refusal before any work: exit 2, one line naming the flag.
  args.sizes = _names(parser, "--sizes", args.sizes, tuple(SIZES))
  args.dtypes = _names(parser, "--dtypes", args.dtypes, JAX_DTYPES)
  args.ct2_compute_types = _names(
      parser, "--ct2_compute_types", args.ct2_compute_types, CT2_COMPUTE_TYPES
  )
  args.systems = _names(parser, "--systems", args.systems, SYSTEMS)
  lengths = max((PADIR_SYSTEMS[s][0] for s in args.systems if s in PADIR_SYSTEMS), default=1)
  min_target = lengths + DecodingConfig().min_length - 1
  if args.target_length < min_target:
    parser.error(
        f"argument --target_length: PaDIR l={lengths} needs >= {min_target}, got "
        f"{args.target_length}"
    )
  args.extend_rows, args.extend_environments = _read_extend(parser, args.extend)
  cli.check_output_path(parser, "--out", args.out)
  cli.check_output_path(parser, "--plot", args.plot, inputs={"--out": args.out})
  if args.plot is not None:
    try:
      import matplotlib  # pylint: disable=g-import-not-at-top

      del matplotlib
    except ImportError as error:
      parser.error(f"argument --plot: matplotlib does not import ({error})")
  return args


def _row_key(row) -> tuple:
  return (row["size"], row["name"], row["dtype"], row["batch"])


def _read_extend(parser, path: str | None) -> tuple[list[dict], list[dict]]:
  """(rows, environments) of an earlier map (--extend), read before any work."""
  if path is None:
    return [], []
  try:
    with open(path, encoding="utf-8") as f:
      earlier = json.load(f)
    rows = earlier["results"]
    environments = [*earlier.get("earlier_environments", []), earlier["environment"]]
    for row in rows:
      _row_key(row)
  except (OSError, ValueError, KeyError, TypeError) as error:
    parser.error(f"argument --extend: {path}: not a speed map's JSON ({error!r})")
  return rows, environments


def extend(report: dict, rows: list[dict], environments: list[dict]) -> dict:
  """`report` with the earlier `rows` it does not re-time added before its own, and the earlier
  runs' environments kept (each row keeps its own load average)."""
  mine = {_row_key(r) for r in report["results"]}
  kept = [r for r in rows if _row_key(r) not in mine]
  return {
      "results": kept + report["results"],
      "environment": report["environment"],
      "earlier_environments": environments,
  }


@cli.entry_point
def main(argv=None):
  args = parse_args(argv)
  log = print
  log(f"devices {jax.devices()}  load average {timing.load_average()}")
  report = run(args, log=log)
  if args.extend is not None:
    report = extend(report, args.extend_rows, args.extend_environments)
  entries = summary(report["results"])
  log(markdown_table(entries))
  log(crossover_line(entries))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
      f.write("\n")
  if args.plot:
    device = report["environment"]["devices"][0] if report["environment"]["devices"] else ""
    plot(entries, args.plot, f"PaDIR over the best AR greedy, t={args.target_length}, {device}")
    log(f"wrote {args.plot}")
  return report


if __name__ == "__main__":
  main()
