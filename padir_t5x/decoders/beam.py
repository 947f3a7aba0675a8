"""Beam helpers with the names of t5x.decoding's, for PaDIR's hypotheses.

PaDIR's beam is an example's c = DecodingConfig.num_candidates hypotheses (its length beam, the
length offsets, the initialisations per length). Hypothesis rows are in flat_batch_beam_expand
order: example 0's c hypotheses, then example 1's, and so on. Shapes: b = batch, l = beam,
n = b * l.
"""

from __future__ import annotations

import jax.numpy as jnp

Array = jnp.ndarray


def flat_batch_beam_expand(x: Array, beam: int) -> Array:
  """[b, ...] -> [b * beam, ...], each row repeated beam times."""
  return jnp.repeat(x, beam, axis=0)


def unflatten_beam_dim(x: Array, batch_size: int, beam: int) -> Array:
  """[b * beam, ...] -> [b, beam, ...]."""
  return x.reshape((batch_size, beam) + x.shape[1:])


def flatten_beam_dim(x: Array) -> Array:
  """[b, beam, ...] -> [b * beam, ...]."""
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])


def gather_beams(x: Array, order: Array) -> Array:
  """x [b, beam, ...] reordered along the beam axis by order [b, beam] int."""
  return jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)
