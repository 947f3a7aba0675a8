"""What the speed map (benchmarks/speed_map.py) times: the sizes, the systems, one row each.

`run` times every requested (size, system, dtype, batch): JAX rows (PaDIR at fixed work, AR greedy
and beam search) through padir_t5x.decoders.decoders, CTranslate2 rows through a model exported from
the very AR parameters the JAX rows run; each row is a latency summary, compile seconds, throughput
and the load average, in benchmarks/results/results.json's schema (the module docstring of
benchmarks/speed_map.py lists the systems, sizes and fields).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import timing
from benchmarks.accelerator import fixed_work_padir
from benchmarks.accelerator import random_params
from padir_t5x import EOS_ID
from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x.decoders import decoders
from padir_t5x import export
from padir_t5x.core import network
from padir_t5x.core import network_config

PASSES = 4
BEAM = 5
ALPHA = 0.6
CT2_INSTALL = "pip install 'padir-t5x[ctranslate2]'"
JAX_DTYPES = ("float32", "bfloat16")
CT2_COMPUTE_TYPES = ("float32", "int8", "int8_float32", "int16", "float16", "bfloat16")
# name -> (length candidates l, refine_top_k): l=5 pruned to its k best after the first pass
# (DecodingConfig.refine_top_k) does 1 pass over 5 candidates and 3 over k.
PADIR_SYSTEMS = {
    "padir_l1": (1, None),
    "padir_l3": (3, None),
    "padir_l5": (5, None),
    "padir_l5_k1": (5, 1),
    "padir_l5_k2": (5, 2),
}
AR_JAX_SYSTEMS = ("jax_greedy", "jax_beam5")
CT2_SYSTEMS = {"ct2_greedy": 1, "ct2_beam5": BEAM}
SYSTEMS = (*PADIR_SYSTEMS, *AR_JAX_SYSTEMS, *CT2_SYSTEMS)
GREEDY = "greedy"


def padir_setting(length_beam: int, refine_top_k: int | None = None) -> str:
  """A PaDIR row's setting: 'T=4,l=5', or 'T=4,l=5,k=1' when pruned to the k best."""
  return f"T={PASSES},l={length_beam}" + ("" if refine_top_k is None else f",k={refine_top_k}")


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
    for name, (length_beam, top_k) in PADIR_SYSTEMS.items():
      if name in args.systems:
        decoder = fixed_work_padir(
            padir_module, padir_params, t, PASSES, length_beam, vocab_high, refine_top_k=top_k
        )
        params = {"max_passes": PASSES, "length_beam": length_beam, "early_stopping": False}
        if top_k is not None:
          params["refine_top_k"] = top_k
        systems.append((name, "padir", padir_setting(length_beam, top_k), params, decoder))
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
