"""The target-row layout, and everything derived from it: one home for training and decoding.

A PaDIR target row of length L (EOS included) in a table of t positions is

    position:  0 .. L-2      L-1    L .. t-1
    token:     content       EOS    PAD

The training targets have it (seqio appends EOS; PAD is 0), every decoder input has it (the
corruption and the decoding passes change only the content), and the length classifier predicts
L: its class j stands for length j + 1. Pure functions over arrays; no network, no t5x.

Shapes: n = rows, t = positions, L = length classes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from padir_t5x import EOS_ID
from padir_t5x import PAD_ID
from padir_t5x.modes import FillMode

Array = jnp.ndarray


def sequence_lengths(tokens: Array) -> Array:
  """[n] int32 number of non-PAD tokens of each [n, t] row (EOS included)."""
  return jnp.sum(tokens != PAD_ID, axis=-1).astype(jnp.int32)


def length_layout(lengths: Array, max_decode_length: int) -> tuple[Array, Array, Array]:
  """The masks of rows of the given lengths.

  Args:
    lengths: [n] int, EOS included.
    max_decode_length: t.

  Returns:
    (content [n, t] bool: positions < length - 1, eos [n, t] bool: position length - 1,
     length_mask [n, t] int32: positions < length).
  """
  positions = jnp.arange(max_decode_length)[None, :]
  lengths = lengths[:, None]
  content = positions < lengths - 1
  eos = positions == lengths - 1
  return content, eos, (positions < lengths).astype(jnp.int32)


def frame_tokens(content_tokens: Array, content: Array, eos: Array) -> Array:
  """[n, t] int32: content_tokens at content positions, EOS at length-1, PAD after."""
  return jnp.where(content, content_tokens, jnp.where(eos, EOS_ID, PAD_ID)).astype(jnp.int32)


def stutter_mask(tokens: Array, content: Array) -> Array:
  """[n, t] bool: content positions i > 0 whose token equals that of content position i - 1."""
  previous = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  previous_content = jnp.pad(content[:, :-1], ((0, 0), (1, 0)), constant_values=False)
  return content & previous_content & (tokens == previous)


def fill_tokens(
    rng: Array,
    shape: tuple[int, ...],
    mode: FillMode,
    *,
    vocab_low: int,
    vocab_high: int | None,
    mask_id: int,
    dtype=jnp.int32,
) -> Array:
  """Tokens for positions that hold no prediction: uniform ordinary ids, or all [MASK].

  The one fill of the corruption, the first decoding pass, stutter re-masking and score_batch's
  fixed decoder input, so that training and inference fill alike.

  Args:
    rng: PRNG key (unused for FillMode.MASK).
    shape: output shape.
    mode: FillMode.RANDOM (uniform over [vocab_low, vocab_high)) or FillMode.MASK (mask_id).
    vocab_low / vocab_high: the ordinary ids (vocab_high: the real vocabulary size, which the
      network's embedding table may exceed).
    mask_id: the [MASK] id.
    dtype: integer dtype of the result.

  Returns:
    `shape` array of `dtype`.
  """
  if FillMode(mode) is FillMode.MASK:
    return jnp.full(shape, mask_id, dtype)
  if vocab_high is None:
    raise ValueError("random fill needs vocab_high, the real vocabulary size")
  return jax.random.randint(rng, shape, vocab_low, vocab_high, dtype=dtype)


def length_classes(lengths: Array, num_classes: int) -> Array:
  """The length classifier's class of each length (class j = length j + 1), clipped to range.

  Length 0 (an all-PAD row) maps to class 0, lengths beyond the classifier to its last class.
  """
  return jnp.clip(lengths.astype(jnp.int32) - 1, 0, num_classes - 1)


def length_log_probs(
    length_logits: Array, max_length: int | None = None, min_length: int = 1
) -> Array:
  """[..., L] float32 log-probs over the lengths, renormalised over min_length..max_length.

  With max_length (the decode table size), classes whose length does not fit are masked out
  before the softmax, and so are lengths below min_length; without either every class counts
  (the training loss, score_batch).
  """
  logits = length_logits.astype(jnp.float32)
  if max_length is not None or min_length > 1:
    lengths = jnp.arange(logits.shape[-1]) + 1
    allowed = lengths >= min_length
    if max_length is not None:
      allowed = allowed & (lengths <= max_length)
    logits = jnp.where(allowed, logits, -jnp.inf)
  return jax.nn.log_softmax(logits, axis=-1)


def lookup_length_log_probs(log_probs: Array, lengths: Array) -> Array:
  """The log-prob of each given length: log_probs [b, L], lengths [b, ...] int -> [b, ...]."""
  classes = length_classes(lengths, log_probs.shape[-1])
  flat = classes.reshape(classes.shape[0], -1)
  return jnp.take_along_axis(log_probs, flat, axis=-1).reshape(classes.shape)
