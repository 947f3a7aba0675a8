"""The one PaDIR train step, and a minimal optax training loop on in-memory token arrays, no t5x.

T5X is the way to train at scale (gin/ and padir_t5x/t5x_adapter/models.py). This module exists so
that the core can be trained and checked anywhere: the quickstart main job and the toy-task test run
`train`; the equal-budget trainer (benchmarks/train_budget.py) runs its own wall-clock loop on the
same pieces (`network_config.tiny_config_from_sizes`, `init_train_state`, `make_injected_optimizer`,
`make_train_step` with `padir_loss_fn` or its AR loss).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from padir_t5x.core import losses
from padir_t5x.core import network
from padir_t5x import progress
from padir_t5x.core import schedules
from padir_t5x.core.loss_config import PadirLossConfig

Batch = Mapping[str, np.ndarray]
# (params, batch, rng) -> (scalar loss, metrics): what `make_train_step` differentiates.
LossFn = Callable[[dict, Batch, jax.Array], tuple[jax.Array, dict]]


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


# ------------------------------------------------------------------------------------------------
# Optimisers: gradient clipping then AdamW (b2 = 0.98), with the learning rate either a schedule
# of the step count or a hyperparameter that the caller sets at every step.
def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
  """Linear warm-up then cosine decay to a floor: the paper's schedule shape.

  The t5x recipe's schedule (padir_t5x.core.schedules), so a warm-up longer than the run is clamped
  to it the same way.
  """
  return schedules.warmup_cosine_decay(
      peak_value=config.peak_learning_rate,
      warmup_steps=config.warmup_steps,
      decay_steps=config.num_steps,
      end_value=config.peak_learning_rate * config.final_learning_rate_fraction,
  )


def _clipped_adamw(adamw, learning_rate, gradient_clip_norm: float, weight_decay: float):
  """optax.chain(clip, adamw(...)): `adamw` is optax.adamw or its inject_hyperparams wrapper."""
  return optax.chain(
      optax.clip_by_global_norm(gradient_clip_norm),
      adamw(learning_rate=learning_rate, b2=0.98, weight_decay=weight_decay),
  )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  """The learning rate follows `learning_rate_schedule` of the optimiser's own step count."""
  return _clipped_adamw(
      optax.adamw, learning_rate_schedule(config), config.gradient_clip_norm, config.weight_decay
  )


def make_injected_optimizer(
    gradient_clip_norm: float, weight_decay: float
) -> optax.GradientTransformation:
  """The same chain with the learning rate held in the state, to be set by `set_learning_rate`.

  For loops whose schedule is not a function of the step count (a wall-clock budget does not
  know in advance how many steps it allows).
  """
  return _clipped_adamw(
      optax.inject_hyperparams(optax.adamw), 0.0, gradient_clip_norm, weight_decay
  )


def set_learning_rate(opt_state, learning_rate: jax.Array):
  """A `make_injected_optimizer` state with float32 [] `learning_rate` (a new state, not in place)."""
  clip_state, adamw_state = opt_state  # the two links of the chain
  hyperparams = {**adamw_state.hyperparams, "learning_rate": learning_rate}
  return clip_state, adamw_state._replace(hyperparams=hyperparams)


# ------------------------------------------------------------------------------------------------
# Initialisation and the train step.
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


def init_train_state(
    module: network.Transformer,
    first_batch: Batch,
    seed: int,
    optimizer: optax.GradientTransformation,
):
  """Returns (params, opt_state, rng): the state before step 1.

  PRNGKey(seed) is split once into (initialisation key, loop key), in that order; the loop then
  splits the loop key once per step. The reference figures (quickstart BLEU, the toy test)
  depend on exactly this order.
  """
  rng = jax.random.PRNGKey(seed)
  init_rng, rng = jax.random.split(rng)
  params = init_params(module, first_batch, init_rng)
  return params, optimizer.init(params), rng


def padir_loss_fn(
    module: network.Transformer, loss_config: PadirLossConfig, enable_dropout: bool = True
) -> LossFn:
  """PaDIR's multi-stage loss (losses.multi_stage_loss) as a `LossFn`."""

  def loss_fn(params, batch, rng):
    return losses.multi_stage_loss(
        module, params, batch, rng, loss_config, enable_dropout=enable_dropout
    )

  return loss_fn


def optimizer_step(opt_state) -> jax.Array | None:
  """The number of updates `opt_state` has seen (int32 []), or None if its optimiser counts none.

  Read from the first 'count' field of the state (optax's Adam, schedule and inject_hyperparams
  states all keep one, equal to each other).
  """
  counts = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
  return counts[0][1] if counts else None


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation) -> Callable:
  """(params, opt_state, batch, rng) -> (params, opt_state, metrics of `loss_fn`), not jitted.

  The batch holds int32 'encoder_input_tokens' [B, S] and 'decoder_target_tokens' [B, T] as
  jax arrays. `loss_fn` sees it with losses.TRAIN_STEP_FEATURE added: the number of optimizer
  updates before this step (`optimizer_step`; 0 at the first step), which an annealed glancing
  ratio reads (losses.glancing_ratio) and other losses ignore. Not jitted so that a caller may
  jit it (`train`) or compile it ahead of time for each batch shape (the budget trainer).
  """

  def train_step(params, opt_state, batch, rng):
    step = optimizer_step(opt_state)
    if step is not None:
      batch = {**batch, losses.TRAIN_STEP_FEATURE: step}
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  return train_step


def with_learning_rate(train_step: Callable) -> Callable:
  """For `make_injected_optimizer`: the step with a float32 [] learning rate as a fifth argument."""

  def train_step_at(params, opt_state, batch, rng, learning_rate):
    return train_step(params, set_learning_rate(opt_state, learning_rate), batch, rng)

  return train_step_at


def device_batch(batch: Batch) -> dict[str, jax.Array]:
  """The numpy batch as jax arrays, same keys, shapes and dtypes."""
  return {k: jnp.asarray(v) for k, v in batch.items()}


# ------------------------------------------------------------------------------------------------
# The step-count loop.
def _log_line(
    step: int,
    num_steps: int,
    metrics: Mapping[str, jax.Array],
    start: float,
    summed: bool,
    first_step_end: float | None = None,
) -> str:
  """'step N/M  P% [elapsed<ETA, rate]  loss=...  <name>_accuracy=...': progress, loss, accuracies.

  `summed`: the loss is a sum over the batch's target tokens (loss_normalizing_factor None, the
  t5x default), so it grows with the batch; the line then says so and adds the loss per target
  token (`num_tokens` of the metrics). The rate (and ETA) count from `first_step_end` when given,
  so that the first step's compilation does not inflate the ETA. The clock is read after the
  metrics are fetched, so that the time includes the step itself.
  """
  shown = {k: float(v) for k, v in metrics.items() if k.endswith("_accuracy")}
  loss = f"loss={float(metrics['loss']):.4f}"
  if summed and "num_tokens" in metrics:
    tokens = float(metrics["num_tokens"])
    loss = (
        f"loss/token={float(metrics['loss']) / max(tokens, 1.0):.4f} "
        f"(loss={float(metrics['loss']):.1f} summed over {tokens:.0f} target tokens)"
    )
  now = time.perf_counter()
  rate = None
  if first_step_end is not None and step > 1 and now > first_step_end:
    rate = (step - 1) / (now - first_step_end)
  return (
      progress.progress_text(step, num_steps, now - start, rate=rate)
      + f"  {loss}  "
      + "  ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items()))
  )


def train(
    module: network.Transformer,
    loss_config: PadirLossConfig,
    train_config: TrainConfig,
    batches: Iterator[Batch],
    log: Callable[[str], None] | None = print,
):
  """Trains PaDIR from scratch for train_config.num_steps steps on `batches`.

  Logs a progress line (`_log_line`) every train_config.log_every steps and after the last.

  Returns (params, last metrics as floats, seconds spent in the loop).
  """
  batch = next(batches)
  optimizer = make_optimizer(train_config)
  params, opt_state, rng = init_train_state(module, batch, train_config.seed, optimizer)
  train_step = jax.jit(make_train_step(padir_loss_fn(module, loss_config), optimizer))
  summed = loss_config.loss_normalizing_factor is None
  start = first_step_end = time.perf_counter()
  metrics = {}
  for step in range(1, train_config.num_steps + 1):
    rng, step_rng = jax.random.split(rng)
    params, opt_state, metrics = train_step(params, opt_state, device_batch(batch), step_rng)
    if step == 1 and log:
      jax.block_until_ready(metrics)
      first_step_end = time.perf_counter()
    if log and (step % train_config.log_every == 0 or step == train_config.num_steps):
      log(_log_line(step, train_config.num_steps, metrics, start, summed, first_step_end))
    if step < train_config.num_steps:
      batch = next(batches)  # no batch drawn after the last step
  return params, {k: float(v) for k, v in metrics.items()}, time.perf_counter() - start


# ------------------------------------------------------------------------------------------------
# Batches of in-memory token arrays.
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
