"""The quickstart main job on the core alone: train a small PaDIR on the embedded corpus, report BLEU.

    python -m padir_t5x.quickstart                 # a few minutes on 2 CPU cores
    python -m padir_t5x.quickstart --num_steps 200 --max_eval 100   # a smoke run
    python -m padir_t5x.quickstart --loss unmasking_rate=0.5 --decoding remask=none  # any field

`--loss`, `--decoding` and `--network` (repeatable, FIELD=VALUE; padir_t5x/cli.py) set any field
of loss_config.PadirLossConfig, decoding_config.DecodingConfig and
network_config.TransformerConfig, over the flat flags below.

The trained model is saved as a core checkpoint (padir_t5x/core/checkpoints.py) in --output_dir
(default runs/quickstart), and the run ends by printing the `python -m padir_t5x.translate`
command that translates a sentence of your own with it.

No download and no t5x: the embedded German->English numbers corpus (padir_t5x.corpus) and its
SentencePiece vocabulary are generated on first use (tasks.ensure_quickstart_data), the network is
trained with the core multi-stage loss in a plain optax loop (padir_t5x.core.training), and the test
split is decoded by iterative refinement and scored with SacreBLEU. The same run through T5X is
`python -m t5x.train --gin_file=gin/experiments/quickstart.gin` (see the README).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import time

import jax
import numpy as np
import sentencepiece as spm

from padir_t5x.core import checkpoints
from padir_t5x import cli
from padir_t5x.decoders import decoding
from padir_t5x.data import metrics
from padir_t5x.core import network
from padir_t5x.core import network_config
from padir_t5x.data import textio
from padir_t5x.core import training
from padir_t5x import vocab
from padir_t5x.decoders.decoding_config import DecodingConfig
from padir_t5x.core.loss_config import PadirLossConfig


@dataclasses.dataclass(frozen=True)
class QuickstartConfig:
  """Sizes of the quickstart run: the tiny 2+2-layer, 64-wide PaDIR and a few CPU minutes."""

  num_steps: int = 1500
  batch_size: int = 64
  max_input_length: int = 32  # the corpus's longest source is 25 pieces with EOS
  max_target_length: int = 36  # and its longest target 33
  emb_dim: int = 64
  num_heads: int = 4
  mlp_dim: int = 256
  num_layers: int = 2
  num_stages: int = 2
  unmasking_rate: float = 0.25
  length_loss_weight: float = 1.0
  max_passes: int = 4
  length_beam: int = 3
  max_eval: int = 500
  eval_split: str = "test"  # 'validation' for sweeps, so that the test split stays unseen
  dropout_rate: float = 0.0
  peak_learning_rate: float = 3e-3
  seed: int = 0
  output_dir: str = "runs/quickstart"  # the trained model, a core checkpoint for translate
  # FIELD=VALUE overrides of the three configs (padir_t5x/cli.py), applied over the flat fields.
  loss: tuple[str, ...] = ()
  decoding: tuple[str, ...] = ()
  network: tuple[str, ...] = ()


# The override fields and the config each one sets.
OVERRIDES = {
    "loss": PadirLossConfig,
    "decoding": DecodingConfig,
    "network": network_config.TransformerConfig,
}


def build_configs(
    config: QuickstartConfig, real_vocab: int, word_starts=None
) -> tuple[network_config.TransformerConfig, PadirLossConfig, DecodingConfig]:
  """The network, loss and decoding configs of `config` for a `real_vocab`-piece vocabulary.

  `word_starts`: the vocabulary's word-start table (vocab.word_start_table), for 'word' stutter.

  Raises ValueError naming the override flag ('--loss: ...') for a bad FIELD=VALUE.
  """

  def overrides(name: str) -> dict:
    return cli.parse_overrides(OVERRIDES[name], getattr(config, name))

  def built(name: str, make):  # make() parses the overrides too: one prefix for both errors
    try:
      return make()
    except (TypeError, ValueError) as error:
      raise ValueError(f"--{name}: {error}") from None

  net_config = built(
      "network",
      lambda: dataclasses.replace(
          network_config.tiny_config_from_sizes(
              vocab_size=vocab.padded_vocab_size(real_vocab),
              emb_dim=config.emb_dim,
              num_heads=config.num_heads,
              mlp_dim=config.mlp_dim,
              num_layers=config.num_layers,
              max_input_length=config.max_input_length,
              max_target_length=config.max_target_length,
              dropout_rate=config.dropout_rate,
          ),
          **overrides("network"),
      ),
  )
  loss_config = built(
      "loss",
      lambda: PadirLossConfig(
          **{
              "num_stages": config.num_stages,
              "unmasking_rate": config.unmasking_rate,
              "length_loss_weight": config.length_loss_weight,
              "vocab_high": real_vocab,
              **overrides("loss"),
          }
      ),
  )
  decoding_config = built(
      "decoding",
      lambda: DecodingConfig(
          **{
              "max_passes": config.max_passes,
              "length_beam": config.length_beam,
              "vocab_high": real_vocab,
              "word_starts": word_starts,
              **overrides("decoding"),
          }
      ),
  )
  return net_config, loss_config, decoding_config


def _read(path: str) -> list[str]:
  # '\n'-only splitting and per-line UTF-8 errors, as every corpus reader of the package.
  return [line for _, line in textio.iter_text_lines(path)]


def _encode(processor: spm.SentencePieceProcessor, lines: list[str], length: int, path: str):
  ids = processor.encode(lines)
  for line_number, tokens in enumerate(ids, start=1):
    if len(tokens) + 1 > length:
      raise ValueError(
          f"{path}:{line_number}: {len(tokens) + 1} tokens with EOS, more than "
          f"the feature length {length}; raise --max_*_length"
      )
  return training.pad_batch(ids, length, append_eos=True)


def run(config: QuickstartConfig, log=print) -> dict:
  """Trains and evaluates; returns the figures it printed, as a dict."""
  from tasks import ensure_quickstart_data  # pylint: disable=g-import-not-at-top

  data_dir, vocab_path = ensure_quickstart_data()
  processor = spm.SentencePieceProcessor(model_file=vocab_path)
  if config.eval_split not in ("validation", "test"):
    raise ValueError(f"eval_split must be 'validation' or 'test', got {config.eval_split!r}")
  split = {
      s: {lang: os.path.join(data_dir, f"{s}.{lang}") for lang in ("de", "en")}
      for s in ("train", config.eval_split)
  }
  train_inputs = _encode(
      processor, _read(split["train"]["de"]), config.max_input_length, split["train"]["de"]
  )
  train_targets = _encode(
      processor, _read(split["train"]["en"]), config.max_target_length, split["train"]["en"]
  )
  eval_paths = split[config.eval_split]
  test_sources = _read(eval_paths["de"])[: config.max_eval]
  test_references = _read(eval_paths["en"])[: config.max_eval]
  test_inputs = _encode(processor, test_sources, config.max_input_length, eval_paths["de"])

  real_vocab = processor.get_piece_size()
  net_config, loss_config, decoding_config = build_configs(
      config, real_vocab, word_starts=vocab.word_start_table(processor)
  )
  module = network.Transformer(net_config)
  train_config = training.TrainConfig(
      num_steps=config.num_steps,
      batch_size=config.batch_size,
      peak_learning_rate=config.peak_learning_rate,
      warmup_steps=min(200, config.num_steps // 10 + 1),
      seed=config.seed,
      log_every=250,
  )
  log(
      f"training PaDIR ({config.num_layers}+{config.num_layers} layers, d={config.emb_dim}) "
      f"on {len(train_inputs)} pairs for {config.num_steps} steps"
  )
  params, train_metrics, train_seconds = training.train(
      module,
      loss_config,
      train_config,
      training.batch_iterator(train_inputs, train_targets, config.batch_size, config.seed),
      log=log,
  )

  start = time.perf_counter()
  result = decoding.decode_with_network(
      module,
      params,
      test_inputs,
      jax.random.PRNGKey(0),
      decoding_config,
      max_decode_length=config.max_target_length,
  )
  best = np.asarray(result.sequences)[:, -1, :]
  decode_seconds = time.perf_counter() - start
  predictions = vocab.ids_to_text(processor, best)
  bleu = metrics.make_bleu_metric("en")(test_references, predictions)
  figures = {
      "bleu": float(bleu["bleu"]),
      "exact_match": float(np.mean([p == r for p, r in zip(predictions, test_references)])),
      "stutter_rate": metrics.stutter_rate(test_references, predictions)["stutter_rate"],
      "mean_passes": float(np.mean(np.asarray(result.passes))),
      "train_seconds": round(train_seconds, 1),
      "decode_seconds_incl_compile": round(decode_seconds, 1),
      "final_train_metrics": train_metrics,
      "eval_examples": len(predictions),
  }
  for source, prediction, reference in list(zip(test_sources, predictions, test_references))[:3]:
    log(f"  de:   {source}\n  padir: {prediction}\n  ref:  {reference}")
  log(json.dumps({k: v for k, v in figures.items() if k != "final_train_metrics"}))
  log(f"BLEU {figures['bleu']:.2f}  ({metrics.bleu_signature('en')})")
  checkpoints.save_checkpoint(
      config.output_dir,
      params,
      net_config,
      "padir",
      vocab_model=vocab_path,
      vocab_high=real_vocab,
      decoding={
          "length_beam": decoding_config.length_beam,
          "max_passes": decoding_config.max_passes,
          "stutter_unit": decoding_config.stutter_unit.value,
      },
      train_record={"quickstart_config": dataclasses.asdict(config), **figures},
  )
  figures["translate_command"] = translate_command(config.output_dir, test_sources[0])
  log(f"saved the model to {config.output_dir}; translate your own text with:")
  log(f"  {figures['translate_command']}")
  return figures


def translate_command(checkpoint_dir: str, example: str) -> str:
  """The shell command that translates `example` with the checkpoint at `checkpoint_dir`."""
  return (
      f"echo {shlex.quote(example)} | python -m padir_t5x.translate "
      f"--checkpoint {shlex.quote(checkpoint_dir)}"
  )


# The flat flags' types: each rejects a value outside its range before any work (cli.py).
FLAG_TYPES = {
    "num_steps": cli.positive_int,
    "batch_size": cli.positive_int,
    "max_input_length": cli.positive_int,
    "max_target_length": cli.positive_int,
    "emb_dim": cli.positive_int,
    "num_heads": cli.positive_int,
    "mlp_dim": cli.positive_int,
    "num_layers": cli.positive_int,
    "num_stages": cli.positive_int,
    "unmasking_rate": cli.probability,
    "length_loss_weight": cli.non_negative_float,
    "max_eval": cli.positive_int,
    "dropout_rate": cli.probability,
    "peak_learning_rate": cli.positive_float,
    "seed": cli.seed_int,
}
FLAG_CHOICES = {"eval_split": ("validation", "test")}
# QuickstartConfig fields that are DecodingConfig's: their flags come from its field metadata.
DECODING_FLAGS = ("max_passes", "length_beam")


def build_parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0])
  helps = {"output_dir": "where the trained model is saved, for python -m padir_t5x.translate"}
  for field in dataclasses.fields(QuickstartConfig):
    if field.name in OVERRIDES:
      cli.add_override_flag(parser, f"--{field.name}", OVERRIDES[field.name])
      continue
    if field.name in DECODING_FLAGS:  # declared by DecodingConfig; the quickstart's own default
      cli.add_config_flags(
          parser, decoding.DecodingConfig, (field.name,), defaults={field.name: field.default}
      )
      continue
    parser.add_argument(
        f"--{field.name}",
        type=FLAG_TYPES.get(field.name, type(field.default)),
        choices=FLAG_CHOICES.get(field.name),
        default=field.default,
        help=helps.get(field.name),
    )
  return parser


def check_decodable(
    net_config: network_config.TransformerConfig, decoding_config: DecodingConfig
) -> None:
  """Raises ValueError unless the network can decode `decoding_config`'s number of lengths.

  length_candidates.select_lengths checks the same at decode time, which is after the whole
  training.
  """
  # Transformer.predict_length gives logits over max_target_length lengths (offsets included).
  num_allowed = net_config.max_target_length - (decoding_config.min_length - 1)
  if decoding_config.num_lengths > num_allowed:
    raise ValueError(
        f"{decoding_config.num_lengths} target lengths (length_beam x (2 length_offsets + 1)) "
        f"exceed the {num_allowed} that max_target_length {net_config.max_target_length} allows"
    )


@cli.entry_point
def main(argv=None):
  parser = build_parser()
  args = parser.parse_args(argv)
  cli.check_at_most(parser, args, "num_heads", "emb_dim")
  # Where the model is saved, checked now: not after the training.
  cli.check_output_path(parser, "--output_dir", args.output_dir, kind="dir", make_parents=True)
  values = {field.name: getattr(args, field.name) for field in dataclasses.fields(QuickstartConfig)}
  config = QuickstartConfig(**{**values, **{name: tuple(values[name]) for name in OVERRIDES}})
  # Every flag and override is checked before the corpus is built or a step is trained, the
  # decoding settings too (they are used only after the training).
  try:
    net_config, _, decoding_config = build_configs(config, real_vocab=vocab.padded_vocab_size(1))
  except ValueError as error:
    parser.error(str(error))
  try:
    check_decodable(net_config, decoding_config)
  except ValueError as error:
    parser.error(f"argument {'--decoding' if config.decoding else '--length_beam'}: {error}")
  run(config)


if __name__ == "__main__":
  main()
