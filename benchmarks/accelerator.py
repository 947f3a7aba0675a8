"""Decoding speed at fixed work, PaDIR against AR beam search, on whatever device jax sees.

    python -m benchmarks.accelerator --out benchmarks/results/accelerator.json   # a GPU or TPU
    python -m benchmarks.accelerator --size tiny --batch_sizes 1,2 --reps 3      # a CPU smoke run

Expected on a lent H200 (Base, 32 target positions): every row printed with its median and p99
ms per batch and sentences/s, in under 5 minutes, compiles included; the figures go to
benchmarks/README.md ("On an accelerator").

Needs only jax, flax, numpy and padir_t5x's core: no t5x, TensorFlow, seqio, sentencepiece or
sacrebleu, so that it runs on a bare accelerator machine that reaches no package index. It uses
no checkpoint and no data: the networks have random weights, so the work is fixed rather than
read off what a model happens to predict:

* PaDIR: T = 4 passes with early stopping off (DecodingConfig.early_stopping=False), l = 5
  length candidates, over a table of exactly `target_length` positions (no length buckets).
* AR: cached beam search, beam 5, for exactly `target_length` steps (early_stopping=False).

Both read sources of `source_length` random ordinary tokens. For each dtype (float32 and
bfloat16 activations; parameters stay float32) and batch size, one jitted call per batch is
timed to block_until_ready after a warm-up call (its time, minus the median, is the compile
time). Rows follow benchmarks/results/results.json's schema (system, setting, latency_ms,
throughput_sent_per_s, decoder_passes_per_sentence) with the dtype, the batch and the device.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x import cli
from padir_t5x.decoders import decoders
from padir_t5x.core import network
from padir_t5x.core import network_config
from padir_t5x.decoders.decoding_config import DecodingConfig

SIZES = {"base": network_config.base_config, "tiny": network_config.tiny_config}


def random_params(config: network_config.TransformerConfig, seed: int = 0):
  """Random float32 parameters of a network of `config` (dtype does not change them)."""
  tokens = jnp.ones((1, min(config.max_input_length, config.max_target_length)), jnp.int32)
  init = jax.jit(
      lambda rng: network.Transformer(config).init(
          rng, tokens, tokens, tokens, enable_dropout=False
      )
  )
  return init(jax.random.PRNGKey(seed))["params"]


def fixed_work_padir(
    module,
    params,
    target_length: int,
    passes: int,
    length_beam: int,
    vocab_high: int,
    refine_top_k: int | None = None,
) -> decoders.PadirDecoder:
  """PaDIR doing the same work whatever the weights predict: `passes` passes with early stopping
  off, over exactly `target_length` positions (no length buckets); `refine_top_k` prunes the
  candidates after the first pass. Also benchmarks/speed_map."""
  config = DecodingConfig(
      length_beam=length_beam,
      max_passes=passes,
      early_stopping=False,
      length_buckets=(),
      vocab_high=vocab_high,
      stutter_unit="piece",  # no vocabulary here, so no word boundaries
      refine_top_k=refine_top_k,
  )
  return decoders.PadirDecoder(module, params, max_decode_length=target_length, config=config)


def padir_decoder(config, params, target_length: int, passes: int, length_beam: int):
  """batch [b, s] -> (sequences, passes per example): PaDIR at fixed work."""
  decoder = fixed_work_padir(
      network.Transformer(config), params, target_length, passes, length_beam, config.vocab_size
  )
  rng = jax.random.PRNGKey(0)

  def decode(sources):
    result = decoder.decode(sources, rng)
    return result.sequences, result.steps

  return decode


def ar_decoder(config, params, target_length: int, beam: int):
  """batch [b, s] -> (sequences, steps): AR beam search for exactly target_length steps."""
  decoder = decoders.ArBeamDecoder(
      network.Transformer(dataclasses.replace(config, decoder_mode="autoregressive")),
      params,
      max_decode_length=target_length,
      beam_size=beam,
      vocab_high=config.vocab_size,
      early_stopping=False,
  )

  def decode(sources):
    result = decoder.decode(sources, None)
    return result.sequences, result.steps

  return decode


def run(
    size: str = "base",
    dtypes=("float32", "bfloat16"),
    batch_sizes=(1, 8, 64),
    source_length: int = 32,
    target_length: int = 32,
    passes: int = 4,
    length_beam: int = 5,
    beam: int = 5,
    reps: int = 20,
    log=print,
) -> dict:
  """Times every (system, dtype, batch); returns {'results': rows, 'environment': ...}."""
  base = SIZES[size](max_input_length=source_length, max_target_length=target_length)
  padir_params = random_params(base)
  ar_params = random_params(dataclasses.replace(base, decoder_mode="autoregressive"))
  rng = np.random.default_rng(0)
  rows = []
  for dtype in dtypes:
    config = dataclasses.replace(base, dtype=dtype)
    systems = (
        (
            "padir",
            f"T={passes},l={length_beam}",
            padir_decoder(config, padir_params, target_length, passes, length_beam),
        ),
        ("ar", f"beam={beam}", ar_decoder(config, ar_params, target_length, beam)),
    )
    for batch in batch_sizes:
      sources = jnp.asarray(
          rng.integers(FIRST_ORDINARY_ID, base.vocab_size, (batch, source_length)), jnp.int32
      )
      for system, setting, decode in systems:
        call = lambda: decode(sources)  # noqa: E731 (bound per iteration, called at once)
        seconds, first = timing.time_calls(call, reps)
        latency = timing.latency_summary(seconds)
        calls = float(np.mean(np.asarray(call()[1])))
        row = {
            "system": system,
            "setting": setting,
            "dtype": dtype,
            "batch": batch,
            "size": size,
            "source_length": source_length,
            "target_length": target_length,
            "latency_ms": {k: round(v, 3) for k, v in latency.items()},
            "compile_s": round(first - latency["median"] / 1e3, 2),
            "throughput_sent_per_s": round(batch / (latency["median"] / 1e3), 2),
            "decoder_passes_per_sentence": calls,
        }
        rows.append(row)
        log(
            f"{system:5s} {setting:9s} {dtype:8s} batch {batch:3d}  median "
            f"{latency['median']:9.2f} ms  p99 {latency['p99']:9.2f} ms  "
            f"{row['throughput_sent_per_s']:10.1f} sent/s  calls {calls:g}  "
            f"compile {row['compile_s']:.1f}s"
        )
  return {"results": rows, "environment": timing.environment()}


def markdown_table(rows) -> str:
  """One line per (dtype, batch): PaDIR and AR side by side, and AR median / PaDIR median."""
  by_key = {(r["dtype"], r["batch"], r["system"]): r for r in rows}
  lines = [
      "| dtype | batch | PaDIR median ms | PaDIR p99 ms | PaDIR sent/s | AR median ms | AR p99 ms "
      "| AR sent/s | AR / PaDIR median | AR / PaDIR p99 |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for dtype, batch in dict.fromkeys((r["dtype"], r["batch"]) for r in rows):
    p, a = by_key.get((dtype, batch, "padir")), by_key.get((dtype, batch, "ar"))
    if p is None or a is None:
      continue
    pl, al = p["latency_ms"], a["latency_ms"]
    lines.append(
        f"| {dtype} | {batch} | {pl['median']:.2f} | {pl['p99']:.2f} | "
        f"{p['throughput_sent_per_s']:.1f} | {al['median']:.2f} | {al['p99']:.2f} | "
        f"{a['throughput_sent_per_s']:.1f} | {al['median'] / pl['median']:.2f}x | "
        f"{al['p99'] / pl['p99']:.2f}x |"
    )
  return "\n".join(lines)


@cli.entry_point
def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="base")
  parser.add_argument(
      "--dtypes", default="float32,bfloat16", help="activation dtypes, comma-separated"
  )
  parser.add_argument("--batch_sizes", type=cli.int_list(1), default=[1, 8, 64])
  parser.add_argument("--source_length", type=cli.positive_int, default=32)
  parser.add_argument("--target_length", type=cli.positive_int, default=32)
  parser.add_argument("--reps", type=cli.positive_int, default=20, help="timed calls per row")
  parser.add_argument("--out", default=None, help="JSON file to write (rows and environment)")
  args = parser.parse_args(argv)
  dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
  for dtype in dtypes:
    if dtype not in ("float32", "bfloat16"):
      parser.error(f"argument --dtypes: expected float32 and/or bfloat16, got {dtype!r}")
  cli.check_output_path(parser, "--out", args.out)
  log = print
  log(f"devices {jax.devices()}  load average {timing.load_average()}")
  report = run(
      args.size,
      dtypes,
      args.batch_sizes,
      args.source_length,
      args.target_length,
      reps=args.reps,
      log=log,
  )
  log(markdown_table(report["results"]))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main()
