"""Re-masking between refinement passes: which predicted positions are re-filled, and with what.

After each pass the decoder reads its own argmax. A position that should change may not, if its
input already looks confident; re-masking replaces such positions by fresh fill tokens
(DecodingConfig.init: [MASK] or random ordinary tokens) so that the next pass reconsiders them.
`DecodingConfig.remask` (modes.RemaskMode) chooses the scheme: 'stutter' (a token repeating its
left neighbour) or 'low_confidence' (mask-predict's schedule over the least confident
predictions). Shapes: n = rows, t = positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp

from padir_t5x.core import layout
from padir_t5x.core.modes import RemaskMode

if TYPE_CHECKING:
  from padir_t5x.decoders.decoding_config import DecodingConfig

Array = jnp.ndarray


def remask_stutter(
    rng: Array,
    predictions: Array,
    content: Array,
    config: DecodingConfig,
    table_length: int | None = None,
) -> Array:
  """`predictions` [n, t] with stuttering positions re-filled (MASK or fresh random tokens).

  Stutter is `config.stutter_unit`'s (layout.stutter_mask): repeated pieces or whole words.
  """
  stutter = layout.stutter_mask(predictions, content, config.stutter_word_starts())
  return jnp.where(stutter, config.fill(rng, predictions.shape, table_length), predictions)


def low_confidence_count(num_content: Array, step: Array, max_passes: int) -> Array:
  """Positions mask-predict re-masks after pass `step` (0-based) of T = max_passes, per row.

  floor(N * (T - step - 1) / T) of a row's N content positions (computed exactly in integers):
  the first pass's input is all fill, pass i's holds floor(N * (T - i) / T) fill tokens, the
  last pass's floor(N / T), and nothing is re-masked after it.

  Args:
    num_content: [n] int, N per row.
    step: [] int, the 0-based index of the pass that just ran.
    max_passes: T.

  Returns:
    [n] int32.
  """
  remaining = jnp.maximum(max_passes - 1 - step, 0)
  return (num_content.astype(jnp.int32) * remaining // max_passes).astype(jnp.int32)


def remask_low_confidence(
    rng: Array,
    predictions: Array,
    confidence: Array,
    content: Array,
    step: Array,
    config: DecodingConfig,
    table_length: int | None = None,
) -> Array:
  """`predictions` [n, t] with each row's least confident content positions re-filled.

  Mask-predict's linear schedule (`low_confidence_count`). The confidence is that of the
  current prediction, i.e. the log-prob this pass gave it: unlike mask-predict, which only
  re-predicts masked positions and so keeps each token's probability from the pass that last
  predicted it, every PaDIR pass re-predicts every position, so the latest log-prob is the one
  of the token that is kept. Ties go to the leftmost position.

  Args:
    rng: PRNG key of the fill.
    predictions: [n, t] int32 framed predictions.
    confidence: [n, t] float log-prob of each prediction.
    content: [n, t] bool content positions.
    step: [] int, the 0-based index of the pass that produced `predictions`.
    config: DecodingConfig (max_passes, the fill).
    table_length: see DecodingConfig.fill.

  Returns:
    [n, t] int32 next pass's input.
  """
  count = low_confidence_count(jnp.sum(content, axis=-1), step, config.max_passes)  # [n]
  key = jnp.where(content, confidence.astype(jnp.float32), jnp.inf)  # [n, t]
  order = jnp.argsort(key, axis=-1, stable=True)  # [n, t] positions, least confident first
  rank = jnp.argsort(order, axis=-1, stable=True)  # [n, t] each position's rank
  remask = content & (rank < count[:, None])  # [n, t]
  return jnp.where(remask, config.fill(rng, predictions.shape, table_length), predictions)


def next_pass_inputs(
    rng: Array,
    predictions: Array,
    content: Array,
    config: DecodingConfig,
    table_length: int | None = None,
    confidence: Array | None = None,
    step: Array | None = None,
) -> Array:
  """[n, t] int32 next pass's input from this pass's framed predictions, by `config.remask`.

  'low_confidence' also needs `confidence` [n, t] (the predictions' log-probs) and `step` [].
  """
  if config.remask is RemaskMode.STUTTER:
    return remask_stutter(rng, predictions, content, config, table_length)
  if config.remask is RemaskMode.LOW_CONFIDENCE:
    return remask_low_confidence(rng, predictions, confidence, content, step, config, table_length)
  return predictions
