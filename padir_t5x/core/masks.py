"""Attention masks of the PaDIR network, from token and segment arrays (flax's mask helpers).

Every mask is bool [batch, 1, len_q, len_kv] (True: may attend; the 1 broadcasts over heads).
flax's `nn.make_attention_mask` defaults to float32 masks, 4x the memory of bool ones. PAD is 0.
"""

from __future__ import annotations

import functools

from flax import linen as nn
import jax.numpy as jnp

Array = jnp.ndarray

# Positions where both the query and the key are valid.
make_attention_mask = functools.partial(
    nn.make_attention_mask, pairwise_fn=jnp.logical_and, dtype=jnp.bool_
)
combine_masks = functools.partial(nn.combine_masks, dtype=jnp.bool_)


def same_segment_mask(query_segment_ids: Array, key_segment_ids: Array) -> Array:
  """Packed examples: a query attends only to keys of its own segment."""
  return nn.make_attention_mask(query_segment_ids, key_segment_ids, jnp.equal, dtype=jnp.bool_)


def encoder_mask(encoder_input_tokens: Array, encoder_segment_ids: Array | None = None) -> Array:
  """Bidirectional encoder self-attention over the non-PAD tokens (within segments)."""
  valid = encoder_input_tokens > 0
  segments = None
  if encoder_segment_ids is not None:
    segments = same_segment_mask(encoder_segment_ids, encoder_segment_ids)
  return combine_masks(make_attention_mask(valid, valid), segments)


def cross_attention_mask(valid_target: Array, encoder_input_tokens: Array) -> Array:
  """Decoder-to-source mask: [n, 1, t, s] from valid_target bool [n, t] and sources [n, s].

  With the n decoder rows grouped over b < n sources (the c = n / b hypotheses or beams of each
  source, layers.MultiHeadAttention) it is [b, 1, 1, s]: source padding only. Queries at PAD
  target positions then attend to the source too, which changes only outputs no one reads.
  """
  if valid_target.shape[0] != encoder_input_tokens.shape[0]:
    return (encoder_input_tokens > 0)[:, None, None, :]
  return make_attention_mask(valid_target, encoder_input_tokens > 0)


def padir_decoder_masks(
    encoder_input_tokens: Array, decoder_target_tokens: Array
) -> tuple[Array, Array]:
  """(self mask: bidirectional over the target's non-PAD positions, cross mask to the source)."""
  valid_target = decoder_target_tokens > 0
  self_mask = make_attention_mask(valid_target, valid_target)
  return self_mask, cross_attention_mask(valid_target, encoder_input_tokens)


def autoregressive_decoder_masks(
    encoder_input_tokens: Array,
    decoder_target_tokens: Array,
    encoder_segment_ids: Array | None = None,
    decoder_segment_ids: Array | None = None,
    decode: bool = False,
) -> tuple[Array | None, Array]:
  """(causal + padding (+ segment) self mask, cross mask), as t5x's Transformer.decode.

  With `decode` (one cached step) the self mask is None: the cache enforces causality, and
  every decoded position is a query of the cross mask. Without segment ids the decoder rows may
  be grouped per source (`cross_attention_mask`).
  """
  if decode:
    if encoder_segment_ids is not None:
      raise ValueError("packing is not used while decoding, but encoder_segment_ids was given")
    return None, cross_attention_mask(
        jnp.ones_like(decoder_target_tokens) > 0, encoder_input_tokens
    )
  valid_target = decoder_target_tokens > 0
  self_mask = combine_masks(
      nn.make_causal_mask(decoder_target_tokens, dtype=jnp.bool_),
      make_attention_mask(valid_target, valid_target),
      None
      if decoder_segment_ids is None
      else same_segment_mask(decoder_segment_ids, decoder_segment_ids),
  )
  if encoder_segment_ids is None:
    # Rows may be grouped per source here too (draft-and-verify's teacher-forced verify pass).
    return self_mask, cross_attention_mask(valid_target, encoder_input_tokens)
  cross_mask = combine_masks(
      make_attention_mask(valid_target, encoder_input_tokens > 0),
      same_segment_mask(decoder_segment_ids, encoder_segment_ids),
  )
  return self_mask, cross_mask
