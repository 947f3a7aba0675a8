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
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from benchmarks.accelerator import fixed_work_padir
from benchmarks.accelerator import random_params
from padir_t5x import EOS_ID
from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x import cli
from padir_t5x import decoders
from padir_t5x.decoding_config import DecodingConfig
from padir_t5x import export
from padir_t5x import network
from padir_t5x import network_config

PASSES = 4
BEAM = 5
ALPHA = 0.6
CT2_INSTALL = "pip install 'padir-t5x[ctranslate2]'"
JAX_DTYPES = ("float32", "bfloat16")
CT2_COMPUTE_TYPES = ("float32", "int8", "int8_float32", "int16", "float16", "bfloat16")
PADIR_SYSTEMS = {"padir_l1": 1, "padir_l3": 3, "padir_l5": 5}
AR_JAX_SYSTEMS = ("jax_greedy", "jax_beam5")
CT2_SYSTEMS = {"ct2_greedy": 1, "ct2_beam5": BEAM}
SYSTEMS = (*PADIR_SYSTEMS, *AR_JAX_SYSTEMS, *CT2_SYSTEMS)
GREEDY = "greedy"
BEAM_SETTING = f"beam={BEAM}"


def padded_vocab_size(vocab_size: int, multiple: int = 128) -> int:
  """As padir_t5x.vocab.padded_vocab_size (not imported: that module needs sentencepiece)."""
  return -(-int(vocab_size) // multiple) * multiple


def _small_config(emb_dim, mlp_dim, layers, max_input_length, max_target_length):
  return network_config.tiny_config_from_sizes(
      vocab_size=padded_vocab_size(4000),
      emb_dim=emb_dim,
      num_heads=4,
      mlp_dim=mlp_dim,
      num_layers=layers,
      max_input_length=max_input_length,
      max_target_length=max_target_length,
      dropout_rate=0.0,
  )


# name -> (config(max_input_length, max_target_length) in PaDIR mode, vocab_high).
SIZES: dict[str, tuple[Callable[[int, int], network_config.TransformerConfig], int]] = {
    "tiny": (lambda s, t: _small_config(128, 512, 2, s, t), 4000),
    "small": (lambda s, t: _small_config(256, 1024, 3, s, t), 4000),
    "base": (
        lambda s, t: network_config.base_config(max_input_length=s, max_target_length=t),
        32128,
    ),
    "base_deep_shallow": (
        lambda s, t: network_config.base_config(
            max_input_length=s, max_target_length=t, num_decoder_layers=2
        ),
        32128,
    ),
}


def ctranslate2_unavailable() -> str | None:
  """Why the CTranslate2 rows cannot run (ctranslate2 does not import), or None."""
  try:
    import ctranslate2  # pylint: disable=g-import-not-at-top

    del ctranslate2
  except ImportError as error:
    return f"ctranslate2 does not import ({type(error).__name__}: {error}); {CT2_INSTALL}"
  return None


def _num_params(params) -> int:
  return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def _shape(config: network_config.TransformerConfig) -> dict:
  return {
      "emb_dim": config.emb_dim,
      "num_heads": config.num_heads,
      "head_dim": config.head_dim,
      "mlp_dim": config.mlp_dim,
      "num_encoder_layers": config.num_encoder_layers,
      "num_decoder_layers": config.num_decoder_layers,
  }


def sources_for(seed: int, batch: int, source_length: int, vocab_high: int) -> np.ndarray:
  """[batch, source_length] random ordinary ids (no EOS), the same for every system."""
  rng = np.random.default_rng([seed, batch, source_length, vocab_high])
  return rng.integers(FIRST_ORDINARY_ID, vocab_high, (batch, source_length)).astype(np.int32)


def with_eos(ids: np.ndarray) -> jnp.ndarray:
  """[b, s] ids -> [b, s + 1] int32 with EOS appended (as padir_t5x.translate builds sources)."""
  return jnp.asarray(np.concatenate([ids, np.full((ids.shape[0], 1), EOS_ID, ids.dtype)], 1))


def _ar_beam(module, params, target_length: int, beam: int, vocab_high: int):
  return decoders.ArBeamDecoder(
      module,
      params,
      max_decode_length=target_length,
      beam_size=beam,
      alpha=ALPHA,
      vocab_high=vocab_high,
      early_stopping=False,
  )


def _time(call: Callable[[], object], reps: int) -> tuple[dict, float, object]:
  """(latency summary in ms, compile seconds, one call's result)."""
  seconds, first = timing.time_calls(call, reps)
  latency = timing.latency_summary(seconds)
  return latency, first - latency["median"] / 1e3, call()


def _row(base: dict, latency: dict, compile_s: float, batch: int, load_before) -> dict:
  return {
      **base,
      "latency_ms": {k: round(v, 3) for k, v in latency.items()},
      "compile_s": round(compile_s, 2),
      "throughput_sent_per_s": round(batch / (latency["median"] / 1e3), 2),
      "load_average_before": load_before,
      "load_average_after": timing.load_average(),
  }


def _log_row(row: dict, log) -> None:
  if "skipped" in row:
    log(
        f"{row['size']:17s} {row['runtime']:11s} {row['setting']:8s} {row['dtype']:8s} "
        f"batch {row['batch']:3d}  skipped: {row['skipped']}"
    )
    return
  lat = row["latency_ms"]
  log(
      f"{row['size']:17s} {row['runtime']:11s} {row['setting']:8s} {row['dtype']:8s} "
      f"batch {row['batch']:3d}  median {lat['median']:9.2f} ms  p99 {lat['p99']:9.2f} ms  "
      f"{row['throughput_sent_per_s']:9.1f} sent/s  steps {row['decoder_passes_per_sentence']:g}"
      f"  compile {row['compile_s']:.1f}s{'  FALLBACK' if row.get('fallback') else ''}"
  )


def _jax_rows(size, config, vocab_high, padir_params, ar_params, args, log) -> list[dict]:
  rows = []
  t = args.target_length
  device = str(jax.devices()[0])
  for dtype in args.dtypes:
    padir_module = network.Transformer(dataclasses.replace(config, dtype=dtype))
    ar_module = network.Transformer(
        dataclasses.replace(config, dtype=dtype, decoder_mode="autoregressive")
    )
    systems = []  # (name, system, setting, params, decoder)
    for name, length_beam in PADIR_SYSTEMS.items():
      if name in args.systems:
        decoder = fixed_work_padir(padir_module, padir_params, t, PASSES, length_beam, vocab_high)
        params = {"max_passes": PASSES, "length_beam": length_beam, "early_stopping": False}
        systems.append((name, "padir", f"T={PASSES},l={length_beam}", params, decoder))
    if "jax_greedy" in args.systems:
      decoder = decoders.ArGreedyDecoder(
          ar_module, ar_params, max_decode_length=t, vocab_high=vocab_high
      )
      systems.append(("jax_greedy", "ar", GREEDY, {"beam": 1}, decoder))
    if "jax_beam5" in args.systems:
      decoder = _ar_beam(ar_module, ar_params, t, BEAM, vocab_high)
      params = {"beam": BEAM, "alpha": ALPHA, "early_stopping": False}
      systems.append(("jax_beam5", "ar", BEAM_SETTING, params, decoder))
    for batch in args.batch_sizes:
      tokens = with_eos(sources_for(args.seed, batch, args.source_length, vocab_high))
      rng = decoders.batch_rng(args.seed, 0)
      for name, system, setting, params, decoder in systems:
        load_before = timing.load_average()
        call = lambda decoder=decoder: decoder.decode(tokens, rng)  # noqa: E731
        latency, compile_s, result = _time(call, args.reps)
        steps = np.asarray(result.steps)
        # The batch runs max(steps) sequential decoder calls (greedy: until every row ended).
        passes = float(steps.max()) if system == "ar" else float(steps.mean())
        expected = PASSES if system == "padir" else t
        fallback = None
        if name == "jax_greedy" and passes < t:
          fallback = "ArBeamDecoder(beam_size=1, early_stopping=False): greedy stopped early"
          beam1 = _ar_beam(ar_module, ar_params, t, 1, vocab_high)
          call = lambda: beam1.decode(tokens, rng)  # noqa: E731
          latency, compile_s, result = _time(call, args.reps)
          passes = float(np.asarray(result.steps).max())
        row = _row(
            {
                "system": system,
                "setting": setting,
                "runtime": "jax",
                "name": name,
                "params": params,
                "dtype": dtype,
                "size": size,
                "batch": batch,
                "vocab_size": config.vocab_size,
                "vocab_high": vocab_high,
                "model": _shape(config),
                "num_params": _num_params(padir_params if system == "padir" else ar_params),
                "source_length": args.source_length,
                "target_length": t,
                "device": device,
                "decoder_passes_per_sentence": passes,
                "fixed_work": passes == expected,
                "fallback": fallback,
            },
            latency,
            compile_s,
            batch,
            load_before,
        )
        rows.append(row)
        _log_row(row, log)
  return rows


def _ct2_base(name, size, config, vocab_high, ar_params, compute_type, batch, args) -> dict:
  return {
      "system": "ar",
      "setting": GREEDY if CT2_SYSTEMS[name] == 1 else BEAM_SETTING,
      "runtime": "ctranslate2",
      "name": name,
      "params": {"beam": CT2_SYSTEMS[name]},  # + the translate_batch options
      "dtype": compute_type,
      "size": size,
      "batch": batch,
      "vocab_size": config.vocab_size,
      "vocab_high": vocab_high,
      "model": _shape(config),
      "num_params": _num_params(ar_params),
      "source_length": args.source_length,
      "target_length": args.target_length,
  }


def _ct2_rows(size, config, vocab_high, ar_params, args, skip_reason, log) -> list[dict]:
  names = [name for name in CT2_SYSTEMS if name in args.systems]
  if not names:
    return []
  keys = [(c, b, n) for c in args.ct2_compute_types for b in args.batch_sizes for n in names]
  if skip_reason is not None:
    rows = []
    for compute_type, batch, name in keys:
      base = _ct2_base(name, size, config, vocab_high, ar_params, compute_type, batch, args)
      rows.append({**base, "skipped": skip_reason})
      _log_row(rows[-1], log)
    return rows
  import ctranslate2  # pylint: disable=g-import-not-at-top

  t = args.target_length
  device = args.ct2_device
  if device == "auto":
    device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
  threads = {"intra_threads": args.ct2_intra_threads or os.cpu_count() or 1, "inter_threads": 1}
  ar_config = dataclasses.replace(config, decoder_mode="autoregressive")
  rows = []
  with tempfile.TemporaryDirectory(prefix="speed_map_ct2_") as tmp:
    model_dir = os.path.join(tmp, size)
    export.export_ctranslate2_params(
        ar_params, ar_config, export.synthetic_tokens(vocab_high), model_dir
    )
    for compute_type in args.ct2_compute_types:
      start = time.perf_counter()
      translator = export.ctranslate2_translator(
          model_dir, device=device, compute_type=compute_type, **threads
      )
      load_s = round(time.perf_counter() - start, 2)
      for batch in args.batch_sizes:
        ids = sources_for(args.seed, batch, args.source_length, vocab_high)
        tokens = [[f"t{i}" for i in row] for row in ids.tolist()]
        for name in names:
          options = dict(
              beam_size=CT2_SYSTEMS[name],
              min_decoding_length=t,  # EOS barred before step t
              max_decoding_length=t,
              max_input_length=0,  # no truncation: every source token is read
          )
          load_before = timing.load_average()
          call = lambda options=options: translator.translate_batch(tokens, **options)  # noqa: E731
          latency, compile_s, result = _time(call, args.reps)
          lengths = [len(r.hypotheses[0]) for r in result]
          base = _ct2_base(name, size, config, vocab_high, ar_params, compute_type, batch, args)
          base["params"].update({k: v for k, v in options.items() if k != "beam_size"})
          row = _row(
              {
                  **base,
                  "device": device,
                  "threads": threads,
                  "translator_load_s": load_s,
                  "decoder_passes_per_sentence": float(max(lengths)),
                  "fixed_work": min(lengths) == max(lengths) == t,
              },
              latency,
              compile_s,
              batch,
              load_before,
          )
          rows.append(row)
          _log_row(row, log)
  return rows


def run(args, log=print) -> dict:
  """Times every requested (size, system, dtype, batch); {'results': rows, 'environment': ...}."""
  skip_reason = ctranslate2_unavailable() if set(CT2_SYSTEMS) & set(args.systems) else None
  if skip_reason is not None:
    log(f"CTranslate2 rows skipped: {skip_reason}")
  environment = timing.environment()
  if skip_reason is None and set(CT2_SYSTEMS) & set(args.systems):
    import ctranslate2  # pylint: disable=g-import-not-at-top

    environment["ctranslate2"] = ctranslate2.__version__
  rows = []
  for size in args.sizes:
    make_config, vocab_high = SIZES[size]
    # One more encoder position than source tokens: the EOS that follows them.
    config = make_config(args.source_length + 1, args.target_length)
    padir_params = random_params(config, args.seed)
    ar_params = random_params(dataclasses.replace(config, decoder_mode="autoregressive"), args.seed)
    rows += _jax_rows(size, config, vocab_high, padir_params, ar_params, args, log)
    rows += _ct2_rows(size, config, vocab_high, ar_params, args, skip_reason, log)
  return {"results": rows, "environment": environment}


# ------------------------------------------------------------------------------------------------
# The summary: table, crossover, plot.
def _fastest(rows, predicate):
  timed = [r for r in rows if "skipped" not in r and predicate(r)]
  return min(timed, key=lambda r: r["latency_ms"]["median"], default=None)


def size_order(rows) -> list[str]:
  """Sizes of `rows`, smallest first by parameter count (the AR network's)."""
  params: dict[str, int] = {}
  for r in rows:
    if r["system"] == "ar":
      params[r["size"]] = max(params.get(r["size"], 0), r.get("num_params", 0))
    else:
      params.setdefault(r["size"], 0)
  return sorted(dict.fromkeys(r["size"] for r in rows), key=lambda s: (params[s], s))


def summary(rows) -> list[dict]:
  """Per (size, batch), sizes smallest first: the fastest row of each kind and the ratios
  (AR median / PaDIR median: > 1 when PaDIR is faster; None where a side is missing)."""
  out = []
  for size in size_order(rows):
    for batch in sorted({r["batch"] for r in rows if r["size"] == size}):
      mine = [r for r in rows if r["size"] == size and r["batch"] == batch]
      entry = {
          "size": size,
          "batch": batch,
          "padir_l1": _fastest(mine, lambda r: r["setting"] == f"T={PASSES},l=1"),
          "padir_l5": _fastest(mine, lambda r: r["setting"] == f"T={PASSES},l=5"),
          "ar_greedy": _fastest(mine, lambda r: r["system"] == "ar" and r["setting"] == GREEDY),
          "ar_beam5": _fastest(
              mine, lambda r: r["system"] == "ar" and r["setting"] == BEAM_SETTING
          ),
      }
      for ar, padir in (
          ("ar_greedy", "padir_l1"),
          ("ar_greedy", "padir_l5"),
          ("ar_beam5", "padir_l5"),
      ):
        a, p = entry[ar], entry[padir]
        entry[f"{ar}/{padir}"] = (
            None
            if a is None or p is None
            else a["latency_ms"]["median"] / p["latency_ms"]["median"]
        )
      out.append(entry)
  return out


def crossover(entries) -> dict[int, str | None]:
  """batch -> the smallest size (entries' order) at which PaDIR l=1 beats the best AR greedy
  (ratio > 1), None where it never does among the sizes measured."""
  result: dict[int, str | None] = {}
  for entry in entries:
    result.setdefault(entry["batch"], None)
    ratio = entry["ar_greedy/padir_l1"]
    if result[entry["batch"]] is None and ratio is not None and ratio > 1:
      result[entry["batch"]] = entry["size"]
  return result


def _label(row) -> str:
  runtime = "ct2" if row["runtime"] == "ctranslate2" else row["runtime"]
  return f"{runtime} {row['dtype']}"


def _cell(row, with_label: bool = True) -> str:
  if row is None:
    return "n/a"
  return f"{row['latency_ms']['median']:.2f}" + (f" ({_label(row)})" if with_label else "")


def _ratio(value) -> str:
  return "n/a" if value is None else f"{value:.2f}x"


def markdown_table(entries) -> str:
  """One line per (size, batch) of `summary`'s entries: median ms (runtime, dtype) and ratios."""
  lines = [
      f"| size | batch | PaDIR T={PASSES},l=1 ms | PaDIR T={PASSES},l=5 ms | best AR greedy ms "
      f"| best AR beam {BEAM} ms | greedy / l=1 | greedy / l=5 | beam {BEAM} / l=5 |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for e in entries:
    lines.append(
        f"| {e['size']} | {e['batch']} | {_cell(e['padir_l1'])} | {_cell(e['padir_l5'])} | "
        f"{_cell(e['ar_greedy'])} | {_cell(e['ar_beam5'])} | "
        f"{_ratio(e['ar_greedy/padir_l1'])} | {_ratio(e['ar_greedy/padir_l5'])} | "
        f"{_ratio(e['ar_beam5/padir_l5'])} |"
    )
  return "\n".join(lines)


def crossover_line(entries) -> str:
  """'Crossover ...: batch 1: small; batch 8: none up to base; ...' from `crossover`."""
  sizes = list(dict.fromkeys(e["size"] for e in entries))
  parts = []
  for batch, size in crossover(entries).items():
    parts.append(
        f"batch {batch}: from {size}" if size else f"batch {batch}: none up to {sizes[-1]}"
    )
  return f"Crossover (smallest size at which PaDIR T={PASSES},l=1 beats the best AR greedy): " + (
      "; ".join(parts) if parts else "nothing measured"
  )


def plot(entries, path: str, title: str = "") -> None:
  """PaDIR's speed over the best AR greedy (AR median / PaDIR median) by size, one line per
  batch (l=1 solid, l=5 dashed), a horizontal line at 1; written to `path` (PNG)."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (only with --plot)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top

  sizes = list(dict.fromkeys(e["size"] for e in entries))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, batch in enumerate(sorted({e["batch"] for e in entries})):
    color = f"C{i}"
    for key, style, marker, label in (
        ("ar_greedy/padir_l1", "-", "o", "l=1"),
        ("ar_greedy/padir_l5", "--", "s", "l=5"),
    ):
      points = [
          (sizes.index(e["size"]), e[key])
          for e in entries
          if e["batch"] == batch and e[key] is not None
      ]
      if points:
        x, y = zip(*points)
        ax.plot(x, y, style, color=color, marker=marker, label=f"batch {batch}, T={PASSES},{label}")
  ax.axhline(1.0, color="gray", linewidth=1)
  ax.set_xticks(range(len(sizes)))
  ax.set_xticklabels(sizes)
  ax.set_yscale("log")
  ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
  ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("model size")
  ax.set_ylabel("best AR greedy median / PaDIR median\n(> 1: PaDIR faster)")
  ax.set_title(title or "PaDIR speed over the best AR greedy")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


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
  parser.add_argument("--plot", default=None, help="PNG file to draw the speed ratios into")
  args = parser.parse_args(argv)
  # Every refusal before any work: exit 2, one line naming the flag.
  args.sizes = _names(parser, "--sizes", args.sizes, tuple(SIZES))
  args.dtypes = _names(parser, "--dtypes", args.dtypes, JAX_DTYPES)
  args.ct2_compute_types = _names(
      parser, "--ct2_compute_types", args.ct2_compute_types, CT2_COMPUTE_TYPES
  )
  args.systems = _names(parser, "--systems", args.systems, SYSTEMS)
  lengths = max((PADIR_SYSTEMS[s] for s in args.systems if s in PADIR_SYSTEMS), default=1)
  min_target = lengths + DecodingConfig().min_length - 1
  if args.target_length < min_target:
    parser.error(
        f"argument --target_length: PaDIR l={lengths} needs >= {min_target}, got "
        f"{args.target_length}"
    )
  cli.check_output_path(parser, "--out", args.out)
  cli.check_output_path(parser, "--plot", args.plot, inputs={"--out": args.out})
  if args.plot is not None:
    try:
      import matplotlib  # pylint: disable=g-import-not-at-top

      del matplotlib
    except ImportError as error:
      parser.error(f"argument --plot: matplotlib does not import ({error})")
  return args


@cli.entry_point
def main(argv=None):
  args = parse_args(argv)
  log = print
  log(f"devices {jax.devices()}  load average {timing.load_average()}")
  report = run(args, log=log)
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
