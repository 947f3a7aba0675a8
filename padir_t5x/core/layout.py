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

import hashlib

import jax
import jax.numpy as jnp
import numpy as np

from padir_t5x import EOS_ID
from padir_t5x import PAD_ID
from padir_t5x.core.modes import FillMode

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


def stutter_mask(tokens: Array, content: Array, word_starts: Array | None = None) -> Array:
  """[n, t] bool: the content positions that stutter, i.e. repeat what precedes them.

  The one definition of stutter, for re-masking (remasking.py) and 'consecutive'
  de-duplication (dedup.py); modes.StutterUnit chooses the unit through `word_starts`:

  * None ('piece'): content positions i > 0 whose token equals that of position i - 1.
  * a [V] bool word-start table ('word'): every piece of a word that repeats the whole word
    before it (see `word_stutter_mask`), so that `▁a p p le s` is not stutter.
  """
  if word_starts is not None:
    return word_stutter_mask(tokens, content, word_starts)
  previous = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  previous_content = jnp.pad(content[:, :-1], ((0, 0), (1, 0)), constant_values=False)
  return content & previous_content & (tokens == previous)


def word_stutter_mask(tokens: Array, content: Array, word_starts: Array) -> Array:
  """[n, t] bool: the content positions of each word that repeats the whole word before it.

  A word is the pieces from one word-start piece (`word_starts[id]`, SentencePiece's '▁'
  prefix: padir_t5x.vocab.word_start_table) to the next; a row's first content piece starts a
  word whatever its id, and ids outside the table count as word starts. A word repeats its left
  neighbour when both have the same length m and every piece equals the piece m to its left:
  `▁the ▁the` and `▁ab c ▁ab c` repeat; `▁a p p le s` (a repeat inside a word) and
  `▁ab ▁ab c` (equal pieces, different words) do not. In a run of k equal words the last k - 1
  are marked, as the piece rule marks all but the first of a run of equal pieces.

  Vectorised, no loop over positions: word starts and ends by cumulative max / min, the match
  count of each word by a cumulative sum read at its two ends.

  Args:
    tokens: [n, t] int.
    content: [n, t] bool, a prefix of each row (layout.length_layout).
    word_starts: [V] bool.

  Returns:
    [n, t] bool, False outside the content.
  """
  n, t = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(t), (n, t))
  table = jnp.asarray(word_starts, bool)
  is_start = jnp.take(table, tokens, mode="fill", fill_value=True) | (positions == 0)
  start = content & is_start  # [n, t]
  # Start of the word holding each position, and the end (exclusive) of that word: the next
  # start, or the end of the content.
  word_begin = jax.lax.cummax(jnp.where(start, positions, 0), axis=1)  # [n, t]
  boundary = jnp.where(start | ~content, positions, t)  # [n, t]
  next_boundary = jnp.pad(boundary[:, 1:], ((0, 0), (0, 1)), constant_values=t)
  word_end = jax.lax.cummin(next_boundary, axis=1, reverse=True)  # [n, t]
  length = word_end - word_begin
  # The previous word ends where this one begins; its start is that of position begin - 1.
  has_previous = word_begin > 0
  previous_begin = jnp.take_along_axis(word_begin, jnp.maximum(word_begin - 1, 0), axis=1)
  previous_length = jnp.where(has_previous, word_begin - previous_begin, 0)
  # Each piece against the piece one previous-word-length to its left; count the mismatches
  # of each word from a running count read at the word's two ends.
  left = jnp.take_along_axis(tokens, jnp.maximum(positions - previous_length, 0), axis=1)
  mismatch = jnp.cumsum((content & (tokens != left)).astype(jnp.int32), axis=1)  # [n, t]
  before = jnp.pad(mismatch, ((0, 0), (1, 0)))  # [n, t + 1]: mismatches before position j
  mismatches = jnp.take_along_axis(before, word_end, axis=1) - jnp.take_along_axis(
      before, word_begin, axis=1
  )
  return content & has_previous & (length == previous_length) & (mismatches == 0)


class WordStarts:
  """A [V] bool word-start table as a hashable value (DecodingConfig.word_starts).

  DecodingConfig is a static jit argument, so each field must hash and compare by value: this
  wraps a read-only numpy copy of the table, hashed once (SHA-1 of its bytes) and compared by
  content. Built by padir_t5x.vocab.word_start_table from a SentencePiece vocabulary.
  """

  __slots__ = ("table", "_hash")

  def __init__(self, table):
    array = np.array(table)
    if array.ndim != 1 or array.dtype != np.bool_:
      raise ValueError(
          f"a word-start table is a 1-D bool array over the ids, got {array.dtype} "
          f"of shape {array.shape}"
      )
    array.setflags(write=False)
    self.table = array
    self._hash = hash(hashlib.sha1(array.tobytes()).hexdigest())

  def __len__(self) -> int:
    return self.table.shape[0]

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other) -> bool:
    if not isinstance(other, WordStarts):
      return NotImplemented
    return self is other or (self._hash == other._hash and np.array_equal(self.table, other.table))

  def __repr__(self) -> str:
    return f"WordStarts({len(self)} ids, {int(self.table.sum())} word starts)"


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
# Length predictors that do not classify the absolute length (network_config.TransformerConfig's
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
