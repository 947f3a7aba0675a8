"""PaDIR training losses: multi-stage token cross-entropy plus target-length cross-entropy.

PaDIR (Li et al. 2024, Sec. 3 and App. L) trains the decoder to refine its own outputs. Stage 1
reads the corrupted target (`padir_t5x.core.corruption`); stage s+1 reads the argmax of stage s, as
at inference, and every stage is trained with cross-entropy against the true target. The encoder
runs once and also feeds a length classifier, trained with cross-entropy on the target length.

The settings are `PadirLossConfig` (padir_t5x/core/loss_config.py), which this module also exposes:
models.py reads it as `losses.PadirLossConfig`. The cross-entropies themselves, t5x's arithmetic,
are padir_t5x/core/cross_entropy.py.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from padir_t5x import EOS_ID
from padir_t5x import PAD_ID
from padir_t5x.core import corruption
from padir_t5x.core import layout
from padir_t5x.core import network
from padir_t5x.core.cross_entropy import length_cross_entropy
from padir_t5x.core.cross_entropy import resolve_loss_normalizing_factor
from padir_t5x.core.cross_entropy import token_cross_entropy
from padir_t5x.core.loss_config import PadirLossConfig
from padir_t5x.core.modes import LossPositions
from padir_t5x.core.modes import UnmaskingRateMode

Array = jnp.ndarray


# Features a PaDIR batch may carry (seqio.EncDecFeatureConverter with pack=False).
_REQUIRED_TRAIN_FEATURES = ("encoder_input_tokens", "decoder_target_tokens")
_PACKING_FEATURES = (
    "encoder_segment_ids",
    "decoder_segment_ids",
    "encoder_positions",
    "decoder_positions",
)


def check_batch(
    batch: Mapping[str, Any], required=_REQUIRED_TRAIN_FEATURES, shapes: bool = False
) -> None:
  """Raises ValueError for packed batches, missing features or features not [batch, length].

  With shapes=True the values are shapes (t5x's input_shapes), not arrays.
  """
  packed = [k for k in _PACKING_FEATURES if k in batch]
  if packed:
    raise ValueError(
        f"PaDIR does not support packed examples, but the batch has {packed}: the length "
        "classifier and the parallel decoder need one example per row. Set pack=False in the "
        "DatasetConfig / feature converter."
    )
  missing = [k for k in required if k not in batch]
  if missing:
    raise ValueError(
        f"PaDIR batch lacks feature(s) {missing}; got {sorted(batch)}. Use "
        "seqio.EncDecFeatureConverter(pack=False) on a task with 'inputs' and "
        "'targets'."
    )
  for key in required:
    shape = tuple(batch[key]) if shapes else jnp.shape(batch[key])
    if len(shape) != 2:
      raise ValueError(f"{key!r} must be [batch, length], got shape {shape}")


class LossRngs(NamedTuple):
  """The independent PRNG keys of one training step."""

  corruption: jax.Array
  encoder_dropout: jax.Array
  stage_dropout: tuple[jax.Array, ...]  # one per stage, so stages drop different units


def split_loss_rngs(rng: jax.Array, num_stages: int) -> LossRngs:
  keys = jax.random.split(rng, 2 + num_stages)
  return LossRngs(keys[0], keys[1], tuple(keys[2 + s] for s in range(num_stages)))


def next_stage_inputs(stage_logits: Array, decoder_target_tokens: Array) -> Array:
  """Stage s+1 input from stage s output: argmax, PAD past the length, EOS where the target has it.

  At inference the decoder knows the (predicted) length, so the positions past it are PAD and
  EOS sits at its end; training feeds later stages the same kind of input. The result is a
  constant (stop_gradient): stage s+1's loss must train stage s+1's pass, not reach back into
  stage s through its input.

  Args:
    stage_logits: [batch, length, V] logits of stage s.
    decoder_target_tokens: [batch, length] int targets.

  Returns:
    [batch, length] int32 decoder input tokens of stage s+1.
  """
  predicted = jnp.argmax(stage_logits, axis=-1).astype(decoder_target_tokens.dtype)
  positions = jnp.arange(decoder_target_tokens.shape[1])[None, :]
  past_length = positions >= layout.sequence_lengths(decoder_target_tokens)[:, None]
  predicted = jnp.where(past_length, PAD_ID, predicted)
  predicted = jnp.where(decoder_target_tokens == EOS_ID, EOS_ID, predicted)
  return jax.lax.stop_gradient(predicted)


class StageOutputs(NamedTuple):
  """What the forward passes of one training step produced.

  stage_inputs / stage_logits: one [batch, length] / [batch, length, V] array per stage.
  length_logits: [batch, L].
  stage1_replaced: [batch, length] bool, the positions selected for corruption in stage 1's
    input (loss_positions='corrupted' trains on them).
  corruption_metrics: scalars describing the stage-1 input (`option_metric_names`).
  """

  stage_inputs: tuple[Array, ...]
  stage_logits: tuple[Array, ...]
  length_logits: Array
  stage1_replaced: Array | None = None
  corruption_metrics: Mapping[str, Array] | None = None


# An optional batch feature: the number of optimizer steps taken so far (int32, scalar or
# [batch]). training.make_train_step sets it; only an annealed glancing ratio reads it.
TRAIN_STEP_FEATURE = "train_step"

# Folded into the corruption key for the options' own draws: the default path ('fixed' rate)
# consumes the corruption key exactly as it always has.
_UNIFORM_RATE_SALT = 1
_GLANCING_SALT = 2


def glancing_ratio(config: PadirLossConfig, step: Array | None = None) -> Array:
  """float32 GLAT ratio at `step` (optimizer steps taken: scalar or [batch]).

  Constant `glancing_ratio` unless the config anneals; then linear from glancing_ratio to
  glancing_ratio_end over glancing_anneal_steps, constant after, and a ValueError without a step.
  """
  if not config.glancing_anneals:
    return jnp.float32(config.glancing_ratio)
  if step is None:
    raise ValueError(
        "glancing_ratio_end / glancing_anneal_steps anneal the glancing ratio by training step, "
        f"but the batch has no {TRAIN_STEP_FEATURE!r} feature: the optax loop "
        "(training.make_train_step) supplies it, T5X's loss_fn cannot (it gets no step). Under "
        "T5X use a constant ratio: glancing_ratio_end=None, glancing_anneal_steps=0."
    )
  progress = jnp.clip(
      jnp.asarray(step, jnp.float32) / jnp.float32(config.glancing_anneal_steps), 0.0, 1.0
  )
  start, end = jnp.float32(config.glancing_ratio), jnp.float32(config.glancing_ratio_end)
  return start + (end - start) * progress


def option_metric_names(config: PadirLossConfig) -> tuple[str, ...]:
  """The metrics that `multi_stage_loss` adds for the training options that `config` turns on.

  unmasking_rate: mean stage-1 unmasking rate of the batch's rows that have corruptible tokens
    (unmasking_rate_mode 'uniform' or 'glancing').
  glancing_ratio, glancing_wrong_fraction, glancing_revealed_fraction: the ratio in force, and
    the first pass's wrong tokens and the revealed tokens, each over the corruptible tokens of
    the batch ('glancing').
  corrupted_mask_fraction, corrupted_unchanged_fraction: of the positions selected for
    corruption, the share filled with [MASK] and the share holding the correct token (the mix's
    'keep' share plus random tokens right by chance) (corruption_mix given).
  stage{s}_loss_tokens: the sum of stage s's loss weights (loss_positions='corrupted'; under
    'all' it would be num_tokens).
  """
  names = []
  if config.unmasking_rate_mode is not UnmaskingRateMode.FIXED:
    names.append("unmasking_rate")
  if config.unmasking_rate_mode is UnmaskingRateMode.GLANCING:
    names += ["glancing_ratio", "glancing_wrong_fraction", "glancing_revealed_fraction"]
  if config.corruption_mix is not None:
    names += ["corrupted_mask_fraction", "corrupted_unchanged_fraction"]
  if config.loss_positions is LossPositions.CORRUPTED:
    names += [f"stage{s}_loss_tokens" for s in range(1, config.num_stages + 1)]
  return tuple(names)


def _fraction(numerator: Array, denominator: Array) -> Array:
  return jnp.sum(numerator).astype(jnp.float32) / jnp.maximum(
      jnp.sum(denominator).astype(jnp.float32), 1.0
  )


def stage1_input(
    module,
    params,
    encoded: Array,
    batch: Mapping[str, Array],
    rngs: LossRngs,
    config: PadirLossConfig,
    enable_dropout: bool = True,
) -> tuple[Array, Array, dict[str, Array]]:
  """The corrupted target that stage 1 reads, per the config's rate mode and mix.

  'fixed': `corruption.corrupt_targets_with_mask` at config.unmasking_rate, keyed by
  rngs.corruption. 'uniform': the same at per-example rates from
  `corruption.uniform_unmasking_rates`, drawn from fold_in(rngs.corruption, 1). 'glancing': a
  first decoder pass on a fully corrupted input (filled from fold_in(rngs.corruption, 2)) is
  compared with the target, and the rates come from `corruption.glancing_unmasking_rates`. That
  pass has no gradient (params and encoding under stop_gradient), runs with dropout exactly when
  the training passes do (`enable_dropout`), and uses stage 1's dropout key, so that it drops
  the same units as stage 1's pass (as GLAT's released code, which reseeds both passes alike).
  It costs one more decoder forward per step (no backward).

  Returns:
    (tokens [batch, length], replaced [batch, length] bool, metrics of `option_metric_names`
    about the stage-1 input).
  """
  inputs = jnp.asarray(batch["encoder_input_tokens"])
  targets = jnp.asarray(batch["decoder_target_tokens"])
  corrupt = functools.partial(
      corruption.corrupt_targets_with_mask,
      vocab_high=config.vocab_high,
      vocab_low=config.vocab_low,
      mask_id=config.mask_id,
      mix=config.replacement_mix,
  )
  rng = rngs.corruption
  metrics = {}
  mode = config.unmasking_rate_mode
  if mode is UnmaskingRateMode.FIXED:
    rates = config.unmasking_rate
  elif mode is UnmaskingRateMode.UNIFORM:
    rates = corruption.uniform_unmasking_rates(
        jax.random.fold_in(rng, _UNIFORM_RATE_SALT), targets.shape[0], *config.unmasking_rate_range
    )
  else:
    glance_input, _ = corrupt(jax.random.fold_in(rng, _GLANCING_SALT), targets, 0.0)
    glance_logits = module.apply(
        {"params": jax.lax.stop_gradient(params)},
        jax.lax.stop_gradient(encoded),
        inputs,
        glance_input,
        targets,
        enable_dropout=enable_dropout,
        method="decode",
        rngs={"dropout": rngs.stage_dropout[0]},
    )
    predictions = jnp.argmax(jax.lax.stop_gradient(glance_logits), axis=-1)
    ratio = glancing_ratio(config, batch.get(TRAIN_STEP_FEATURE))
    rates, revealed, wrong, corruptible = corruption.glancing_unmasking_rates(
        predictions, targets, ratio
    )
    metrics.update(
        glancing_ratio=jnp.mean(ratio),
        glancing_wrong_fraction=_fraction(wrong, corruptible),
        glancing_revealed_fraction=_fraction(revealed, corruptible),
    )
  tokens, replaced = corrupt(rng, targets, rates)
  if mode is not UnmaskingRateMode.FIXED:
    has_corruptible = jnp.any(corruption.corruptible_positions(targets), axis=-1)
    metrics["unmasking_rate"] = _fraction(
        jnp.where(has_corruptible, jnp.broadcast_to(rates, has_corruptible.shape), 0.0),
        has_corruptible,
    )
  if config.corruption_mix is not None:
    metrics["corrupted_mask_fraction"] = _fraction(replaced & (tokens == config.mask_id), replaced)
    metrics["corrupted_unchanged_fraction"] = _fraction(replaced & (tokens == targets), replaced)
  return tokens, replaced, metrics


def multi_stage_forward(
    module,
    params,
    batch: Mapping[str, Array],
    rng: jax.Array,
    config: PadirLossConfig,
    enable_dropout: bool = True,
) -> StageOutputs:
  """Encodes once, predicts the length, runs `config.num_stages` decoder passes.

  `rng` is split by `split_loss_rngs`: corruption, encoder dropout, one dropout key per stage.
  Stage 1's input is `stage1_input` (with glancing, one more decoder pass before stage 1).
  """
  check_batch(batch)
  inputs = jnp.asarray(batch["encoder_input_tokens"])
  targets = jnp.asarray(batch["decoder_target_tokens"])
  rngs = split_loss_rngs(rng, config.num_stages)
  variables = {"params": params}
  encoded, length_logits = network.encode_and_predict_length(
      module, params, inputs, enable_dropout=enable_dropout, dropout_rng=rngs.encoder_dropout
  )

  decoder_input, replaced, corruption_metrics = stage1_input(
      module, params, encoded, batch, rngs, config, enable_dropout
  )
  stage_inputs, stage_logits = [], []
  for stage in range(config.num_stages):
    if stage > 0:
      decoder_input = next_stage_inputs(stage_logits[-1], targets)
    logits = module.apply(
        variables,
        encoded,
        inputs,
        decoder_input,
        targets,
        enable_dropout=enable_dropout,
        method="decode",
        rngs={"dropout": rngs.stage_dropout[stage]},
    )
    stage_inputs.append(decoder_input)
    stage_logits.append(logits)
  return StageOutputs(
      tuple(stage_inputs), tuple(stage_logits), length_logits, replaced, corruption_metrics
  )


def multi_stage_loss(
    module,
    params,
    batch: Mapping[str, Array],
    rng: jax.Array,
    config: PadirLossConfig,
    enable_dropout: bool = True,
) -> tuple[Array, dict[str, Array]]:
  """The PaDIR training loss and its metrics.

  loss = sum over stages of stage{s}_loss + length_loss_weight * length_loss, where
    stage{s}_loss = `token_cross_entropy` of stage s under `stage_loss_weights` (by default every
      target position: batch['decoder_loss_weights'] if present, else targets > 0), z-loss
      included;
    length_loss = sum over real examples (targets not all PAD) of the length cross-entropy;
  all divided by the resolved `config.loss_normalizing_factor` when there is one. Stage losses
  are summed, not averaged: each stage is a full training signal (the paper trains every stage
  with cross-entropy), and averaging would shrink the gradient per stage as stages are added.

  Args:
    module: a flax module with `encode`, `predict_length` and `decode` (padir_t5x.core.network).
    params: its 'params' collection.
    batch: 'encoder_input_tokens' [b, s], 'decoder_target_tokens' [b, t], optionally
      'decoder_loss_weights' [b, t] and TRAIN_STEP_FEATURE (an annealed glancing ratio needs
      it). No packing ('*_segment_ids' raise ValueError).
    rng: PRNG key (corruption and dropout).
    config: PadirLossConfig.
    enable_dropout: dropout on in every pass.

  Returns:
    (loss, metrics). Metrics are jnp scalars; the terms exactly as they enter the loss:
      loss, z_loss (sum of the stages' z-loss terms, already inside the stage losses),
      length_loss, stage{s}_loss (s from 1);
    ratios for this batch: length_accuracy, length_accuracy_within_1 (|argmax length - true
      length| <= 1), stage{s}_accuracy (weighted token accuracy over every target position,
      whatever loss_positions is);
    sums and counts, to average across batches as sum(correct) / sum(count):
      stage{s}_correct (sum of weights where argmax == target) over num_tokens (weight sum),
      length_correct and length_within_1_correct over num_examples (rows with a nonempty target);
    and those of `option_metric_names(config)` for the options turned on.
    The length loss of a target length the predictor cannot give (outside the offset window,
    length_target='offset') is that of the nearest length it can (`layout.nearest_allowed_lengths`).
  """
  outputs = multi_stage_forward(module, params, batch, rng, config, enable_dropout)
  return loss_from_outputs(outputs, batch, config)


def stage_loss_weights(
    outputs: StageOutputs, targets: Array, weights: Array, config: PadirLossConfig
) -> tuple[Array, ...]:
  """[batch, length] float32 loss weights of each stage.

  loss_positions='all': `weights` for every stage. 'corrupted': `weights` times an indicator of
  stage 1's positions selected for corruption (outputs.stage1_replaced), or for a later stage of
  the positions where its input (the previous stage's argmax) differs from the target; EOS
  positions always count (EOS is never corrupted, but it is what ends the row).

  Args:
    outputs: the forward passes.
    targets: [batch, length] int targets.
    weights: [batch, length] float32 target weights (decoder_loss_weights, else targets > 0).
    config: PadirLossConfig.
  """
  if config.loss_positions is LossPositions.ALL:
    return tuple(weights for _ in outputs.stage_logits)
  if outputs.stage1_replaced is None:
    raise ValueError("loss_positions='corrupted' needs StageOutputs.stage1_replaced")
  eos = targets == EOS_ID
  stage_weights = []
  for stage, stage_input in enumerate(outputs.stage_inputs):
    corrupted = outputs.stage1_replaced if stage == 0 else stage_input != targets
    stage_weights.append(weights * (corrupted | eos).astype(jnp.float32))
  return tuple(stage_weights)


def loss_from_outputs(
    outputs: StageOutputs, batch: Mapping[str, Array], config: PadirLossConfig
) -> tuple[Array, dict[str, Array]]:
  """`multi_stage_loss` from the forward passes' outputs (PadirModel also reads their logits)."""
  targets = jnp.asarray(batch["decoder_target_tokens"])
  weights = batch.get("decoder_loss_weights")
  weights = (targets > 0) if weights is None else jnp.asarray(weights)
  weights = weights.astype(jnp.float32)
  # One factor for everything, resolved from the target weights: stages and length are scaled
  # alike, so length_loss_weight keeps its meaning whatever the normalisation.
  factor = resolve_loss_normalizing_factor(config.loss_normalizing_factor, weights)
  stage_weights = stage_loss_weights(outputs, targets, weights, config)

  metrics = {}
  total_loss = 0.0
  total_z_loss = 0.0
  num_tokens = jnp.sum(weights)
  for stage, logits in enumerate(outputs.stage_logits, start=1):
    stage_loss, stage_z_loss, stage_loss_tokens = token_cross_entropy(
        logits,
        targets,
        stage_weights[stage - 1],
        label_smoothing=config.label_smoothing,
        z_loss=config.z_loss,
        loss_normalizing_factor=factor,
    )
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights)
    metrics[f"stage{stage}_loss"] = stage_loss
    metrics[f"stage{stage}_correct"] = correct
    metrics[f"stage{stage}_accuracy"] = correct / jnp.maximum(num_tokens, 1e-8)
    if config.loss_positions is LossPositions.CORRUPTED:
      metrics[f"stage{stage}_loss_tokens"] = stage_loss_tokens
    total_loss += stage_loss
    total_z_loss += stage_z_loss

  lengths = layout.sequence_lengths(targets)
  # Rows with an all-PAD target (eval batch padding) have no length to learn.
  real_example = (lengths > 0).astype(jnp.float32)
  # A predictor with a limited reach (the offset target) is trained towards the nearest length it
  # can give; the accuracies compare with the true length.
  per_example_length_loss, _ = length_cross_entropy(
      outputs.length_logits, layout.nearest_allowed_lengths(outputs.length_logits, lengths)
  )
  length_correct, length_within_1 = layout.length_hits(outputs.length_logits, lengths)
  length_loss = jnp.sum(per_example_length_loss * real_example)
  if factor is not None:
    length_loss = length_loss / factor
  num_examples = jnp.sum(real_example)
  length_correct = jnp.sum(length_correct * real_example)
  length_within_1_correct = jnp.sum(length_within_1 * real_example)
  total_loss += config.length_loss_weight * length_loss

  metrics.update(outputs.corruption_metrics or {})
  metrics.update(
      loss=total_loss,
      z_loss=total_z_loss,
      length_loss=length_loss,
      length_correct=length_correct,
      length_accuracy=length_correct / jnp.maximum(num_examples, 1.0),
      length_within_1_correct=length_within_1_correct,
      length_accuracy_within_1=length_within_1_correct / jnp.maximum(num_examples, 1.0),
      num_tokens=num_tokens,
      num_examples=num_examples,
  )
  return total_loss, metrics
