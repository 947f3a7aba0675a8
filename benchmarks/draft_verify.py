"""Draft and verify against AR greedy: exactness, sequential calls, BLEU, batch-1 latency.

    python -m benchmarks.draft_verify --ar_checkpoint benchmarks/checkpoints/ar \
        --padir_checkpoint benchmarks/checkpoints/padir_distilled --split dev-multi30k \
        --num_sentences 1014 --latency_sentences 300 --out runs/draft_verify/results.json

On the dev pairs that fit both models' position tables (benchmarks.common.load_dev_set), it runs
AR greedy (ar_decoding.greedy_search, cached), AR beam 5 (the quality reference of 'tolerant')
and draft_verify.draft_verify_decode in 'strict' and each --tolerant TOP_K:MARGIN setting, and
reports per system:

* identical_to_ar_greedy: the fraction of sentences whose output equals AR greedy's token for
  token (1.0 in strict mode, by construction);
* sequential_calls_per_sentence: draft-and-verify's AR verify calls + PaDIR passes; AR greedy's
  decoder steps (its output tokens with EOS); the encoders are not counted in either;
* rounds_per_sentence and accepted_draft_tokens_per_sentence (draft-and-verify);
* SacreBLEU and stutter of every system on all the sentences (decoded in batches of
  --batch_size; the same pass gives sentences/s at that batch), and BLEU against AR beam 5's
  output for the tolerant settings (how far from the AR model's own best they drift);
* batch-1 latency (median, p90, p99, mean ms; after --warmup calls) on the first
  --latency_sentences, and the first call's compile time.

Writes a JSON with the rows (the RESULT_KEYS of benchmarks/latency.py plus the fields above)
under "results", in the schema of benchmarks/results/results.json, and a markdown table beside
it (.md). Needs only jax, flax, numpy, sacrebleu, sentencepiece and the project.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

import jax
import numpy as np

from benchmarks import common
from benchmarks import latency
from padir_t5x import cli
from padir_t5x.decoders import decoders
from padir_t5x.decoders import draft_verify
from padir_t5x.decoders import drafters
from padir_t5x.core import loading
from padir_t5x.data import metrics as metrics_lib
from padir_t5x.data import shared_data
from padir_t5x.decoders.decoding_config import DecodingConfig

EXTRA_KEYS = (
    "identical_to_ar_greedy",
    "sequential_calls_per_sentence",
    "rounds_per_sentence",
    "accepted_draft_tokens_per_sentence",
    "bleu_vs_ar_beam5",
)


def _batches(source_ids: np.ndarray, batch: int):
  """(start, [batch, s] rows) over source_ids, the last batch padded with copies of row 0."""
  n = source_ids.shape[0]
  for start in range(0, n, batch):
    rows = source_ids[start : start + batch]
    if rows.shape[0] < batch:
      rows = np.concatenate([rows, np.repeat(source_ids[:1], batch - rows.shape[0], 0)])
    yield start, rows


def run_batched(decode, source_ids: np.ndarray, batch: int) -> tuple[dict, float]:
  """Every sentence through decode(tokens [B, s]) -> dict of [B, ...] arrays; returns the
  concatenated dict (first n rows) and sentences/s (the first batch, which compiles, untimed)."""
  n = source_ids.shape[0]
  decode(source_ids[:batch] if n >= batch else next(_batches(source_ids, batch))[1])
  outputs: dict[str, list] = {}
  start_time = time.perf_counter()
  for start, rows in _batches(source_ids, batch):
    for key, value in decode(rows).items():
      outputs.setdefault(key, []).append(value[: min(batch, n - start)])
  seconds = time.perf_counter() - start_time
  return {k: np.concatenate(v) for k, v in outputs.items()}, n / seconds


def batch1_latency(decode, source_ids: np.ndarray, warmup: int) -> tuple[dict, float]:
  """(latency_summary of one-sentence calls, first call seconds)."""
  start = time.perf_counter()
  decode(source_ids[:1])
  first = time.perf_counter() - start
  for i in range(warmup):
    decode(source_ids[i % len(source_ids)][None])
  seconds = []
  for i in range(len(source_ids)):
    start = time.perf_counter()
    decode(source_ids[i : i + 1])
    seconds.append(time.perf_counter() - start)
  return latency.latency_summary(seconds), first


def _trim(row: np.ndarray) -> tuple[int, ...]:
  """An output row up to and including its first EOS (the whole row without one)."""
  length = latency.output_length(row)
  return tuple(int(x) for x in row[:length])


def identical_fraction(outputs: np.ndarray, reference: np.ndarray) -> float:
  same = [_trim(a) == _trim(b) for a, b in zip(outputs, reference)]
  return float(np.mean(same))


def load_models(ar_checkpoint: str, padir_checkpoint: str):
  """(the AR verifier, the PaDIR drafter) as loading.LoadedModel; they must share a vocabulary."""
  ar = loading.load(ar_checkpoint, kind="ar")
  padir = loading.load(padir_checkpoint, kind="padir")
  loading.check_same_vocabulary(ar, padir)
  return ar, padir


def run(args, log=print) -> dict:
  ar, padir = load_models(args.ar_checkpoint, args.padir_checkpoint)
  ar_module, ar_params, ar_meta = ar.module, ar.params, ar.meta
  padir_module, padir_params, padir_meta = padir.module, padir.params, padir.meta
  processor, vocab_high = ar.vocabulary, ar.vocab_high
  t = min(
      ar_module.config.max_target_length,
      padir_module.config.max_target_length,
      ar_module.config.max_input_length,
      padir_module.config.max_input_length,
  )
  sources, references, source_ids, kept = common.load_dev_set(
      args.data_dir, processor, args.num_sentences, t, args.split
  )
  log(f"{len(sources)} {args.split} sentences (source and reference <= {t} pieces)")
  rng = jax.random.PRNGKey(args.seed)
  base = dataclasses.replace(
      padir.decoding,
      length_beam=args.length_beam,
      max_passes=args.max_passes,
      length_offsets=args.length_offsets,
      inits_per_length=args.inits_per_length,
      length_buckets=tuple(args.length_buckets),
      init=args.init,
  )
  reuse = {
      "reuse_drafts": args.reuse_drafts,
      "shift_variants": args.shift_variants,
      "verify_candidates": args.verify_candidates,
  }
  dv_configs = {"strict": draft_verify.DraftVerifyConfig(base, args.redraft_passes, **reuse)}
  for spec in args.tolerant:
    top_k, margin = spec.split(":")
    dv_configs[f"tolerant,k={top_k},margin={margin}"] = draft_verify.DraftVerifyConfig(
        base, args.redraft_passes, "tolerant", int(top_k), float(margin), **reuse
    )

  greedy_decoder = decoders.ArGreedyDecoder(
      ar_module, ar_params, max_decode_length=t, vocab_high=vocab_high
  )
  beam5_decoder = decoders.ArBeamDecoder(
      ar_module, ar_params, max_decode_length=t, beam_size=5, alpha=0.6, vocab_high=vocab_high
  )

  def greedy(tokens):
    out = jax.device_get(greedy_decoder.decode(tokens, rng))
    return {"sequences": out.best, "calls": out.steps}

  def beam5(tokens):
    return {"sequences": np.asarray(beam5_decoder.decode(tokens, rng).best)}

  drafter = drafters.PadirDrafter(padir_module)

  def draft_and_verify(config):
    def decode(tokens):
      # The counts beyond Hypotheses' steps (rounds, accepted tokens) come from the loop itself.
      out = jax.device_get(
          draft_verify.decode_with_drafter(
              ar_module, ar_params, drafter, padir_params, tokens, rng, config, t
          )
      )
      return {
          "sequences": out.sequences,
          "calls": out.rounds + out.passes,
          "rounds": out.rounds,
          "accepted": out.accepted,
      }

    return decode

  systems = [("ar", "greedy", {"greedy": True}, greedy)]
  systems += [("ar", "beam=5", {"beam": 5, "alpha": 0.6}, beam5)]
  for setting, config in dv_configs.items():
    params = {
        "verify": str(config.verify),
        "length_beam": config.decoding.length_beam,
        "length_offsets": config.decoding.length_offsets,
        "inits_per_length": config.decoding.inits_per_length,
        "max_passes": config.decoding.max_passes,
        "redraft_passes": config.redraft_config.max_passes,
        "init": str(config.decoding.init),
        "remask": str(config.decoding.remask),
        "dedup": str(config.decoding.dedup),
        "length_buckets": list(config.decoding.length_buckets),
        "reuse_drafts": config.reuse_drafts,
        "shift_variants": config.shift_variants,
        "verify_candidates": config.verify_candidates,
    }
    if config.verify.value == "tolerant":
      params.update(top_k=config.top_k, margin=config.margin)
    systems.append(("draft_verify", setting.split(",")[0], params, draft_and_verify(config)))

  results, outputs = [], {}
  latency_ids = source_ids[: args.latency_sentences]
  for name, setting, params, decode in systems:
    key = f"{name}:{setting}:{params.get('top_k', '')}:{params.get('margin', '')}"
    start = time.perf_counter()
    out, sent_per_s = run_batched(decode, source_ids, args.batch_size)
    batched_seconds = time.perf_counter() - start
    outputs[key] = out["sequences"]
    hypotheses = common.ids_to_text(processor, out["sequences"])
    lengths = [latency.output_length(row) for row in out["sequences"]]
    entry = {
        "system": name,
        "setting": setting,
        "params": params,
        "num_sentences": len(sources),
        "bleu": round(metrics_lib.corpus_bleu(references, hypotheses), 2),
        "stutter_rate": round(metrics_lib.stutter_rate(references, hypotheses)["stutter_rate"], 4),
        "mean_output_tokens": round(float(np.mean(lengths)), 2),
        "throughput_sent_per_s": round(sent_per_s, 2),
        "throughput_batch": args.batch_size,
    }
    if "calls" in out:
      calls = round(float(np.mean(out["calls"])), 2)
      entry["decoder_passes_per_sentence"] = calls
      entry["sequential_calls_per_sentence"] = calls
    if name == "draft_verify":
      entry["rounds_per_sentence"] = round(float(np.mean(out["rounds"])), 2)
      entry["accepted_draft_tokens_per_sentence"] = round(float(np.mean(out["accepted"])), 2)
    greedy_key = "ar:greedy::"
    if name == "draft_verify" or setting == "greedy":
      entry["identical_to_ar_greedy"] = round(
          identical_fraction(out["sequences"], outputs[greedy_key]), 4
      )
    if name == "draft_verify" and "ar:beam=5::" in outputs:
      beam_text = common.ids_to_text(processor, outputs["ar:beam=5::"])
      entry["bleu_vs_ar_beam5"] = round(metrics_lib.corpus_bleu(beam_text, hypotheses), 2)
    if args.latency_sentences and setting != "beam=5":
      load = os.getloadavg()[0]
      summary, first = batch1_latency(decode, latency_ids, args.warmup)
      entry["latency_ms"] = {k: round(v, 3) for k, v in summary.items()}
      entry["compile_s"] = round(max(0.0, first - summary["median"] / 1e3), 2)
      entry["latency_sentences"] = len(latency_ids)
      entry["load_avg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    entry["batched_seconds"] = round(batched_seconds, 1)
    results.append(entry)
    log(json.dumps(entry))

  # AR greedy's steps are its sequential calls: the ratio the target is stated in.
  greedy_calls = next(r for r in results if r["setting"] == "greedy")[
      "sequential_calls_per_sentence"
  ]
  for r in results:
    if r["system"] == "draft_verify":
      r["calls_vs_ar_greedy_steps"] = round(r["sequential_calls_per_sentence"] / greedy_calls, 3)
  report = {
      "results": results,
      "environment": latency.environment(),
      "data": {
          "data_dir": args.data_dir,
          "split": args.split,
          "num_sentences": len(sources),
          "latency_sentences": len(latency_ids),
          "max_length": t,
          "dev_line_indices_first_last": [kept[0], kept[-1]] if kept else [],
      },
      "checkpoints": {
          "ar": {"path": args.ar_checkpoint, "train": ar_meta.get("train", {})},
          "padir": {"path": args.padir_checkpoint, "train": padir_meta.get("train", {})},
      },
      "warmup": args.warmup,
      "command": args.command,
  }
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w", encoding="utf-8") as f:
    json.dump(report, f, indent=2)
  with open(os.path.splitext(args.out)[0] + ".md", "w", encoding="utf-8") as f:
    f.write(markdown_table(results) + "\n")
  return report


def markdown_table(results) -> str:
  lines = [
      "| system | setting | BLEU | BLEU vs AR beam 5 | identical to AR greedy | sequential calls"
      " / sent | rounds / sent | median ms (batch 1) | p90 ms | sent/s (batch) |",
      "|" + "---|" * 10,
  ]
  for r in results:
    lat = r.get("latency_ms") or {}
    fmt = lambda v, f="{:.2f}": "" if v is None else f.format(v)  # noqa: E731
    lines.append(
        f"| {r['system']} | {r['setting']}"
        f"{' k=%s m=%s' % (r['params']['top_k'], r['params']['margin']) if 'top_k' in r['params'] else ''}"
        f" | {r['bleu']:.2f} | {fmt(r.get('bleu_vs_ar_beam5'))} | "
        f"{fmt(r.get('identical_to_ar_greedy'), '{:.4f}')} | "
        f"{fmt(r.get('sequential_calls_per_sentence'))} | {fmt(r.get('rounds_per_sentence'))} | "
        f"{fmt(lat.get('median'), '{:.1f}')} | {fmt(lat.get('p90'), '{:.1f}')} | "
        f"{r['throughput_sent_per_s']:.1f} ({r['throughput_batch']}) |"
    )
  return "\n".join(lines)


def _tolerant_settings(text: str) -> list[str]:
  """--tolerant: 'TOP_K:MARGIN' items, comma-separated, each checked (TOP_K >= 1, MARGIN >= 0)."""
  specs = [x for x in text.split(",") if x]
  for spec in specs:
    top_k, colon, margin = spec.partition(":")
    if not colon:
      raise argparse.ArgumentTypeError(f"{spec!r} is not TOP_K:MARGIN")
    try:
      cli.positive_int(top_k)
      cli.non_negative_float(margin)
    except argparse.ArgumentTypeError as error:
      raise argparse.ArgumentTypeError(f"{spec!r}: TOP_K and MARGIN {error}") from None
  return specs


@cli.entry_point
def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--ar_checkpoint", required=True)
  parser.add_argument("--padir_checkpoint", required=True)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--split", default="dev-multi30k")
  parser.add_argument("--num_sentences", type=cli.positive_int, default=1014, help="for quality")
  parser.add_argument(
      "--latency_sentences", type=cli.positive_int, default=300, help="batch-1 latency"
  )
  parser.add_argument("--warmup", type=cli.non_negative_int, default=10)
  parser.add_argument("--batch_size", type=cli.positive_int, default=64, help="quality pass batch")
  # The defaults are the measured setting (README, "Draft and verify"): every one of the 15
  # candidates (5 lengths x offsets -1..1) verified, one pass per draft from random tokens.
  cli.add_config_flags(
      parser,
      DecodingConfig,
      ("length_beam", "length_offsets", "inits_per_length", "max_passes", "length_buckets", "init"),
      defaults={"length_offsets": 1, "max_passes": 1, "length_buckets": (16, 24, 32, 48, 64)},
  )
  cli.add_config_flags(
      parser, draft_verify.DraftVerifyConfig, ("redraft_passes",), defaults={"redraft_passes": 1}
  )
  parser.add_argument(
      "--reuse_drafts",
      action=argparse.BooleanOptionalAction,
      default=True,
      help="verify the last draft again (AR token in place) before re-drafting",
  )
  parser.add_argument(
      "--shift_variants",
      action=argparse.BooleanOptionalAction,
      default=True,
      help="with --reuse_drafts: also verify the reused draft shifted by one either way",
  )
  parser.add_argument(
      "--verify_candidates",
      action=argparse.BooleanOptionalAction,
      default=True,
      help="verify every drafter candidate (--length_beam of them), not only its best one",
  )
  parser.add_argument(
      "--tolerant",
      default="3:1.0",
      type=_tolerant_settings,
      help="tolerant settings TOP_K:MARGIN, comma-separated ('' for none)",
  )
  parser.add_argument("--seed", type=cli.seed_int, default=0)
  parser.add_argument("--out", default="runs/draft_verify/results.json")
  args = parser.parse_args(argv)
  args.command = "python -m benchmarks.draft_verify " + " ".join(
      argv if argv is not None else __import__("sys").argv[1:]
  )
  args.data_dir = shared_data.data_dir_or_error(parser, args.data_dir)
  cli.check_output_path(parser, "--out", args.out, make_parents=True)
  cli.check_output_path(parser, "--out", os.path.splitext(args.out)[0] + ".md", make_parents=True)
  report = run(args)
  print(markdown_table(report["results"]))


if __name__ == "__main__":
  main()
