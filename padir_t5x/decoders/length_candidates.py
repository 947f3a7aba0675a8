"""Step 1 of PaDIR decoding: the length beam, the candidate lengths each example decodes.

The length classifier's top-l lengths (`select_lengths`), optionally widened by
DecodingConfig.length_offsets around each into distinct lengths (`offset_lengths`), each repeated
for DecodingConfig.inits_per_length initialisations (`length_beam`), with their log-probs
renormalised over the decodable lengths. padir_t5x/decoders/refinement.py decodes them.

Shapes: b = batch, l = length_beam, c = DecodingConfig.num_candidates, L = number of length
classes, t = max_decode_length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from padir_t5x.core import layout
from padir_t5x.decoders.decoding_config import DecodingConfig

Array = jnp.ndarray


def select_lengths(
    length_logits: Array, length_beam: int, max_decode_length: int, min_length: int = 1
) -> tuple[Array, Array]:
  """The `length_beam` most likely lengths in min_length..max_decode_length, most likely first.

  Class j of the classifier stands for length j + 1 (length 1 = EOS only). Classes whose length
  exceeds max_decode_length are masked out before the softmax, so the returned log-probs are
  renormalised over the lengths that can actually be decoded.

  Args:
    length_logits: [b, L] float.
    length_beam: l, at most min(L, max_decode_length).
    max_decode_length: t.
    min_length: shortest allowed length (EOS included).

  Returns:
    (lengths [b, l] int32, log_probs [b, l] float32).
  """
  num_classes = length_logits.shape[-1]
  num_allowed = min(num_classes, max_decode_length) - (min_length - 1)
  if length_beam > num_allowed:
    raise ValueError(
        f"length_beam {length_beam} exceeds the number of decodable lengths "
        f"({num_allowed}: {min_length}..min({num_classes} classes, "
        f"max_decode_length {max_decode_length}))"
    )
  log_probs = layout.length_log_probs(length_logits, max_decode_length, min_length)
  top_log_probs, top_classes = jax.lax.top_k(log_probs, length_beam)
  return (top_classes + 1).astype(jnp.int32), top_log_probs


def offset_lengths(
    log_probs: Array, top_lengths: Array, length_offsets: int, min_length: int
) -> Array:
  """[b, l * (2r + 1)] int32 distinct lengths: L-r..L+r around each top length L, in order.

  Each window is clipped to the decodable lengths (those of finite log-prob, a range
  min_length..max). A length already proposed by an earlier slot (overlapping windows, or a
  window clipped onto its edge) is replaced by the most likely length not yet proposed.

  Args:
    log_probs: [b, L] float32 length log-probs, -inf at the lengths that cannot be decoded
      (layout.length_log_probs with max_length and min_length).
    top_lengths: [b, l] int32 decodable lengths (select_lengths).
    length_offsets: r >= 0.
    min_length: shortest decodable length.

  Returns:
    [b, l * (2r + 1)] int32; the caller checks that l * (2r + 1) lengths are decodable.
  """
  batch_size, num_classes = log_probs.shape
  decodable = jnp.isfinite(log_probs)  # [b, L]
  longest = num_classes - jnp.argmax(decodable[:, ::-1], axis=-1)  # [b]
  offsets = jnp.arange(-length_offsets, length_offsets + 1, dtype=jnp.int32)  # [2r + 1]
  windows = top_lengths.astype(jnp.int32)[:, :, None] + offsets  # [b, l, 2r + 1]
  windows = jnp.clip(windows, min_length, longest[:, None, None])  # [b, l, 2r + 1]
  proposed = windows.reshape(batch_size, -1)  # [b, c']

  def choose(used, length):
    """used [b, L] bool (classes chosen so far), length [b] -> (used, chosen length [b])."""
    rows = jnp.arange(batch_size)
    taken = used[rows, length - 1]  # [b]
    fallback = jnp.argmax(jnp.where(used, -jnp.inf, log_probs), axis=-1)  # [b] class
    chosen = jnp.where(taken, fallback, length - 1)  # [b] class
    return used.at[rows, chosen].set(True), (chosen + 1).astype(jnp.int32)

  _, lengths = jax.lax.scan(choose, jnp.zeros_like(decodable), proposed.T)  # [c', b]
  return lengths.T  # [b, c']


def length_beam(
    length_logits: Array,
    config: DecodingConfig,
    max_decode_length: int,
    given_lengths: Array | None = None,
) -> tuple[Array, Array]:
  """The candidates' lengths and log-probs: (lengths [b, c] int32, log_probs [b, c] f32).

  The classifier's top-l (`select_lengths`) with `offset_lengths` around them when
  config.length_offsets > 0, or `given_lengths` [b, l'] (e.g. gold lengths for analysis; no
  offsets) clipped to 1..t; log-probs are the classifier's, renormalised over the decodable
  lengths. Each length is repeated config.inits_per_length times (adjacent rows), so
  c = config.num_candidates (l' * inits_per_length for given lengths).
  """
  if given_lengths is not None:
    lengths = jnp.clip(given_lengths.astype(jnp.int32), 1, max_decode_length)
    log_probs = layout.length_log_probs(length_logits, max_decode_length)
    top_log_probs = layout.lookup_length_log_probs(log_probs, lengths)
  elif config.length_offsets == 0:
    lengths, top_log_probs = select_lengths(
        length_logits, config.length_beam, max_decode_length, config.min_length
    )
  else:
    num_classes = length_logits.shape[-1]
    num_allowed = min(num_classes, max_decode_length) - (config.min_length - 1)
    if config.num_lengths > num_allowed:
      raise ValueError(
          f"length_beam {config.length_beam} with length_offsets {config.length_offsets} asks "
          f"for {config.num_lengths} distinct lengths, more than the {num_allowed} decodable "
          f"ones ({config.min_length}..min({num_classes} classes, max_decode_length "
          f"{max_decode_length}))"
      )
    top, _ = select_lengths(
        length_logits, config.length_beam, max_decode_length, config.min_length
    )  # [b, l]
    log_probs = layout.length_log_probs(length_logits, max_decode_length, config.min_length)
    lengths = offset_lengths(log_probs, top, config.length_offsets, config.min_length)
    top_log_probs = layout.lookup_length_log_probs(log_probs, lengths)
  if config.inits_per_length > 1:
    lengths = jnp.repeat(lengths, config.inits_per_length, axis=1)
    top_log_probs = jnp.repeat(top_log_probs, config.inits_per_length, axis=1)
  return lengths, top_log_probs
