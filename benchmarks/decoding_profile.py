"""Profile of PaDIR decoding (padir_t5x.decoders.decoding.decode_with_network): structure and cost.

    python -m benchmarks.decoding_profile --padir_checkpoint runs/budget/padir --out runs/profile.json
    python -m benchmarks.decoding_profile            # a random-init tiny network

Checks, each reported as measured figures (not asserted):
* compilations: XLA backend compiles counted (jax.monitoring) over repeated calls with one batch
  shape, then with a second shape: expect 1 per shape;
* encoder runs per batch and decoder calls per pass with their row count: counted by a flax
  method interceptor while the decoder runs with jit disabled (lax.while_loop then runs as a
  Python loop, so each pass is visible): expect 1 encoder call on [b, s] and one decoder call per
  pass on all n = b * l hypotheses at once;
* host round-trips in the loop: primitives of the jitted computation that talk to the host
  (callbacks, infeed/outfeed) anywhere, and where the matmuls sit (inside/outside while bodies);
* memory: XLA's compiled memory analysis (temporary buffers) against the size of one pass's
  float32 logits [n, t, V], for several batch sizes;
* time: median wall time of the whole decode, of the encoder and length classifier, of the
  pass-invariant work (network.decoder_invariants), and of one decoder pass three ways, each
  change on its own: over the whole table with everything per row and per pass (before length
  bucketing), over the batch's bucket the same way (before caching), and over the bucket as
  decoding runs it now (invariants computed once, rows grouped per example); then the implied
  loop overhead per pass.
"""

from __future__ import annotations

import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from padir_t5x.decoders import bucketing
from padir_t5x import cli
from padir_t5x.decoders import decoding
from padir_t5x.decoders import length_candidates
from padir_t5x.core import loading
from padir_t5x.core import network
from padir_t5x.core import network_config
from padir_t5x.data import shared_data
from padir_t5x.decoders.decoding_config import DecodingConfig

_HOST_PRIMITIVES = ("callback", "infeed", "outfeed", "host")


def _walk_jaxpr(jaxpr, inside_while: bool, counts: dict):
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if any(h in name for h in _HOST_PRIMITIVES):
      counts["host_primitives"].append(name)
    if name == "dot_general":
      counts["matmuls_in_while" if inside_while else "matmuls_outside_while"] += 1
    if name == "while":
      counts["while_loops"] += 1
    for param in eqn.params.values():
      subs = param if isinstance(param, (tuple, list)) else [param]
      for sub in subs:
        inner = getattr(sub, "jaxpr", None)
        if inner is not None and hasattr(inner, "eqns"):
          _walk_jaxpr(inner, inside_while or name == "while", counts)
        elif hasattr(sub, "eqns"):
          _walk_jaxpr(sub, inside_while or name == "while", counts)


def jaxpr_structure(module, params, tokens, config, t) -> dict:
  """Host-talking primitives, while loops and matmul placement in the traced decode."""
  fn = lambda p, x, r: decoding.decode_with_network(module, p, x, r, config, t)
  closed = jax.make_jaxpr(fn)(params, tokens, jax.random.PRNGKey(0))
  counts = {
      "host_primitives": [],
      "while_loops": 0,
      "matmuls_in_while": 0,
      "matmuls_outside_while": 0,
  }
  _walk_jaxpr(closed.jaxpr, False, counts)
  return counts


def count_calls(module, params, tokens, config, t) -> dict:
  """Encoder / decoder invocations (and their batch rows) in one decode, jit disabled."""
  calls = {"encoder": [], "decoder": []}

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__":
      if isinstance(context.module, network.Encoder):
        calls["encoder"].append(int(args[0].shape[0]))
      elif isinstance(context.module, network.Decoder):
        calls["decoder"].append(int(args[1].shape[0]))
    return next_fun(*args, **kwargs)

  with jax.disable_jit(), nn.intercept_methods(interceptor):
    result = decoding._decode_with_network.__wrapped__(  # pylint: disable=protected-access
        module, params, tokens, jax.random.PRNGKey(0), config, t, None
    )
  return {
      "encoder_calls": len(calls["encoder"]),
      "encoder_rows": calls["encoder"],
      "decoder_calls": len(calls["decoder"]),
      "decoder_rows": sorted(set(calls["decoder"])),
      "passes_run_max": int(np.max(np.asarray(result.passes))),
  }


def count_compiles(module, params, tokens_a, tokens_b, config, t, repeats: int = 3) -> dict:
  """Backend compiles over `repeats` calls with tokens_a's shape, then with tokens_b's."""
  events = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **_: events.append((event, duration))
      if event == "/jax/core/compile/backend_compile_duration"
      else None
  )
  rng = jax.random.PRNGKey(0)
  out = {}
  for label, tokens in (("first_shape", tokens_a), ("second_shape", tokens_b)):
    # New content, same shape; put on the device before counting, since jnp.asarray on a
    # numpy array of a new shape compiles a trivial staging computation of its own.
    inputs = [
        jax.block_until_ready(jnp.asarray(np.roll(np.asarray(tokens), i, axis=0)))
        for i in range(repeats)
    ]
    before = len(events)
    for rolled in inputs:
      jax.block_until_ready(decoding.decode_with_network(module, params, rolled, rng, config, t))
    out[f"compiles_{label}"] = len(events) - before
    out[f"compile_seconds_{label}"] = round(sum(d for _, d in events[before:]), 2)
  return out


def memory_and_time(module, params, tokens, config, t, repeats: int = 5) -> dict:
  """Compiled temp memory vs one pass's logits, and decode vs bare decoder-forward time."""
  b = tokens.shape[0]
  n = b * config.num_candidates
  vocab = module.config.vocab_size
  rng = jax.random.PRNGKey(0)
  compiled = decoding._decode_with_network.lower(  # pylint: disable=protected-access
      module, params, tokens, rng, config, t, None
  ).compile()
  analysis = compiled.memory_analysis()
  temp = getattr(analysis, "temp_size_in_bytes", None) if analysis is not None else None
  logits_bytes = n * t * vocab * 4

  def timed(fn):
    jax.block_until_ready(fn())
    seconds = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))

  result = decoding.decode_with_network(module, params, tokens, rng, config, t)
  passes = int(np.max(np.asarray(result.passes)))
  decode_s = timed(lambda: decoding.decode_with_network(module, params, tokens, rng, config, t))
  encoded, length_logits = network.encode_and_predict_length(module, params, tokens)
  # The bucket this batch decodes in (decode_with_network picks it inside jit the same way).
  lengths, _ = length_candidates.length_beam(length_logits, config, t)  # [b, c]
  buckets = bucketing.length_buckets(
      t, config.length_buckets, config.num_lengths, config.min_length
  )
  width = buckets[int(bucketing.bucket_index(jnp.max(lengths), buckets))]
  c = config.num_candidates

  def plain_pass(width: int):
    """One decoder pass as before issue 12: the encoder output copied per row, every
    projection (cross-attention keys/values, positional query/key) redone."""
    forward = jax.jit(
        lambda p, e, x, y: module.apply(
            {"params": p}, e, x, y, y, enable_dropout=False, method=network.Transformer.decode
        )
    )
    dec_in = jnp.full((n, width), 5, jnp.int32)
    e, x = jnp.repeat(encoded, c, 0), jnp.repeat(tokens, c, 0)
    return timed(lambda: forward(params, e, x, dec_in))

  def cached_pass(width: int):
    """One pass as decoding runs it now: decoding.network_refine_fn (pass-invariant work done
    before the timed call, the c rows of each example grouped over one encoder row)."""
    invariants = network.decoder_invariants(module.config, params, encoded)
    forward = jax.jit(
        lambda p, e, x, y, inv: module.apply(
            {"params": p},
            e,
            x,
            y,
            y,
            enable_dropout=False,
            invariants=inv,
            method=network.Transformer.decode,
        )
    )
    dec_in = jnp.full((n, width), 5, jnp.int32)
    return timed(lambda: forward(params, encoded, tokens, dec_in, invariants))

  invariants_fn = jax.jit(lambda p, e: network.decoder_invariants(module.config, p, e))
  invariants_s = timed(lambda: invariants_fn(params, encoded))
  encode = jax.jit(lambda p, x: network.encode_and_predict_length(module, p, x))
  encode_s = timed(lambda: encode(params, tokens))
  pass_s = cached_pass(width)
  return {
      "batch": b,
      "rows_n": n,
      "max_decode_length": t,
      "bucket": width,
      "vocab": vocab,
      "compiled_temp_bytes": temp,
      "one_pass_logits_bytes": logits_bytes,
      "temp_over_logits": round(temp / logits_bytes, 2) if temp else None,
      "passes_run": passes,
      "decode_ms": round(1e3 * decode_s, 2),
      "encoder_and_length_ms": round(1e3 * encode_s, 2),
      "pass_invariant_work_ms": round(1e3 * invariants_s, 2),
      # Per decoder pass, each change on its own: the whole table as before bucketing, the
      # bucket before caching, the bucket with invariants and grouped rows (what runs now).
      "pass_ms_full_table_plain": round(1e3 * plain_pass(t), 2),
      "pass_ms_bucket_plain": round(1e3 * plain_pass(width), 2),
      "pass_ms_bucket_cached": round(1e3 * pass_s, 2),
      "overhead_per_pass_ms": round(
          1e3 * (decode_s - encode_s - invariants_s - passes * pass_s) / passes, 2
      ),
  }


def profile(
    module,
    params,
    source_ids: np.ndarray,
    config: DecodingConfig,
    batch_sizes=(1, 8, 32),
    log=print,
) -> dict:
  t = module.config.max_target_length
  report = {"config": {"length_beam": config.length_beam, "max_passes": config.max_passes}}
  first = jnp.asarray(source_ids[: batch_sizes[0]])
  report["calls"] = count_calls(module, params, jnp.asarray(source_ids[:2]), config, t)
  log(f"calls: {report['calls']}")
  report["jaxpr"] = jaxpr_structure(module, params, first, config, t)
  log(f"jaxpr: {report['jaxpr']}")
  report["compiles"] = count_compiles(module, params, source_ids[:3], source_ids[:5], config, t)
  log(f"compiles: {report['compiles']}")
  # Temporary memory must not grow with the number of passes (no per-pass stacking).
  report["temp_bytes_by_max_passes"] = {}
  for passes in (1, 10):
    cfg = DecodingConfig(**{**config.__dict__, "max_passes": passes})
    analysis = (
        decoding._decode_with_network.lower(  # pylint: disable=protected-access
            module, params, first, jax.random.PRNGKey(0), cfg, t, None
        )
        .compile()
        .memory_analysis()
    )
    report["temp_bytes_by_max_passes"][passes] = getattr(analysis, "temp_size_in_bytes", None)
  log(f"temp bytes by max_passes: {report['temp_bytes_by_max_passes']}")
  report["memory_and_time"] = []
  for b in batch_sizes:
    entry = memory_and_time(module, params, jnp.asarray(source_ids[:b]), config, t)
    report["memory_and_time"].append(entry)
    log(f"batch {b}: {entry}")
  return report


@cli.entry_point
def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--padir_checkpoint", default=None)
  parser.add_argument("--data_dir", default=None)
  cli.add_config_flags(parser, DecodingConfig, ("max_passes", "length_beam"))
  parser.add_argument("--batch_sizes", type=cli.int_list(1), default=[1, 8, 32])
  parser.add_argument("--out", default=None, help="JSON file to write")
  args = parser.parse_args(argv)
  cli.check_output_path(parser, "--out", args.out)
  batch_sizes = tuple(args.batch_sizes)
  if args.padir_checkpoint:
    data_dir = shared_data.data_dir_or_error(parser, args.data_dir)
    loaded = loading.load(args.padir_checkpoint, kind="padir")
    module, params = loaded.module, loaded.params
    _, _, source_ids, _ = common.load_dev_set(
        data_dir, loaded.vocabulary, max(batch_sizes), module.config.max_input_length
    )
    vocabulary_fields = loading.vocabulary_fields(loaded.vocabulary)
    vocab_high = vocabulary_fields.pop("vocab_high")
    stutter = vocabulary_fields
  else:
    cfg = network_config.tiny_config(dropout_rate=0.0)
    module = network.Transformer(cfg)
    vocab_high = 100
    rng = np.random.default_rng(0)
    source_ids = rng.integers(4, vocab_high, (max(batch_sizes), 20)).astype(np.int32)
    source_ids[:, -1] = 1
    x = jnp.asarray(source_ids[:1])
    params = module.init(jax.random.PRNGKey(0), x, x, x, enable_dropout=False)["params"]
    stutter = {"stutter_unit": "piece"}  # random ids: no words
  config = DecodingConfig(
      length_beam=args.length_beam, max_passes=args.max_passes, vocab_high=vocab_high, **stutter
  )
  report = profile(module, params, source_ids, config, batch_sizes)
  report["checkpoint"] = args.padir_checkpoint
  text = json.dumps(report, indent=2)
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      f.write(text)
  print(text)


if __name__ == "__main__":
  main()
