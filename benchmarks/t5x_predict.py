"""T5X's decode path against the core decoder: PadirModel.predict_batch at batch 1.

    python -m benchmarks.t5x_predict --padir_checkpoint benchmarks/checkpoints/padir_raw \
        --split dev-multi30k --num_sentences 200

Needs t5x and seqio (the adapter, padir_t5x.t5x_adapter.models). One run times, sentence by
sentence on the same dev sources padded to one shape:

* core: `decoding.decode_with_network` (what translate and the latency benchmark call);
* t5x: `PadirModel.predict_batch` jitted as t5x.infer runs it, with the same DecodingConfig and
  rng; its outputs must equal the core's (checked, not assumed).

and prints median and p99 ms of each and their ratio. Both use in-jit length bucketing
(DecodingConfig.length_buckets), so T5X's path refines the smallest bucket that holds the
candidates, not the whole table.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import timing
from padir_t5x import cli
from padir_t5x.decoders import decoding
from padir_t5x.core import loading
from padir_t5x.data import shared_data
from padir_t5x.t5x_adapter import jobs as t5x_jobs
from padir_t5x.decoders.decoding_config import DecodingConfig


def _require_t5x():
  try:
    from padir_t5x.t5x_adapter import models  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise cli.UsageError(
        f"t5x_predict needs t5x and seqio ({e}): {t5x_jobs.T5X_INSTALL_HINT}"
    ) from None
  return models


def run(padir_checkpoint, data_dir, split, num_sentences, passes, length_beam, warmup, log=print):
  models = _require_t5x()
  import seqio  # pylint: disable=g-import-not-at-top

  loaded = loading.load(padir_checkpoint, kind="padir")
  module, processor, meta = loaded.module, loaded.vocabulary, loaded.meta
  params = jax.tree_util.tree_map(jnp.asarray, loaded.params)
  t = min(module.config.max_input_length, module.config.max_target_length)
  _, _, source_ids, _ = common.load_dev_set(data_dir, processor, num_sentences, t, split)
  config = DecodingConfig(
      length_beam=length_beam, max_passes=passes, **loading.vocabulary_fields(processor)
  )
  vocabulary = seqio.SentencePieceVocabulary(meta["vocab_model"])
  model = models.PadirModel(
      module, vocabulary, vocabulary, optimizer_def=None, decoding_config=config
  )
  rng = jax.random.PRNGKey(0)
  predict = jax.jit(lambda p, batch: model.predict_batch(p, batch, rng=rng))

  def core(sources):
    return decoding.decode_with_network(module, params, sources, rng, config, t).sequences[:, -1]

  def t5x(sources):
    batch = {
        "encoder_input_tokens": sources,
        "decoder_input_tokens": jnp.zeros((sources.shape[0], t), jnp.int32),
    }
    return predict(params, batch)

  rows = [jnp.asarray(source_ids[i : i + 1]) for i in range(len(source_ids))]
  report = {"environment": timing.environment(), "num_sentences": len(rows), "results": []}
  seconds = {"core": [], "t5x": []}
  for fn in (core, t5x):
    for row in rows[:warmup]:
      jax.block_until_ready(fn(row))
  mismatches = 0
  for row in rows:
    # Alternate the two paths sentence by sentence, so that load changes hit both alike; one
    # timed call each (the shape is compiled already), whose outputs are then compared.
    outputs = {}
    for name, fn in (("core", core), ("t5x", t5x)):
      start = time.perf_counter()
      outputs[name] = jax.block_until_ready(fn(row))
      seconds[name].append(time.perf_counter() - start)
    mismatches += int(not np.array_equal(np.asarray(outputs["core"]), np.asarray(outputs["t5x"])))
  for name in ("core", "t5x"):
    summary = timing.latency_summary(seconds[name])
    report["results"].append(
        {
            "system": "padir",
            "setting": f"T={passes},l={length_beam},{name}",
            "latency_ms": {k: round(v, 3) for k, v in summary.items()},
        }
    )
    log(f"{name:4s}  median {summary['median']:7.2f} ms  p99 {summary['p99']:7.2f} ms")
  core_ms, t5x_ms = (r["latency_ms"]["median"] for r in report["results"])
  report["t5x_over_core_median"] = round(t5x_ms / core_ms, 3)
  report["outputs_differing"] = mismatches
  log(f"t5x / core median {report['t5x_over_core_median']:.3f}; outputs differing: {mismatches}")
  return report


@cli.entry_point
def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--padir_checkpoint", required=True)
  parser.add_argument("--data_dir", default=None, help="default: $PADIR_DATA_DIR or ../shared/data")
  parser.add_argument("--split", default="dev-multi30k")
  parser.add_argument("--num_sentences", type=cli.positive_int, default=200)
  cli.add_config_flags(parser, DecodingConfig, ("max_passes", "length_beam"))
  parser.add_argument("--warmup", type=cli.positive_int, default=10)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  data_dir = shared_data.data_dir_or_error(parser, args.data_dir)
  cli.check_output_path(parser, "--out", args.out)
  report = run(
      args.padir_checkpoint,
      data_dir,
      args.split,
      args.num_sentences,
      args.max_passes,
      args.length_beam,
      args.warmup,
  )
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(report, f, indent=2)


if __name__ == "__main__":
  main()
