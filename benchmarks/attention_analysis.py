"""Stutter and attention in PaDIR outputs (Li et al. 2024, Sec. 3.4, Tables 4 and 5).

    python -m benchmarks.attention_analysis --padir_checkpoint runs/budget/padir \
        --num_sentences 500 --out runs/attention.json

Decodes dev sentences with the checkpoint (de-duplication off, so stutter stays visible;
stutter re-masking off by default, so the analysed pass is the one that produced the output),
then re-runs one decoder pass whose input is the decoded output and records its attention
(padir_t5x.research.analysis.decoder_attention). For an example whose decoding converged (the last
pass reproduced its own input) this pass is exactly the one that produced the output; only rows
where the re-run pass reproduces the output are kept (`fixed_point_rows`), the rest are counted and
left out. Prints the per-layer tables: decoder self-attention between adjacent stuttering vs
non-stuttering positions, and TV / cosine distance between their cross-attention distributions.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from padir_t5x.research import analysis
from padir_t5x import cli
from padir_t5x.decoders import decoding
from padir_t5x.core import loading
from padir_t5x.decoders import refinement
from padir_t5x.data import shared_data
from padir_t5x.decoders.decoding_config import DecodingConfig


def analyse(
    module,
    params,
    source_ids: np.ndarray,
    config: DecodingConfig,
    batch_size: int = 50,
    seed: int = 0,
) -> dict:
  """Decodes `source_ids` [n, s] and returns analysis.stutter_attention_tables + counts."""
  t = module.config.max_target_length
  rng = jax.random.PRNGKey(seed)
  tables_in = {"self": [], "cross": [], "tokens": [], "length_mask": [], "fixed": []}
  for start in range(0, len(source_ids), batch_size):
    chunk = source_ids[start : start + batch_size]
    real = len(chunk)
    if real < batch_size:  # one shape, one compile
      chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - real, 0)])
    result = decoding.decode_with_network(module, params, chunk, rng, config, t)
    best = np.asarray(result.sequences[:, -1])
    lengths = np.asarray(result.lengths[:, -1])
    length_mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
    out = analysis.decoder_attention(module, params, chunk, best, length_mask)
    logits = refinement.restrict_logits(out["logits"], config.vocab_low, config.vocab_high)
    again = np.asarray(jnp.argmax(logits, -1))
    content = np.arange(t)[None, :] < lengths[:, None] - 1
    fixed = np.all(np.where(content, again == best, True), axis=1)
    tables_in["self"].append(np.asarray(out["self"])[:, :real])
    tables_in["cross"].append(np.asarray(out["cross"])[:, :real])
    tables_in["tokens"].append(best[:real])
    tables_in["length_mask"].append(length_mask[:real])
    tables_in["fixed"].append(fixed[:real])
  self_w = np.concatenate(tables_in["self"], axis=1)
  cross_w = np.concatenate(tables_in["cross"], axis=1)
  tokens = np.concatenate(tables_in["tokens"])
  length_mask = np.concatenate(tables_in["length_mask"])
  fixed = np.concatenate(tables_in["fixed"])
  tables = analysis.stutter_attention_tables(self_w, cross_w, tokens, length_mask, rows=fixed)
  all_stutter, all_non = analysis.adjacent_pairs(tokens, length_mask)
  tables.update(
      num_sentences=int(len(tokens)),
      fixed_point_rows=int(fixed.sum()),
      stutter_pairs_all_rows=int(all_stutter.sum()),
      non_stutter_pairs_all_rows=int(all_non.sum()),
  )
  return tables


@cli.entry_point
def main(argv=None):
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--padir_checkpoint", required=True)
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--split", default="dev", help="dev (newstest2013) or dev-multi30k")
  parser.add_argument("--num_sentences", type=cli.positive_int, default=500)
  cli.add_config_flags(parser, DecodingConfig, ("max_passes", "length_beam"))
  parser.add_argument("--remask_stutter", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  cli.check_output_path(parser, "--out", args.out)
  loaded = loading.load(args.padir_checkpoint, kind="padir")
  module, params, processor = loaded.module, loaded.params, loaded.vocabulary
  data_dir = shared_data.data_dir_or_error(parser, args.data_dir)
  max_length = min(module.config.max_input_length, module.config.max_target_length)
  _, _, source_ids, _ = common.load_dev_set(
      data_dir, processor, args.num_sentences, max_length, args.split
  )
  config = DecodingConfig(
      length_beam=args.length_beam,
      max_passes=args.max_passes,
      dedup="none",
      remask="stutter" if args.remask_stutter else "none",
      **loading.vocabulary_fields(processor),
  )
  tables = analyse(module, params, source_ids, config)
  print(
      f"{tables['num_sentences']} {args.split} sentences; {tables['fixed_point_rows']} fixed-point rows "
      f"analysed (T={args.max_passes}, l={args.length_beam}, dedup off, remask_stutter="
      f"{args.remask_stutter})"
  )
  print(analysis.format_tables(tables))
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump(tables, f, indent=2)


if __name__ == "__main__":
  main()
