"""Length-bucketed PaDIR decoding: refine only as many positions as the predicted lengths need.

`decoding.decode_with_network` refines [b * l, t] rows with t = max_decode_length whatever the
predicted lengths, so every pass pays attention and the FFN over the whole position table. Here
the decode length is cut to the smallest bucket that holds the longest candidate length, with
the same hypotheses as the full table (for 'mask' init; random initial tokens differ because
their shape does).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from padir_t5x import decoding
from padir_t5x import network

Array = jnp.ndarray


@functools.partial(jax.jit, static_argnames=("module", "config", "max_decode_length"))
def _encode_and_longest_length(
    module,
    params,
    encoder_input_tokens: Array,
    config: decoding.DecodingConfig,
    max_decode_length: int,
):
  encoded, length_logits = network.encode_and_predict_length(module, params, encoder_input_tokens)
  lengths, _ = decoding.select_lengths(
      length_logits, config.length_beam, max_decode_length, config.min_length
  )
  return encoded, jnp.max(lengths)


def length_buckets(
    max_decode_length: int, buckets: Sequence[int], length_beam: int, min_length: int
) -> tuple[int, ...]:
  """The usable decode lengths: the given ones below max_decode_length, then max_decode_length.

  A bucket must hold `length_beam` distinct lengths >= min_length, or select_lengths could not
  fill the beam.
  """
  smallest = length_beam + min_length - 1
  usable = sorted({int(b) for b in buckets if smallest <= b < max_decode_length})
  return tuple(usable) + (max_decode_length,)


def decode_with_network_bucketed(
    module,
    params: Any,
    encoder_input_tokens: Array,
    rng: Array,
    config: decoding.DecodingConfig,
    max_decode_length: int,
    buckets: Sequence[int] = (16, 24, 32, 48, 64, 96, 128),
) -> tuple[decoding.DecodeResult, int]:
  """decode_with_network over only as many positions as the predicted lengths need.

  decode_with_network refines [b * l, t] rows with t = max_decode_length whatever the predicted
  lengths, so every pass pays attention and the FFN over the whole position table. Here a first
  jitted call encodes and reads the length beam; one host sync (a scalar: the longest candidate
  length) picks the smallest bucket t' that holds it, and the refinement runs at t' with the
  encoder output reused. One compile per (input shape, bucket). The candidate lengths are those
  of the full-length decode (select_lengths only drops lengths > t, and none exceeds t'); the
  random initial tokens differ because their shape does. Not for use under jit (t5x's
  predict_batch): the bucket is chosen on the host.

  Args:
    as decode_with_network; buckets: candidate decode lengths (those >= max_decode_length are
      ignored; max_decode_length is always the last bucket).

  Returns:
    (DecodeResult with sequences of length t', t').
  """
  encoder_input_tokens = jnp.asarray(encoder_input_tokens)
  encoded, longest = _encode_and_longest_length(
      module, params, encoder_input_tokens, config, max_decode_length
  )
  longest = int(longest)  # the one host round-trip
  usable = length_buckets(max_decode_length, buckets, config.length_beam, config.min_length)
  bucket = next(b for b in usable if b >= longest)
  return (
      decoding.decode_with_network(
          module, params, encoder_input_tokens, rng, config, bucket, encoded=encoded
      ),
      bucket,
  )
