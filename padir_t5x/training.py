"""A minimal optax training loop for PaDIR on in-memory token arrays, with no t5x.

T5X is the way to train at scale (gin/ and padir_t5x/models.py). This loop exists so that the core
can be trained and checked anywhere: the quickstart main job and the toy-task test use it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from padir_t5x import losses
from padir_t5x import network

Batch = Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation settings of the core loop (the t5x recipe lives in gin/)."""

  num_steps: int = 1000
  batch_size: int = 64
  peak_learning_rate: float = 3e-3
  warmup_steps: int = 100
  final_learning_rate_fraction: float = 0.05  # cosine decay floor, as a fraction of the peak
  weight_decay: float = 0.0
  gradient_clip_norm: float = 1.0
  seed: int = 0
  log_every: int = 100


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
  """Linear warm-up then cosine decay to a floor: the paper's schedule shape."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=config.peak_learning_rate,
      warmup_steps=config.warmup_steps,
      decay_steps=max(config.num_steps, config.warmup_steps + 1),
      end_value=config.peak_learning_rate * config.final_learning_rate_fraction,
  )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  return optax.chain(
      optax.clip_by_global_norm(config.gradient_clip_norm),
      optax.adamw(learning_rate_schedule(config), b2=0.98, weight_decay=config.weight_decay),
  )


def init_params(module: network.Transformer, example_batch: Batch, rng: jax.Array):
  """Initialises the network on the shapes of one batch; returns the 'params' collection."""
  variables = module.init(
      rng,
      jnp.asarray(example_batch["encoder_input_tokens"]),
      jnp.asarray(example_batch["decoder_target_tokens"]),
      jnp.asarray(example_batch["decoder_target_tokens"]),
      enable_dropout=False,
  )
  return variables["params"]


def make_train_step(
    module: network.Transformer,
    loss_config: losses.PadirLossConfig,
    optimizer: optax.GradientTransformation,
) -> Callable:
  """Returns a jitted (params, opt_state, batch, rng) -> (params, opt_state, metrics)."""

  def loss_fn(params, batch, rng):
    return losses.multi_stage_loss(module, params, batch, rng, loss_config, enable_dropout=True)

  @jax.jit
  def train_step(params, opt_state, batch, rng):
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  return train_step


def train(
    module: network.Transformer,
    loss_config: losses.PadirLossConfig,
    train_config: TrainConfig,
    batches: Iterator[Batch],
    log: Callable[[str], None] | None = print,
):
  """Trains from scratch on `batches`; returns (params, last metrics, seconds spent)."""
  batch = next(batches)
  rng = jax.random.PRNGKey(train_config.seed)
  init_rng, rng = jax.random.split(rng)
  params = init_params(module, batch, init_rng)
  optimizer = make_optimizer(train_config)
  opt_state = optimizer.init(params)
  train_step = make_train_step(module, loss_config, optimizer)
  start = time.perf_counter()
  metrics = {}
  for step in range(1, train_config.num_steps + 1):
    rng, step_rng = jax.random.split(rng)
    params, opt_state, metrics = train_step(
        params, opt_state, {k: jnp.asarray(v) for k, v in batch.items()}, step_rng
    )
    if log and (step % train_config.log_every == 0 or step == train_config.num_steps):
      shown = {
          k: float(v)
          for k, v in metrics.items()
          if k in ("loss", "length_accuracy") or k.endswith("_accuracy")
      }
      log(
          f"step {step:5d}  "
          + "  ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items()))
          + f"  ({time.perf_counter() - start:.0f}s)"
      )
    if step < train_config.num_steps:
      batch = next(batches)
  return params, {k: float(v) for k, v in metrics.items()}, time.perf_counter() - start


def pad_batch(sequences: list[list[int]], length: int, append_eos: bool) -> np.ndarray:
  """Right-pads token lists with PAD (0) to [len(sequences), length]; optionally adds EOS.

  Raises ValueError naming the row when a sequence (with EOS) does not fit: truncating would
  silently change the training data.
  """
  from padir_t5x import EOS_ID  # pylint: disable=g-import-not-at-top

  out = np.zeros((len(sequences), length), np.int32)
  for row, tokens in enumerate(sequences):
    tokens = list(tokens) + ([EOS_ID] if append_eos else [])
    if len(tokens) > length:
      raise ValueError(
          f"sequence {row} has {len(tokens)} tokens (EOS included), more than "
          f"the feature length {length}"
      )
    out[row, : len(tokens)] = tokens
  return out


def batch_iterator(
    inputs: np.ndarray, targets: np.ndarray, batch_size: int, seed: int
) -> Iterator[Batch]:
  """Endless shuffled batches of {'encoder_input_tokens', 'decoder_target_tokens'}."""
  if len(inputs) != len(targets):
    raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")
  if len(inputs) < batch_size:
    raise ValueError(f"batch size {batch_size} exceeds the {len(inputs)} training examples")
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(len(inputs))
    for start in range(0, len(order) - batch_size + 1, batch_size):
      rows = order[start : start + batch_size]
      yield {"encoder_input_tokens": inputs[rows], "decoder_target_tokens": targets[rows]}
