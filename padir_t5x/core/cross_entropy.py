"""The cross-entropies of PaDIR's training loss: per token (every stage) and per example (length).

No t5x import: `token_cross_entropy` mirrors t5x.losses.compute_weighted_cross_entropy (and
t5x.losses.cross_entropy_with_logits for the z-loss), so the numbers match a t5x model's;
`resolve_loss_normalizing_factor` turns t5x's normalising factors (a number or a special string)
into a divisor. padir_t5x/core/losses.py sums them over the stages into the multi-stage loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from padir_t5x.core import layout

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
