"""Trains a tiny AR or PaDIR translation model for a fixed wall-clock budget, saves a checkpoint.

    python -m benchmarks.train_budget --model padir --minutes 10 --out runs/budget/padir
    python -m benchmarks.train_budget --model ar    --minutes 10 --out runs/budget/ar

Both models share the network code (padir_t5x.network; AR = decoder_mode='autoregressive'), the
SentencePiece vocabulary (built once from the training text and cached under --vocab_dir), the
data, the batches (same seed, same length buckets), the optimiser, the schedule and the train
step (padir_t5x.training, which the quickstart uses too; only the loss differs). The budget is
wall-clock time of training steps: the step function is compiled ahead of time for every bucket
shape before the clock starts (the compile time is recorded apart), because on a small shared CPU
compiling PaDIR's two-stage loss takes minutes and would otherwise eat a large, load-dependent
share of a short budget. The learning rate follows warm-up + cosine decay over the *elapsed
fraction of the budget* (training.make_injected_optimizer), since the number of steps a budget
allows is not known in advance; --max_steps only stops the loop earlier.

Losses: PaDIR uses the core multi-stage loss (padir_t5x.losses.multi_stage_loss); AR uses the
teacher-forced cross-entropy of the targets shifted right (BOS = PAD = 0), `ar_loss` below. Both
are normalised per real target token, with the same z-loss.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from padir_t5x import checkpoints
from padir_t5x import losses
from padir_t5x import network
from padir_t5x import shared_data
from padir_t5x import textio
from padir_t5x import training
from padir_t5x import vocab as vocab_lib

# (padded length, batch size): about 2k target tokens per batch in each bucket; two shapes,
# so two compilations, instead of padding every short Multi30k/Tatoeba sentence to 80.
DEFAULT_BUCKETS = ((32, 64), (80, 24))


@dataclasses.dataclass(frozen=True)
class BudgetConfig:
  """Sizes of the equal-budget run (tiny: 2+2 layers, d=128, for a shared 2-core CPU)."""

  model: str = "padir"
  minutes: float = 10.0
  vocab_size: int = 4000
  max_length: int = 80
  emb_dim: int = 128
  num_heads: int = 4
  mlp_dim: int = 512
  num_layers: int = 2
  dropout_rate: float = 0.1
  peak_learning_rate: float = 2e-3
  warmup_fraction: float = 0.05
  final_learning_rate_fraction: float = 0.05
  num_stages: int = 2
  unmasking_rate: float = 0.25  # the library default, chosen by the dev sweep (README)
  z_loss: float = 1e-4
  seed: int = 0
  max_steps: int = 0  # > 0 stops earlier (tests); 0 = budget only


def transformer_config(config: BudgetConfig, vocab_high: int) -> network.TransformerConfig:
  """The tiny network of `config` (AR or PaDIR decoder), both sides max_length long."""
  return network.tiny_config_from_sizes(
      vocab_size=vocab_lib.padded_vocab_size(vocab_high),
      emb_dim=config.emb_dim,
      num_heads=config.num_heads,
      mlp_dim=config.mlp_dim,
      num_layers=config.num_layers,
      max_input_length=config.max_length,
      max_target_length=config.max_length,
      dropout_rate=config.dropout_rate,
      decoder_mode="padir" if config.model == "padir" else "autoregressive",
  )


def bucket_batches(
    inputs: list[list[int]], targets: list[list[int]], buckets=DEFAULT_BUCKETS, seed: int = 0
) -> Iterator[dict]:
  """Endless shuffled batches, each from one length bucket (padded to the bucket length).

  A pair goes to the first bucket that holds both sides; pairs longer than the last bucket are
  dropped by the caller. Buckets are drawn in proportion to their number of full batches, so
  every pair is seen about equally often.

  Yields: {'encoder_input_tokens': int32 [B, L], 'decoder_target_tokens': int32 [B, L]}.
  """
  rng = np.random.default_rng(seed)
  members = [[] for _ in buckets]
  for i, (x, y) in enumerate(zip(inputs, targets)):
    longest = max(len(x), len(y))
    for b, (length, _) in enumerate(buckets):
      if longest <= length:
        members[b].append(i)
        break
  weights = np.array([len(m) / size for m, (_, size) in zip(members, buckets)], np.float64)
  usable = weights >= 1
  if not usable.any():
    raise ValueError("no bucket has a full batch of training pairs")
  weights = np.where(usable, weights, 0.0)
  weights /= weights.sum()
  orders = [rng.permutation(m) for m in members]
  cursors = [0] * len(buckets)
  while True:
    b = int(rng.choice(len(buckets), p=weights))
    length, size = buckets[b]
    if cursors[b] + size > len(orders[b]):
      orders[b], cursors[b] = rng.permutation(members[b]), 0
    rows = orders[b][cursors[b] : cursors[b] + size]
    cursors[b] += size
    yield {
        "encoder_input_tokens": common.pad_rows([inputs[i] for i in rows], length),
        "decoder_target_tokens": common.pad_rows([targets[i] for i in rows], length),
    }


def shift_right(targets: jnp.ndarray) -> jnp.ndarray:
  """[b, t] -> [b, t]: BOS (= PAD = 0, as t5x) then targets[:, :-1]."""
  return jnp.pad(targets[:, :-1], ((0, 0), (1, 0)))


def ar_loss(module, params, batch, rng, z_loss: float = 1e-4, enable_dropout: bool = True):
  """Teacher-forced cross-entropy of an autoregressive Transformer, per real target token.

  Args:
    batch: 'encoder_input_tokens' [b, s], 'decoder_target_tokens' [b, t] (EOS-terminated).

  Returns:
    (loss, metrics {'loss', 'token_accuracy', 'num_tokens'}).
  """
  targets = jnp.asarray(batch["decoder_target_tokens"])
  logits = module.apply(
      {"params": params},
      jnp.asarray(batch["encoder_input_tokens"]),
      shift_right(targets),
      targets,
      enable_dropout=enable_dropout,
      rngs={"dropout": rng},
  )
  weights = (targets > 0).astype(jnp.float32)
  loss, _, num_tokens = losses.token_cross_entropy(
      logits, targets, weights, z_loss=z_loss, loss_normalizing_factor=losses.REAL_TARGET_TOKENS
  )
  correct = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
  return loss, {
      "loss": loss,
      "token_accuracy": correct / jnp.maximum(num_tokens, 1.0),
      "num_tokens": num_tokens,
  }


def time_schedule(config: BudgetConfig, fraction: float) -> float:
  """Learning rate at `fraction` of the budget: linear warm-up, cosine decay to a floor."""
  peak = config.peak_learning_rate
  if fraction < config.warmup_fraction:
    return peak * fraction / config.warmup_fraction
  progress = min(1.0, (fraction - config.warmup_fraction) / (1.0 - config.warmup_fraction))
  floor = peak * config.final_learning_rate_fraction
  return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def loss_function(
    config: BudgetConfig, module: network.Transformer, vocab_high: int
) -> training.LossFn:
  """config.model's training loss, per real target token with config.z_loss, dropout on.

  PaDIR: the core multi-stage loss; AR: `ar_loss`.
  """
  if config.model == "padir":
    loss_config = losses.PadirLossConfig(
        num_stages=config.num_stages,
        unmasking_rate=config.unmasking_rate,
        vocab_high=vocab_high,
        z_loss=config.z_loss,
        loss_normalizing_factor=losses.REAL_TARGET_TOKENS,
    )
    return training.padir_loss_fn(module, loss_config)

  def loss_fn(params, batch, rng):
    return ar_loss(module, params, batch, rng, config.z_loss)

  return loss_fn


def compile_per_bucket(train_step, params, opt_state, rng, buckets=DEFAULT_BUCKETS) -> dict:
  """{(batch size, length): `train_step` (with a learning-rate argument) compiled for that shape}.

  Compiled ahead of time so that no compilation falls inside the budget (module docstring).
  """
  compiled = {}
  for length, size in buckets:
    shape = jax.ShapeDtypeStruct((size, length), jnp.int32)
    compiled[(size, length)] = (
        jax.jit(train_step)
        .lower(
            params,
            opt_state,
            {"encoder_input_tokens": shape, "decoder_target_tokens": shape},
            rng,
            jnp.zeros((), jnp.float32),
        )
        .compile()
    )
  return compiled


def _log_line(config: BudgetConfig, step: int, start: float, lr, recent: list[dict]) -> str:
  """One progress line: the loss and accuracies averaged over the steps since the last line."""
  shown = {
      k: float(np.mean([float(m[k]) for m in recent]))
      for k in recent[-1]
      if k == "loss" or k.endswith("accuracy")
  }
  return (
      f"[{config.model}] step {step}  {time.perf_counter() - start:.0f}s  lr={float(lr):.2e}  "
      + "  ".join(f"{k}={v:.3f}" for k, v in sorted(shown.items()))
  )


def train(config: BudgetConfig, inputs, targets, vocab_high: int, log=print):
  """Trains for config.minutes of wall-clock; returns (module, params, record dict).

  Stops earlier after config.max_steps steps when that is > 0; the learning rate follows the
  elapsed fraction of the wall-clock budget either way (`time_schedule`).
  """
  module = network.Transformer(transformer_config(config, vocab_high))
  batches = bucket_batches(inputs, targets, buckets=DEFAULT_BUCKETS, seed=config.seed)
  first = next(batches)
  # Clipping and weight decay as training.TrainConfig's defaults.
  optimizer = training.make_injected_optimizer(gradient_clip_norm=1.0, weight_decay=0.0)
  params, opt_state, rng = training.init_train_state(module, first, config.seed, optimizer)
  train_step = training.with_learning_rate(
      training.make_train_step(loss_function(config, module, vocab_high), optimizer)
  )

  compile_start = time.perf_counter()
  compiled = compile_per_bucket(train_step, params, opt_state, rng)
  compile_seconds = time.perf_counter() - compile_start
  log(f"[{config.model}] compiled {len(compiled)} shapes in {compile_seconds:.0f}s")

  budget = config.minutes * 60.0
  start = time.perf_counter()
  step, batch, tokens_seen, recent = 0, first, 0, []
  next_log = 30.0
  while True:
    elapsed = time.perf_counter() - start
    if elapsed >= budget or (config.max_steps and step >= config.max_steps):
      break
    rng, step_rng = jax.random.split(rng)
    lr = jnp.asarray(time_schedule(config, elapsed / budget), jnp.float32)
    params, opt_state, metrics = compiled[batch["decoder_target_tokens"].shape](
        params, opt_state, training.device_batch(batch), step_rng, lr
    )
    step += 1
    tokens_seen += int((batch["decoder_target_tokens"] > 0).sum())
    recent.append(metrics)
    if time.perf_counter() - start >= next_log:
      log(_log_line(config, step, start, lr, recent))
      recent, next_log = [], next_log + 60.0
    batch = next(batches)
  jax.block_until_ready(params)
  seconds = time.perf_counter() - start
  last = {k: float(v) for k, v in (recent[-1] if recent else metrics).items()}
  num_params = int(sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params)))
  record = {
      "steps": step,
      "seconds": round(seconds, 1),
      "target_tokens_seen": tokens_seen,
      "compile_seconds": round(compile_seconds, 1),
      "num_params": num_params,
      "last_metrics": last,
      "budget_config": dataclasses.asdict(config),
  }
  log(f"[{config.model}] done: {step} steps in {seconds:.0f}s, {num_params:,} parameters")
  return module, params, record


def load_training_pairs(data_dir: str, processor, max_length: int, pair: str = "de-en"):
  """Encoded train pairs (EOS appended) with both sides <= max_length ids."""
  src, tgt = pair.split("-")
  # Validated pairs: a line-count mismatch fails with the file names instead of zip() truncating.
  pairs = textio.read_parallel_files(
      os.path.join(data_dir, pair, f"train.{src}"), os.path.join(data_dir, pair, f"train.{tgt}")
  )
  xs = common.encode_lines(processor, [source for source, _ in pairs])
  ys = common.encode_lines(processor, [target for _, target in pairs])
  kept = [(x, y) for x, y in zip(xs, ys) if 1 < len(x) <= max_length and 1 < len(y) <= max_length]
  return [x for x, _ in kept], [y for _, y in kept], len(xs)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  for field in dataclasses.fields(BudgetConfig):
    parser.add_argument(f"--{field.name}", type=type(field.default), default=field.default)
  parser.add_argument("--out", required=True, help="checkpoint directory to write")
  parser.add_argument("--data_dir", default=None, help="default: $PADIR_DATA_DIR or ../shared/data")
  parser.add_argument("--vocab_dir", default="runs/budget/vocab")
  args = parser.parse_args(argv)
  if args.model not in checkpoints.KINDS:
    parser.error(f"--model must be one of {checkpoints.KINDS}")
  data_dir = args.data_dir or shared_data.find_data_dir()
  if data_dir is None:
    parser.error("no data: pass --data_dir or set $PADIR_DATA_DIR")
  config = BudgetConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BudgetConfig)})
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  vocab_model = vocab_lib.ensure_pair_vocabulary(
      data_dir, "de-en", config.vocab_size, args.vocab_dir
  )
  processor = spm.SentencePieceProcessor(model_file=vocab_model)
  inputs, targets, total = load_training_pairs(data_dir, processor, config.max_length)
  print(
      f"{len(inputs)} of {total} training pairs fit in {config.max_length} ids; "
      f"vocab {processor.get_piece_size()}; devices {jax.devices()}"
  )
  module, params, record = train(config, inputs, targets, processor.get_piece_size())
  record["train_pairs"] = len(inputs)
  checkpoints.save_checkpoint(
      args.out,
      params,
      module.config,
      config.model,
      vocab_model=vocab_model,
      vocab_high=processor.get_piece_size(),
      train_record=record,
  )
  print(json.dumps({k: v for k, v in record.items() if k != "budget_config"}))


if __name__ == "__main__":
  main()
