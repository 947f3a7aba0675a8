"""Re-masking between refinement passes: which predicted positions are re-filled, and with what.

After each pass the decoder reads its own argmax. A position that should change may not, if its
input already looks confident; re-masking replaces such positions by fresh fill tokens
(DecodingConfig.init: [MASK] or random ordinary tokens) so that the next pass reconsiders them.
`DecodingConfig.remask` (modes.RemaskMode) chooses the scheme. Shapes: n = rows, t = positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax.numpy as jnp

from padir_t5x import layout
from padir_t5x.modes import RemaskMode

if TYPE_CHECKING:
  from padir_t5x.decoding import DecodingConfig

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


def next_pass_inputs(
    rng: Array,
    predictions: Array,
    content: Array,
    config: DecodingConfig,
    table_length: int | None = None,
) -> Array:
  """[n, t] int32 next pass's input from this pass's framed predictions, by `config.remask`."""
  if config.remask is RemaskMode.STUTTER:
    return remask_stutter(rng, predictions, content, config, table_length)
  return predictions
