"""PaDIR's score of a given target: log p(length | x) + the first pass's token log-probs.

The EM E-step (Sun & Yang 2020) ranks the AR model's N-best by this score. It lives in the core
so that the T5X model (`PadirModel.score_batch`, what `t5x.infer` mode 'score' runs for
padir_t5x.em) and the core E-step (benchmarks/em_round.py) compute it with the same code.

score = log p(length | x) + sum_{i < length-1} w_i log p(y_i | x, length, z), where length counts
EOS, w are loss weights (default: targets > 0), and z is a fixed decoder input that does not
depend on the target's content (`score_decoder_inputs`): [MASK] or a fixed pseudo-random row at
the content positions, EOS at length - 1. This is the distribution of PaDIR's first decoding
pass, so the token terms are proper conditionals of y_i given (x, length): feeding the target
itself would let each position read its own answer. EOS is not scored as a token: given the
length its place is fixed, and the length term accounts for it. Token log-probs are over the
full output layer (as the training loss), no z-loss, no de-duplication.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from padir_t5x.core import layout
from padir_t5x.core import network
from padir_t5x.core.modes import FillMode

Array = jnp.ndarray


class TargetScores(NamedTuple):
  """What `score_targets` returns; b = batch, t = target length."""

  sequence: Array  # [b] float32: length + token terms
  tokens: Array  # [b, t] float32: weighted token log-probs, 0 outside the content
  length: Array  # [b] float32: log p(length | x), 0 for an all-PAD row


def score_decoder_inputs(
    decoder_target_tokens: Array,
    *,
    fill: FillMode,
    seed: int,
    table_length: int,
    vocab_low: int,
    vocab_high: int | None,
    mask_id: int,
) -> Array:
  """The fixed decoder input that scoring conditions on: [b, t] int32.

  Content positions (before the target's EOS) hold [MASK] (FillMode.MASK) or pseudo-random
  ordinary tokens (FillMode.RANDOM); EOS sits at length - 1 and PAD after it, as in decoding's
  first pass. Random tokens are one row drawn from PRNGKey(seed) over `table_length` (the
  network's max_target_length) and sliced to t, so that an example's input depends only on its
  length, not on its row, its batch or the batch's padding.

  Args:
    decoder_target_tokens: [b, t] int, EOS-terminated, PAD (0) after.
    fill: the content fill (decoding's DecodingConfig.init by default).
    seed: the random row's seed.
    table_length: the length the row is drawn over (>= t is not required: max(table, t) is used).
    vocab_low / vocab_high / mask_id: as layout.fill_tokens.
  """
  targets = jnp.asarray(decoder_target_tokens)
  batch_size, t = targets.shape
  content, eos, _ = layout.length_layout(layout.sequence_lengths(targets), t)
  row = layout.fill_tokens(
      jax.random.PRNGKey(seed),
      (max(table_length, t),),
      fill,
      vocab_low=vocab_low,
      vocab_high=vocab_high,
      mask_id=mask_id,
  )
  return layout.frame_tokens(jnp.broadcast_to(row[:t], (batch_size, t)), content, eos)


def score_targets(
    module: Any,
    params: Any,
    encoder_input_tokens: Array,
    decoder_target_tokens: Array,
    decoder_input_tokens: Array,
    loss_weights: Array | None = None,
) -> TargetScores:
  """The score of each target given its source (the module docstring's formula).

  Args:
    module: a PaDIR network.Transformer (or anything with its encode/predict_length/decode).
    params: its parameters.
    encoder_input_tokens: [b, s] int, EOS-terminated sources.
    decoder_target_tokens: [b, t] int, EOS-terminated targets, PAD after.
    decoder_input_tokens: [b, t] int, from `score_decoder_inputs`.
    loss_weights: [b, t] weights of the token terms; default targets > 0.
  """
  inputs = jnp.asarray(encoder_input_tokens)
  targets = jnp.asarray(decoder_target_tokens)
  weights = (targets > 0) if loss_weights is None else jnp.asarray(loss_weights)
  encoded, length_logits = network.encode_and_predict_length(module, params, inputs)
  lengths = layout.sequence_lengths(targets)
  length_scores = layout.lookup_length_log_probs(layout.length_log_probs(length_logits), lengths)
  length_scores = jnp.where(lengths > 0, length_scores, 0.0)
  logits = module.apply(
      {"params": params},
      encoded,
      inputs,
      decoder_input_tokens,
      targets,
      enable_dropout=False,
      method="decode",
  )
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  token_log_probs = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[
      ..., 0
  ]
  content, _, _ = layout.length_layout(lengths, targets.shape[1])
  token_scores = jnp.where(content, token_log_probs * weights.astype(jnp.float32), 0.0)
  return TargetScores(length_scores + jnp.sum(token_scores, axis=-1), token_scores, length_scores)
