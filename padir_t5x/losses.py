"""PaDIR training losses: multi-stage token cross-entropy plus target-length cross-entropy.

PaDIR (Li et al. 2024, Sec. 3 and App. L) trains the decoder to refine its own outputs. Stage 1
reads the corrupted target (`padir_t5x.corruption`); stage s+1 reads the argmax of stage s, as at
inference, and every stage is trained with cross-entropy against the true target. The encoder
runs once and also feeds a length classifier, trained with cross-entropy on the target length.

No t5x import: `token_cross_entropy` mirrors t5x.losses.compute_weighted_cross_entropy (and
t5x.losses.cross_entropy_with_logits for the z-loss), so the numbers match a t5x model's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from padir_t5x import EOS_ID
from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x import MASK_ID
from padir_t5x import PAD_ID
from padir_t5x import corruption
from padir_t5x import layout
from padir_t5x import network
from padir_t5x.modes import FillMode

Array = jnp.ndarray
LossNormalizingFactor = float | int | str | None

# String normalising factors (t5x gin configs pass them as strings). Values: how to compute it.
REAL_TARGET_TOKENS = "NUM_REAL_TARGET_TOKENS"  # sum of the loss weights
# batch * target length, padding included: t5x's NUM_TOTAL_TARGET_TOKENS, and an alias.
ALL_DECODER_TOKENS = ("NUMBER_OF_ALL_DECODER_TOKENS", "NUM_TOTAL_TARGET_TOKENS")
SPECIAL_LOSS_NORMALIZING_FACTORS = (REAL_TARGET_TOKENS, *ALL_DECODER_TOKENS)


def resolve_loss_normalizing_factor(
    loss_normalizing_factor: LossNormalizingFactor, weights: Array
) -> Array | float | None:
  """Turns a number, a special string or None into the divisor (None: do not divide).

  Args:
    loss_normalizing_factor: None, a positive number, 'NUM_REAL_TARGET_TOKENS' (sum of
      `weights`) or 'NUMBER_OF_ALL_DECODER_TOKENS' / 'NUM_TOTAL_TARGET_TOKENS' (batch * length,
      padding included, as t5x's NUM_TOTAL_TARGET_TOKENS).
    weights: [batch, length] loss weights.
  """
  if loss_normalizing_factor is None:
    return None
  if isinstance(loss_normalizing_factor, str):
    name = loss_normalizing_factor.upper()
    if name == REAL_TARGET_TOKENS:
      # Guard an all-padding batch (eval padding): dividing 0 by 0 would give NaN.
      return jnp.maximum(jnp.sum(weights), 1e-8)
    if name in ALL_DECODER_TOKENS:
      return float(weights.shape[0] * weights.shape[1])
    raise ValueError(
        f"unknown loss_normalizing_factor {loss_normalizing_factor!r}; expected "
        f"None, a number or one of {SPECIAL_LOSS_NORMALIZING_FACTORS}"
    )
  # Arrays (already resolved, possibly traced) pass through; only plain numbers are checked.
  if isinstance(loss_normalizing_factor, (int, float)) and loss_normalizing_factor <= 0:
    raise ValueError(f"loss_normalizing_factor must be positive, got {loss_normalizing_factor}")
  return loss_normalizing_factor


def token_cross_entropy(
    logits: Array,
    targets: Array,
    weights: Array | None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    loss_normalizing_factor: LossNormalizingFactor = None,
) -> tuple[Array, Array, Array]:
  """Weighted, label-smoothed cross-entropy with z-loss, summed over positions.

  Mirrors t5x.losses.compute_weighted_cross_entropy and cross_entropy_with_logits: the smoothed
  target puts 1 - label_smoothing on the true class and label_smoothing / (V - 1) on each other
  class, and the entropy of that target is subtracted so that predicting it exactly costs zero.
  The z-loss z_loss * log(Z)^2 (Z the softmax normaliser) keeps logits from drifting; like t5x,
  it is included in `loss` and also returned alone.

  Args:
    logits: [batch, length, V] float.
    targets: [batch, length] int.
    weights: [batch, length] float loss weights, or None for all ones.
    label_smoothing: in [0, 1).
    z_loss: z-loss coefficient.
    loss_normalizing_factor: see `resolve_loss_normalizing_factor`; None sums (t5x default).

  Returns:
    (loss, z_loss_term, weight_sum): scalars; loss and z_loss_term are divided by the
    normalizing factor when there is one, weight_sum never is.
  """
  if logits.ndim != targets.ndim + 1 or logits.shape[:-1] != targets.shape:
    raise ValueError(f"logits {logits.shape} do not match targets {targets.shape}")
  if weights is None:
    weights = jnp.ones(targets.shape, jnp.float32)
  vocab_size = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low_confidence = (1.0 - confidence) / max(vocab_size - 1, 1)
  # Entropy of the smoothed target (1e-20 avoids log 0 when label_smoothing is 0).
  normalizing_constant = -(
      confidence * jnp.log(confidence)
      + (vocab_size - 1) * low_confidence * jnp.log(low_confidence + 1e-20)
  )
  soft_targets = jax.nn.one_hot(targets, vocab_size, dtype=jnp.float32)
  soft_targets = soft_targets * (confidence - low_confidence) + low_confidence

  logits = logits.astype(jnp.float32)
  log_z = jax.scipy.special.logsumexp(logits, axis=-1)
  log_softmax = logits - log_z[..., None]
  z_term = z_loss * jnp.square(log_z)
  per_token = -jnp.sum(soft_targets * log_softmax, axis=-1) - normalizing_constant + z_term

  weights = weights.astype(jnp.float32)
  loss = jnp.sum(per_token * weights)
  z_loss_term = jnp.sum(z_term * weights)
  factor = resolve_loss_normalizing_factor(loss_normalizing_factor, weights)
  if factor is not None:
    loss, z_loss_term = loss / factor, z_loss_term / factor
  return loss, z_loss_term, jnp.sum(weights)


def length_cross_entropy(length_logits: Array, target_lengths: Array) -> tuple[Array, Array]:
  """Per-example cross-entropy of the length classifier.

  Class c stands for length c + 1 (no target is empty: it has at least EOS); lengths beyond
  the classifier's range are clipped to the last class, length 0 to the first.

  Args:
    length_logits: [batch, L] float.
    target_lengths: [batch] int, EOS included.

  Returns:
    (loss [batch] float, correct [batch] bool: argmax is the target class).
  """
  log_probs = layout.length_log_probs(length_logits)
  loss = -layout.lookup_length_log_probs(log_probs, target_lengths)
  correct = jnp.argmax(length_logits, axis=-1) == layout.length_classes(
      target_lengths, length_logits.shape[-1]
  )
  return loss, correct


@dataclasses.dataclass(frozen=True)
class PadirLossConfig:
  """How PaDIR is trained: stages, corruption and loss weights.

  Attributes:
    num_stages: decoder passes trained per step (stage 1 on corrupted targets, then on its own
      argmax).
    unmasking_rate: fraction of (non-EOS) target tokens left correct in the stage-1 input.
      0.25 was chosen by a dev sweep over {0, 0.25, 0.5, 0.75} (README, "Defaults chosen by a
      dev sweep").
    corruption: FillMode (or its name) of the corrupted positions: 'random' (uniform tokens
      from [vocab_low, vocab_high)) or 'mask'.
    vocab_high: real vocabulary size, exclusive bound of random tokens. None until known:
      PadirModel fills it in from its output vocabulary; the loss raises if 'random' corruption
      meets None.
    length_loss_weight: weight of the length cross-entropy (per example) relative to the token
      cross-entropy (per token). 1.0 was chosen by the same dev sweep: with 0.1 the quickstart
      model's length classifier was 22% right on its last training batch (38% with 1.0) and its
      dev BLEU 11 points lower (66.7 against 78.0, unmasking rate 0).
    label_smoothing, z_loss: as in `token_cross_entropy`.
    loss_normalizing_factor: divides the whole loss (tokens and length alike, so it never changes
      their relative weight); see `resolve_loss_normalizing_factor`.
    vocab_low: inclusive bound of random tokens (default: first non-special id).
    mask_id: the [MASK] id for corruption='mask'.
  """

  num_stages: int = 2
  unmasking_rate: float = 0.25
  corruption: FillMode = FillMode.RANDOM
  vocab_high: int | None = None
  length_loss_weight: float = 1.0
  label_smoothing: float = 0.0
  z_loss: float = 1e-4
  loss_normalizing_factor: LossNormalizingFactor = None
  vocab_low: int = FIRST_ORDINARY_ID
  mask_id: int = MASK_ID

  def __post_init__(self):
    if self.num_stages < 1:
      raise ValueError(f"num_stages must be >= 1, got {self.num_stages}")
    if not 0.0 <= self.unmasking_rate <= 1.0:
      raise ValueError(f"unmasking_rate must lie in [0, 1], got {self.unmasking_rate}")
    # Frozen: store the member, so a config built from the name equals one built from it.
    object.__setattr__(self, "corruption", FillMode.coerce(self.corruption, "corruption"))
    if self.corruption is FillMode.RANDOM and self.vocab_high is not None:
      if not 0 <= self.vocab_low < self.vocab_high:
        raise ValueError(f"random tokens range [{self.vocab_low}, {self.vocab_high}) is empty")
    if self.length_loss_weight < 0:
      raise ValueError(f"length_loss_weight must be >= 0, got {self.length_loss_weight}")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
    if self.z_loss < 0:
      raise ValueError(f"z_loss must be >= 0, got {self.z_loss}")
    if isinstance(self.loss_normalizing_factor, str):
      if self.loss_normalizing_factor.upper() not in SPECIAL_LOSS_NORMALIZING_FACTORS:
        raise ValueError(f"unknown loss_normalizing_factor {self.loss_normalizing_factor!r}")
    elif self.loss_normalizing_factor is not None and self.loss_normalizing_factor <= 0:
      raise ValueError(
          f"loss_normalizing_factor must be positive, got " f"{self.loss_normalizing_factor}"
      )


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
  """

  stage_inputs: tuple[Array, ...]
  stage_logits: tuple[Array, ...]
  length_logits: Array


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
  """
  check_batch(batch)
  inputs = jnp.asarray(batch["encoder_input_tokens"])
  targets = jnp.asarray(batch["decoder_target_tokens"])
  rngs = split_loss_rngs(rng, config.num_stages)
  variables = {"params": params}
  encoded, length_logits = network.encode_and_predict_length(
      module, params, inputs, enable_dropout=enable_dropout, dropout_rng=rngs.encoder_dropout
  )

  decoder_input = corruption.corrupt_targets(
      rngs.corruption,
      targets,
      config.unmasking_rate,
      vocab_high=config.vocab_high,
      vocab_low=config.vocab_low,
      mask_id=config.mask_id if config.corruption is FillMode.MASK else None,
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
  return StageOutputs(tuple(stage_inputs), tuple(stage_logits), length_logits)


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
    stage{s}_loss = `token_cross_entropy` of stage s on every target position (weights:
      batch['decoder_loss_weights'] if present, else targets > 0), z-loss included;
    length_loss = sum over real examples (targets not all PAD) of the length cross-entropy;
  all divided by the resolved `config.loss_normalizing_factor` when there is one. Stage losses
  are summed, not averaged: each stage is a full training signal (the paper trains every stage
  with cross-entropy), and averaging would shrink the gradient per stage as stages are added.

  Args:
    module: a flax module with `encode`, `predict_length` and `decode` (padir_t5x.network).
    params: its 'params' collection.
    batch: 'encoder_input_tokens' [b, s], 'decoder_target_tokens' [b, t], optionally
      'decoder_loss_weights' [b, t]. No packing ('*_segment_ids' raise ValueError).
    rng: PRNG key (corruption and dropout).
    config: PadirLossConfig.
    enable_dropout: dropout on in every pass.

  Returns:
    (loss, metrics). Metrics are jnp scalars; the terms exactly as they enter the loss:
      loss, z_loss (sum of the stages' z-loss terms, already inside the stage losses),
      length_loss, stage{s}_loss (s from 1);
    ratios for this batch: length_accuracy, length_accuracy_within_1 (|argmax length - true
      length| <= 1), stage{s}_accuracy (weighted token accuracy);
    sums and counts, to average across batches as sum(correct) / sum(count):
      stage{s}_correct (sum of weights where argmax == target) over num_tokens (weight sum),
      length_correct and length_within_1_correct over num_examples (rows with a nonempty target).
    The length loss of a target length the predictor cannot give (outside the offset window,
    length_target='offset') is that of the nearest length it can (`layout.nearest_allowed_lengths`).
  """
  outputs = multi_stage_forward(module, params, batch, rng, config, enable_dropout)
  return loss_from_outputs(outputs, batch, config)


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

  metrics = {}
  total_loss = 0.0
  total_z_loss = 0.0
  num_tokens = jnp.sum(weights)
  for stage, logits in enumerate(outputs.stage_logits, start=1):
    stage_loss, stage_z_loss, _ = token_cross_entropy(
        logits,
        targets,
        weights,
        label_smoothing=config.label_smoothing,
        z_loss=config.z_loss,
        loss_normalizing_factor=factor,
    )
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights)
    metrics[f"stage{stage}_loss"] = stage_loss
    metrics[f"stage{stage}_correct"] = correct
    metrics[f"stage{stage}_accuracy"] = correct / jnp.maximum(num_tokens, 1e-8)
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
