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
import functools
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
from padir_t5x.modes import LossPositions
from padir_t5x.modes import UnmaskingRateMode

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

  The defaults are the paper's setup (one fixed unmasking rate, random-token corruption, loss on
  every target position) and reproduce the loss of the code before the training options below
  existed, number for number; each option is one field (a gin macro in gin/models/padir_base.gin),
  and the optax loop (training.padir_loss_fn) and PadirModel.loss_fn both run it through
  `multi_stage_forward` and `loss_from_outputs`.

  Attributes:
    num_stages: decoder passes trained per step (stage 1 on corrupted targets, then on its own
      argmax).
    unmasking_rate: fraction of (non-EOS) target tokens left correct in the stage-1 input, when
      unmasking_rate_mode is 'fixed'. 0.25 was chosen by a dev sweep over {0, 0.25, 0.5, 0.75}
      (README, "Defaults chosen by a dev sweep").
    corruption: FillMode (or its name) of the corrupted positions: 'random' (uniform tokens
      from [vocab_low, vocab_high)) or 'mask'. It stands for the mix (0, 1, 0) or (0, 0, 1) when
      corruption_mix is None (`replacement_mix`).
    vocab_high: real vocabulary size, exclusive bound of random tokens. None until known:
      PadirModel fills it in from its output vocabulary; the loss raises if random corruption
      meets None.
    length_loss_weight: weight of the length cross-entropy (per example) relative to the token
      cross-entropy (per token). 1.0 was chosen by the same dev sweep: with 0.1 the quickstart
      model's length classifier was 22% right on its last training batch (38% with 1.0) and its
      dev BLEU 11 points lower (66.7 against 78.0, unmasking rate 0).
    label_smoothing, z_loss: as in `token_cross_entropy`.
    loss_normalizing_factor: divides the whole loss (tokens and length alike, so it never changes
      their relative weight); see `resolve_loss_normalizing_factor`. Resolved from the target
      weights (decoder_loss_weights, else targets > 0) whatever `loss_positions` is.
    vocab_low: inclusive bound of random tokens (default: first non-special id).
    mask_id: the [MASK] id, used by corruption='mask' and a mix with a mask share.
    unmasking_rate_mode: UnmaskingRateMode (or its name), how each example's stage-1 unmasking
      rate is chosen: 'fixed' (unmasking_rate), 'uniform' (drawn per example from
      U(unmasking_rate_range), from the corruption rng; CMLM, SUNDAE and PaDIR's released code
      use U(0, 1)) or 'glancing' (see the glancing_* fields).
    unmasking_rate_range: (low, high), 0 <= low <= high <= 1, for 'uniform'; unused otherwise.
    corruption_mix: None, or (keep, random, mask) probabilities (>= 0, summing to 1) of what a
      position selected for corruption receives: its correct token, a uniform random token, or
      [MASK] (BERT: (0.1, 0.1, 0.8)). When given it overrides `corruption` for training (set
      DECODING_INIT to the fill the decoder should start from). The positions that keep their
      token still count as corrupted (loss_positions='corrupted' trains on them, as BERT).
    loss_positions: LossPositions (or its name). 'all': every target position, as the paper.
      'corrupted': stage 1 only on the positions selected for corruption (the mix's 'keep' share
      and random tokens that happen to be right included) plus EOS; a later stage, whose input
      is the previous stage's argmax, only on the positions where that input differs from the
      target, plus EOS. Either way multiplied by batch['decoder_loss_weights'] when present.
      Accuracies stay over every target position.
    glancing_ratio: GLAT's lambda, for unmasking_rate_mode='glancing' (Qian et al. 2021; their
      released code anneals it from 0.5 to 0.3 over 300k updates). A no-gradient first decoder
      pass predicts from a fully corrupted input (the configured fill/mix), with dropout when
      the training pass has it and the same dropout key as stage 1 (GLAT reseeds both passes
      alike); stage 1's input then reveals round(ratio * its wrong tokens) gold tokens at
      random positions of the row and corrupts the rest (`stage1_input`). Costs one extra
      decoder forward per step. GLAT trains on the unrevealed positions only: add
      loss_positions='corrupted'.
    glancing_ratio_end: None for a constant ratio, else the ratio reached after
      glancing_anneal_steps optimizer steps (linear from glancing_ratio). Annealing needs the
      step, which the optax loop supplies (training.make_train_step sets
      batch[TRAIN_STEP_FEATURE]); T5X's loss_fn gets none, so under T5X the ratio is fixed and
      an annealing config raises.
    glancing_anneal_steps: length of the anneal; > 0 exactly when glancing_ratio_end is given.
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
  unmasking_rate_mode: UnmaskingRateMode = UnmaskingRateMode.FIXED
  unmasking_rate_range: tuple[float, float] = (0.0, 1.0)
  corruption_mix: tuple[float, float, float] | None = None
  loss_positions: LossPositions = LossPositions.ALL
  glancing_ratio: float = 0.5
  glancing_ratio_end: float | None = None
  glancing_anneal_steps: int = 0

  def __post_init__(self):
    if self.num_stages < 1:
      raise ValueError(f"num_stages must be >= 1, got {self.num_stages}")
    if not 0.0 <= self.unmasking_rate <= 1.0:
      raise ValueError(f"unmasking_rate must lie in [0, 1], got {self.unmasking_rate}")
    # Frozen: store members and tuples, so a config built from names or lists (gin, command
    # lines) equals and hashes like one built from members and tuples.
    object.__setattr__(self, "corruption", FillMode.coerce(self.corruption, "corruption"))
    object.__setattr__(
        self,
        "unmasking_rate_mode",
        UnmaskingRateMode.coerce(self.unmasking_rate_mode, "unmasking_rate_mode"),
    )
    object.__setattr__(
        self, "loss_positions", LossPositions.coerce(self.loss_positions, "loss_positions")
    )
    object.__setattr__(self, "unmasking_rate_range", _check_rate_range(self.unmasking_rate_range))
    if self.corruption_mix is not None:
      object.__setattr__(
          self, "corruption_mix", corruption.check_mix(self.corruption_mix, "corruption_mix")
      )
    if self.replacement_mix[1] > 0 and self.vocab_high is not None:
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
    if not 0.0 <= self.glancing_ratio <= 1.0:
      raise ValueError(f"glancing_ratio must lie in [0, 1], got {self.glancing_ratio}")
    if self.glancing_ratio_end is not None and not 0.0 <= self.glancing_ratio_end <= 1.0:
      raise ValueError(f"glancing_ratio_end must lie in [0, 1], got {self.glancing_ratio_end}")
    if self.glancing_anneal_steps < 0:
      raise ValueError(f"glancing_anneal_steps must be >= 0, got {self.glancing_anneal_steps}")
    if (self.glancing_ratio_end is None) != (self.glancing_anneal_steps == 0):
      raise ValueError(
          "glancing_ratio_end and glancing_anneal_steps go together: give both (anneal from "
          "glancing_ratio to glancing_ratio_end over glancing_anneal_steps > 0 steps) or neither "
          f"(constant glancing_ratio); got glancing_ratio_end={self.glancing_ratio_end}, "
          f"glancing_anneal_steps={self.glancing_anneal_steps}"
      )

  @property
  def replacement_mix(self) -> corruption.Mix:
    """(keep, random, mask) of a corrupted position: corruption_mix, else `corruption`'s."""
    if self.corruption_mix is not None:
      return self.corruption_mix
    return corruption.fill_mix(self.corruption)

  @property
  def glancing_anneals(self) -> bool:
    """Whether the glancing ratio depends on the training step."""
    return self.glancing_ratio_end is not None


def _check_rate_range(value) -> tuple[float, float]:
  """unmasking_rate_range as (low, high) floats; ValueError naming the field otherwise."""
  try:
    low, high = (float(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f"unmasking_rate_range must be (low, high), got {value!r}") from None
  if not 0.0 <= low <= high <= 1.0:
    raise ValueError(f"unmasking_rate_range must satisfy 0 <= low <= high <= 1, got {value!r}")
  return low, high


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
    module: a flax module with `encode`, `predict_length` and `decode` (padir_t5x.network).
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
