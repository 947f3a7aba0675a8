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


# ------------------------------------------------------------------------------------------------
# Length predictors that do not classify the absolute length (network.TransformerConfig's
# length_target='offset') still hand everything downstream logits over absolute lengths; the
# lengths they cannot predict get this logit. It is finite, so that a row whose every length is
# out of reach (a source so long that source - K > L) gives a uniform softmax, not NaN, and
# top_k stays well-defined; and it is so low that such a length never wins against a reachable one.
DISALLOWED_LENGTH_LOGIT = -1e9


def offset_length_logits(offset_logits: Array, source_lengths: Array, num_lengths: int) -> Array:
  """Logits over offsets -K..K turned into logits over the absolute lengths 1..num_lengths.

  Length l gets the logit of offset l - source_length when that offset lies in [-K, K], and
  DISALLOWED_LENGTH_LOGIT otherwise; so the softmax over lengths is the softmax over the offsets
  that give a length in 1..num_lengths.

  Args:
    offset_logits: [b, 2K + 1] float, class k = offset k - K.
    source_lengths: [b] int (non-PAD encoder tokens).
    num_lengths: L (max_target_length).

  Returns:
    [b, L] float32, class j = length j + 1 (as every length classifier).
  """
  num_offsets = offset_logits.shape[-1]
  if num_offsets % 2 != 1:
    raise ValueError(f"offset logits need 2K + 1 classes, got {num_offsets}")
  k = num_offsets // 2
  lengths = jnp.arange(1, num_lengths + 1, dtype=jnp.int32)[None, :]
  offsets = lengths - source_lengths.astype(jnp.int32)[:, None]  # [b, L]
  inside = jnp.abs(offsets) <= k
  gathered = jnp.take_along_axis(
      offset_logits.astype(jnp.float32), jnp.clip(offsets + k, 0, num_offsets - 1), axis=-1
  )
  return jnp.where(inside, gathered, DISALLOWED_LENGTH_LOGIT)


def nearest_allowed_lengths(length_logits: Array, lengths: Array) -> Array:
  """Each length moved to the nearest one the logits allow (logit above DISALLOWED / 2).

  The training target of a predictor with a limited reach (the offset predictor): a target
  outside its window is trained towards the window's nearest edge (as fairseq clamps its length
  offsets), instead of costing ~1e9. A predictor that allows every length (the absolute
  classifier) leaves every length unchanged; so does a row that allows none, and length 0.

  Args:
    length_logits: [b, L] float, class j = length j + 1.
    lengths: [b] int.

  Returns:
    [b] int32.
  """
  allowed = length_logits > DISALLOWED_LENGTH_LOGIT / 2  # [b, L]
  candidates = jnp.arange(1, length_logits.shape[-1] + 1, dtype=jnp.int32)[None, :]
  lengths = lengths.astype(jnp.int32)
  distance = jnp.where(allowed, jnp.abs(candidates - lengths[:, None]), jnp.iinfo(jnp.int32).max)
  nearest = jnp.take_along_axis(candidates, jnp.argmin(distance, axis=-1)[:, None], axis=-1)[:, 0]
  keep = (lengths <= 0) | ~jnp.any(allowed, axis=-1)
  clipped = jnp.clip(lengths, 1, length_logits.shape[-1])  # beyond the table: as length_classes
  keep = keep | jnp.take_along_axis(allowed, clipped[:, None] - 1, axis=-1)[:, 0]
  return jnp.where(keep, lengths, nearest)


def length_hits(length_logits: Array, lengths: Array) -> tuple[Array, Array]:
  """Whether the argmax length is right: (exact [b] bool, within one [b] bool).

  Lengths are compared as classes (`length_classes`: a length beyond the table counts as its
  last class), as the length loss does.

  Args:
    length_logits: [b, L] float.
    lengths: [b] int, the true lengths (EOS included).
  """
  predicted = jnp.argmax(length_logits, axis=-1)
  error = jnp.abs(predicted - length_classes(lengths, length_logits.shape[-1]))
  return error == 0, error <= 1


def length_accuracy(length_logits: Array, target_tokens: Array) -> dict[str, Array]:
  """Exact and within-1 accuracy of the argmax length over the rows with a nonempty target.

  For evaluation (e.g. on dev, with the logits of `network.encode_and_predict_length`).

  Args:
    length_logits: [b, L] float.
    target_tokens: [b, t] int targets (EOS included, PAD 0); all-PAD rows are left out.

  Returns:
    {'length_accuracy', 'length_accuracy_within_1': float32 scalars (0 with no row),
     'num_examples': float32 scalar}.
  """
  lengths = sequence_lengths(target_tokens)
  real = (lengths > 0).astype(jnp.float32)
  exact, within_1 = length_hits(length_logits, lengths)
  count = jnp.sum(real)
  denominator = jnp.maximum(count, 1.0)
  return {
      "length_accuracy": jnp.sum(exact * real) / denominator,
      "length_accuracy_within_1": jnp.sum(within_1 * real) / denominator,
      "num_examples": count,
  }
