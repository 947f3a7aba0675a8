"""Length buckets: refine only as many positions as the predicted lengths need.

A decode over t = max_decode_length positions pays attention and the FFN over the whole table at
every pass, whatever the predicted lengths. `decoding.decode_with_network` instead picks, inside
jit, the smallest bucket t' >= the longest candidate length (`lax.switch` over one statically
shaped branch per bucket: one compile per input shape covers them all) and refines t' positions.
Random fills are drawn over the whole table and cut to t' (`DecodingConfig.fill`), so the
hypotheses are those of the full table. Pure helpers, no network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Array = jnp.ndarray


def length_buckets(
    max_decode_length: int, buckets: Sequence[int], num_lengths: int, min_length: int
) -> tuple[int, ...]:
  """The usable decode lengths: the given ones below max_decode_length, then max_decode_length.

  An example decodes `num_lengths` distinct lengths >= min_length (DecodingConfig.num_lengths:
  the length beam and its offsets), so its longest candidate needs at least
  num_lengths + min_length - 1 positions: smaller buckets could never be chosen.
  """
  smallest = num_lengths + min_length - 1
  usable = sorted({int(b) for b in buckets if smallest <= b < max_decode_length})
  return tuple(usable) + (max_decode_length,)


def bucket_index(longest: Array, buckets: Sequence[int]) -> Array:
  """[] int32 index of the smallest of the sorted `buckets` that holds `longest` positions.

  The last bucket is the full table, which holds every decodable length.
  """
  index = jnp.searchsorted(jnp.asarray(buckets, jnp.int32), longest.astype(jnp.int32))
  return jnp.minimum(index, len(buckets) - 1).astype(jnp.int32)


def switch_on_bucket(
    longest: Array,
    buckets: Sequence[int],
    branch_at: Callable[[int], Callable[[Any], Any]],
    operands: Any,
) -> Any:
  """`branch_at(bucket)(operands)` for the smallest of `buckets` that holds `longest` [].

  Chosen inside jit with lax.switch: one compile covers every bucket, and at run time only the
  chosen branch executes (the passes of a short batch run over short rows). Every branch must
  return the same shapes (pad to the last bucket). One bucket: called directly, no switch.
  """
  if len(buckets) == 1:
    return branch_at(buckets[0])(operands)
  index = bucket_index(longest, buckets)  # []
  return jax.lax.switch(index, [branch_at(b) for b in buckets], operands)
