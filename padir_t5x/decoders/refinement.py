"""Steps 2 and 3 of PaDIR decoding: refinement passes over a chosen length beam, then finalise.

For each candidate length the decoder starts from an initial guess (uniform random tokens or
[MASK]) with EOS at the end and PAD after it, and refines it: each pass (`refinement_pass`, one
decoder call over every hypothesis row, inside a lax.while_loop) reads the previous pass's argmax
(re-masked, padir_t5x/decoders/remasking.py) and predicts every position again. Decoding stops for
an example once a pass no longer changes any of its hypotheses, or after `max_passes`; with
`refine_top_k` (candidate pruning) the passes after the first refine only each example's k best
candidates. `finalise` then de-duplicates (padir_t5x/decoders/dedup.py), scores and sorts the
hypotheses. `refine_lengths` runs both steps; the decoder is a plain `RefineFn`, so that it can be
tested with hand-made functions. The length beam is padir_t5x/decoders/length_candidates.py;
padir_t5x/decoders/decoding.py puts the steps together and wires in the network.

Shapes: b = batch, c = DecodingConfig.num_candidates hypotheses per example, n = b * c hypothesis
rows, t = max_decode_length, V = vocabulary size (network output), k = dedup_top_k.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple, Protocol

import flax
import jax
import jax.numpy as jnp

from padir_t5x.decoders import beam as beam_lib
from padir_t5x.decoders import dedup as dedup_lib
from padir_t5x.core import layout
from padir_t5x.decoders import remasking
from padir_t5x.decoders.decoding_config import DecodingConfig
from padir_t5x.core.modes import DedupMode
from padir_t5x.core.modes import PredictionMode
from padir_t5x.core.modes import RemaskMode
from padir_t5x.core.modes import ScoreMode

Array = jnp.ndarray


class RefineFn(Protocol):
  """One decoder pass over all hypotheses.

  Args:
    decoder_input_tokens: [n, t] int32: the current guess (content, EOS at length-1, PAD after).
    length_mask: [n, t] int32: 1 at positions < length (EOS included), 0 after. The network
      takes it as `decoder_target_tokens` (only its non-zero pattern matters there).

  Returns:
    [n, t, V] float logits for every position.
  """

  def __call__(self, decoder_input_tokens: Array, length_mask: Array) -> Array:
    ...


@flax.struct.dataclass
class DecodeResult:
  """Decoded hypotheses, best last along the beam axis (increasing score, as t5x).

  The beam axis holds c = DecodingConfig.num_candidates hypotheses (l by default).

  Attributes:
    sequences: [b, c, t] int32 tokens after de-duplication: content, EOS, then PAD.
    scores: [b, c] float32 hypothesis scores (see DecodingConfig.score), increasing along c.
    lengths: [b, c] int32 hypothesis lengths (EOS included) as decoded, before de-duplication.
    passes: [b] int32 refinement passes the example ran (all its hypotheses together).
    token_log_probs: [b, c, t] float32 log-prob of each token of the scored hypothesis (before
      'consecutive' de-duplication, the Viterbi tokens for 'optimal'); 0 at EOS and PAD.
  """

  sequences: Array
  scores: Array
  lengths: Array
  passes: Array
  token_log_probs: Array


# ----------------------------------------------------------------------------------------------
# Step 2: the refinement passes.


def restrict_logits(logits: Array, vocab_low: int, vocab_high: int | None) -> Array:
  """Sets logits of ids outside [vocab_low, vocab_high) to -inf, so they are never predicted.

  PAD, EOS and MASK are placed by the decoder's layout, never predicted; predicting them at a
  content position would silently shorten or corrupt the hypothesis.
  """
  ids = jnp.arange(logits.shape[-1])
  allowed = ids >= vocab_low
  if vocab_high is not None:
    allowed = allowed & (ids < vocab_high)
  return jnp.where(allowed, logits.astype(jnp.float32), -jnp.inf)


def initial_tokens(
    rng: Array,
    lengths: Array,
    max_decode_length: int,
    config: DecodingConfig,
    table_length: int | None = None,
) -> Array:
  """[n, t] int32 first decoder input: random or MASK content, EOS at length-1, PAD after."""
  content, eos, _ = layout.length_layout(lengths, max_decode_length)
  fill = config.fill(rng, (lengths.shape[0], max_decode_length), table_length)
  return layout.frame_tokens(fill, content, eos)


class RowLayout(NamedTuple):
  """The layout of the n hypothesis rows (padir_t5x/core/layout.py), fixed for the whole decode."""

  lengths: Array  # [n] int32, EOS included
  content: Array  # [n, t] bool
  eos: Array  # [n, t] bool
  length_mask: Array  # [n, t] int32
  table_length: int  # T >= t: random fills are drawn over T positions (see DecodingConfig.fill)
  # Forced positions (refine_lengths' `forced`): [n, t] bool content positions whose token is
  # given, and [n, t] int32 those tokens; None (the default) forces nothing.
  forced: Array | None = None
  forced_tokens: Array | None = None


def force_tokens(tokens: Array, rows: RowLayout) -> Array:
  """[n, t] tokens with the forced positions (if any) set to their given tokens."""
  if rows.forced is None:
    return tokens
  return jnp.where(rows.forced, rows.forced_tokens, tokens).astype(jnp.int32)


def _log_softmax_at(masked: Array) -> Callable[[Array], Array]:
  """`log_probs_at(ids)`: log_softmax(masked, -1) at ids [n, t, k] -> [n, t, k], masked [n, t, V].

  The same arithmetic as jax.nn.log_softmax ((x - max) - log(sum(exp(x - max)))), taken only at
  the ids: a pass never builds the [n, t, V] array of log-probs. On a 2-core CPU writing and
  re-reading it, then a top_k over it, cost 5-7% of a Base decode at batch 1 (a 32k vocabulary;
  docs/benchmarks.md).
  """
  top = jax.lax.stop_gradient(jnp.max(masked, axis=-1, keepdims=True))  # [n, t, 1]
  log_normalizer = jnp.log(jnp.sum(jnp.exp(masked - top), axis=-1, keepdims=True))  # [n, t, 1]

  def log_probs_at(ids: Array) -> Array:
    return (jnp.take_along_axis(masked, ids, axis=-1) - top) - log_normalizer

  return log_probs_at


def _force_candidates(
    candidate_ids: Array,
    candidate_log_probs: Array,
    log_probs_at: Callable[[Array], Array],
    rows: RowLayout,
) -> tuple[Array, Array]:
  """Candidate slot 0 (the prediction) at the forced positions becomes the forced token, with
  this pass's log-prob of it (`log_probs_at`, _log_softmax_at's); [n, t, k], [n, t, k] -> same.
  No-op without forced positions."""
  if rows.forced is None:
    return candidate_ids, candidate_log_probs
  first = force_tokens(candidate_ids[..., 0], rows)[..., None]  # [n, t, 1]
  first_log_prob = log_probs_at(first)  # [n, t, 1]
  return (
      jnp.concatenate([first, candidate_ids[..., 1:]], axis=-1),  # [n, t, k]
      jnp.concatenate([first_log_prob, candidate_log_probs[..., 1:]], axis=-1),  # [n, t, k]
  )


class RefinementState(flax.struct.PyTreeNode):
  """The lax.while_loop carry of the passes."""

  step: Array  # [] int32 passes run so far (by the whole batch)
  inputs: Array  # [n, t] int32 next pass's decoder input
  predictions: Array  # [n, t] int32 last pass's framed argmax
  candidate_ids: Array  # [n, t, k'] int32 top-k' ids of the last pass (k' = k or 1)
  candidate_log_probs: Array  # [n, t, k'] float32 their log-probs
  done: Array  # [b] bool: converged, frozen
  passes: Array  # [b] int32
  # [n, t, V] float32 log-probs summed over the passes so far (prediction='summed'), else None.
  log_prob_sum: Array | None = None


def refinement_pass(
    refine_fn: RefineFn, state: RefinementState, rows: RowLayout, rng: Array, config: DecodingConfig
) -> RefinementState:
  """One decoder call over all n rows; rows of converged examples keep their frozen state.

  An example converges when no prediction of any of its c hypotheses changed (the first pass
  always counts as a change: its "previous prediction" is the initial guess); with
  prediction='summed' also every content prediction must equal the pass's own argmax (else
  more summing could still flip it), and with remask='low_confidence' no example converges
  before max_passes (see DecodingConfig.remask).
  """
  batch_size = state.done.shape[0]
  n = state.inputs.shape[0]
  beam = n // batch_size
  k = state.candidate_ids.shape[-1]
  summed = config.prediction is PredictionMode.SUMMED
  logits = refine_fn(state.inputs, rows.length_mask)  # [n, t, V]
  # [n, t, V] float32, -inf outside the ordinary ids
  masked = restrict_logits(logits, config.vocab_low, config.vocab_high)
  if summed:
    log_probs = jax.nn.log_softmax(masked, axis=-1)  # [n, t, V] float32, summed over the passes
    log_probs_at = functools.partial(jnp.take_along_axis, log_probs, axis=-1)  # ids -> log-probs
    log_prob_sum = state.log_prob_sum + log_probs  # [n, t, V] float32
    _, candidate_ids = jax.lax.top_k(log_prob_sum, k)  # [n, t, k] argmax of the sum first
    candidate_ids = candidate_ids.astype(jnp.int32)  # [n, t, k]
  else:
    log_prob_sum = state.log_prob_sum  # None
    log_probs_at = _log_softmax_at(masked)  # no [n, t, V] array of log-probs
    # The candidates are those of the logits (log_softmax only shifts each row); the prediction
    # is the argmax, the lowest id among ties, as top_k's first entry.
    if k == 1:
      candidate_ids = jnp.argmax(masked, axis=-1)[..., None]  # [n, t, 1]
    else:
      _, candidate_ids = jax.lax.top_k(masked, k)  # [n, t, k]
    candidate_ids = candidate_ids.astype(jnp.int32)  # [n, t, k]
  candidate_log_probs = log_probs_at(candidate_ids)  # [n, t, k]
  candidate_ids, candidate_log_probs = _force_candidates(
      candidate_ids, candidate_log_probs, log_probs_at, rows
  )  # [n, t, k] each: the forced token (if any) is the prediction
  predictions = layout.frame_tokens(candidate_ids[..., 0], rows.content, rows.eos)  # [n, t]
  changed_rows = jnp.any(predictions != state.predictions, axis=-1)  # [n]
  if summed:
    own_argmax = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)  # [n, t] this pass alone
    free = rows.content if rows.forced is None else rows.content & ~rows.forced  # [n, t]
    unsettled = free & (own_argmax != candidate_ids[..., 0])  # [n, t]
    changed_rows = changed_rows | jnp.any(unsettled, axis=-1)  # [n]
  changed = jnp.any(beam_lib.unflatten_beam_dim(changed_rows, batch_size, beam), axis=-1)  # [b]
  changed = changed | (state.step == 0)  # [b]
  if config.remask is RemaskMode.LOW_CONFIDENCE or not config.early_stopping:
    changed = jnp.ones_like(changed)  # [b] every example runs all max_passes passes
  active = ~state.done  # [b] examples that take this pass
  active_rows = beam_lib.flat_batch_beam_expand(active, beam)  # [n]
  next_inputs = remasking.next_pass_inputs(
      jax.random.fold_in(rng, state.step),
      predictions,
      rows.content,
      config,
      rows.table_length,
      confidence=candidate_log_probs[..., 0],
      step=state.step,
  )  # [n, t]
  next_inputs = force_tokens(next_inputs, rows)  # [n, t] forced positions never re-masked

  def keep_frozen(new: Array | None, old: Array | None) -> Array | None:
    """new where the row's example is active, else old; [n, ...] each (None stays None)."""
    if new is None:
      return None
    return jnp.where(active_rows.reshape((n,) + (1,) * (new.ndim - 1)), new, old)

  return RefinementState(
      step=state.step + 1,  # []
      inputs=keep_frozen(next_inputs, state.inputs),  # [n, t]
      predictions=keep_frozen(predictions, state.predictions),  # [n, t]
      candidate_ids=keep_frozen(candidate_ids, state.candidate_ids),  # [n, t, k]
      candidate_log_probs=keep_frozen(candidate_log_probs, state.candidate_log_probs),  # [n, t, k]
      done=state.done | (active & ~changed),  # [b]
      passes=state.passes + active.astype(jnp.int32),  # [b]
      log_prob_sum=keep_frozen(log_prob_sum, state.log_prob_sum),  # [n, t, V] or None
  )


# ----------------------------------------------------------------------------------------------
# Step 3: finalise.


def score_hypotheses(
    token_log_probs: Array, lengths: Array, length_log_probs: Array, config: DecodingConfig
) -> Array:
  """[n] float32 scores from content-token log-probs [n, t] (0 elsewhere) and lengths [n].

  A length-1 hypothesis (EOS only) has no content: its 'mean' is 0, not NaN.
  """
  total = jnp.sum(token_log_probs, axis=-1)
  num_content = (lengths - 1).astype(jnp.float32)
  if config.score is ScoreMode.SUM:
    score = total
  elif config.score is ScoreMode.MEAN:
    score = total / jnp.maximum(num_content, 1.0)
  else:
    score = total / ((5.0 + lengths.astype(jnp.float32)) / 6.0) ** config.length_penalty_alpha
  if config.add_length_log_prob:
    score = score + length_log_probs
  return score.astype(jnp.float32)


def finalise(
    state: RefinementState, rows: RowLayout, length_log_probs: Array, config: DecodingConfig
) -> DecodeResult:
  """De-duplicates and scores the last predictions, then sorts each example's hypotheses.

  Args:
    state: the loop's final state.
    rows: the rows' layout.
    length_log_probs: [b, c] float32 log-probs of the rows' lengths.
    config: DecodingConfig.

  Returns:
    DecodeResult, best hypothesis last along the beam axis.
  """
  batch_size, beam = length_log_probs.shape
  sequences, token_log_probs, scores = _scored_hypotheses(state, rows, length_log_probs, config)

  # Each example's hypotheses by increasing score: best last, as t5x expects.
  scores = beam_lib.unflatten_beam_dim(scores, batch_size, beam)  # [b, c]
  order = jnp.argsort(scores, axis=-1, stable=True)  # [b, c]

  def by_score(x: Array) -> Array:
    """[n, ...] -> [b, c, ...] in score order."""
    return beam_lib.gather_beams(beam_lib.unflatten_beam_dim(x, batch_size, beam), order)

  return DecodeResult(
      sequences=by_score(sequences).astype(jnp.int32),  # [b, c, t]
      scores=beam_lib.gather_beams(scores, order).astype(jnp.float32),  # [b, c]
      lengths=by_score(rows.lengths).astype(jnp.int32),  # [b, c]
      passes=state.passes,  # [b]
      token_log_probs=by_score(token_log_probs).astype(jnp.float32),  # [b, c, t]
  )


def _scored_hypotheses(
    state: RefinementState, rows: RowLayout, length_log_probs: Array, config: DecodingConfig
) -> tuple[Array, Array, Array]:
  """The rows' hypotheses as `finalise` returns them, unsorted: (sequences [n, t] after
  de-duplication, token_log_probs [n, t] of the scored tokens, scores [n]); length_log_probs
  [b, c]."""
  if config.dedup is DedupMode.OPTIMAL:
    viterbi_tokens, token_log_probs = dedup_lib.optimal_dedup(
        state.candidate_ids, state.candidate_log_probs, rows.content
    )  # [n, t] each
    if rows.forced is not None:
      viterbi_tokens = force_tokens(viterbi_tokens, rows)  # [n, t]
      token_log_probs = jnp.where(
          rows.forced, state.candidate_log_probs[..., 0], token_log_probs
      )  # [n, t]
    sequences = layout.frame_tokens(viterbi_tokens, rows.content, rows.eos)  # [n, t]
  else:
    token_log_probs = jnp.where(rows.content, state.candidate_log_probs[..., 0], 0.0)  # [n, t]
    sequences = state.predictions  # [n, t]
    if config.dedup is DedupMode.CONSECUTIVE:
      # Scores stay those of the hypothesis as decoded (before removing repeats): the removed
      # tokens were predicted, and rescoring the shortened sequence would need another pass.
      sequences, _ = dedup_lib.consecutive_dedup(
          sequences, rows.content, config.stutter_word_starts(), keep=rows.forced
      )  # [n, t] forced tokens are never dropped
  scores = score_hypotheses(
      token_log_probs, rows.lengths, beam_lib.flatten_beam_dim(length_log_probs), config
  )  # [n]
  return sequences, token_log_probs, scores


# ----------------------------------------------------------------------------------------------
# Steps 2 and 3 for a chosen length beam.


def refine_lengths(
    refine_fn: RefineFn,
    lengths: Array,
    length_log_probs: Array,
    rng: Array,
    config: DecodingConfig,
    max_decode_length: int,
    table_length: int | None = None,
    forced: Array | None = None,
    forced_tokens: Array | None = None,
) -> DecodeResult:
  """Steps 2 and 3 for a chosen length beam: refinement passes, then `finalise`.

  Args:
    refine_fn: one decoder pass over [n, t] rows.
    lengths: [b, c] int32 lengths to decode (<= t), one per hypothesis row.
    length_log_probs: [b, c] float32 their log-probs.
    rng: PRNG key.
    config: DecodingConfig.
    max_decode_length: t, the positions refined.
    table_length: T >= t over which random fills are drawn (default t): a bucketed decode at
      t < T passes the full table's T so that its hypotheses equal the full table's.
    forced: optional [b, t] bool positions whose token is given (e.g. a prefix already
      accepted: padir_t5x/decoders/draft_verify.py), shared by the example's c hypotheses; only its
      content positions count (a position at or past a hypothesis's EOS stays EOS / PAD). Every
      pass reads the given token there and predicts it (scored with the pass's log-prob of it);
      re-masking and 'consecutive' de-duplication never remove it. None: nothing forced (the
      decode is unchanged).
    forced_tokens: [b, t] int32 the given tokens (read where `forced`), with `forced`.

  Returns:
    DecodeResult with sequences [b, c, t].
  """
  t = max_decode_length
  batch_size, beam = lengths.shape
  n = batch_size * beam
  flat_lengths = beam_lib.flatten_beam_dim(lengths)  # [n]
  rows = RowLayout(
      flat_lengths, *layout.length_layout(flat_lengths, t), table_length or t
  )  # [n], 3 x [n, t]
  if (forced is None) != (forced_tokens is None):
    raise ValueError("forced and forced_tokens go together")
  if forced is not None:
    rows = rows._replace(
        forced=beam_lib.flat_batch_beam_expand(forced, beam) & rows.content,  # [n, t]
        forced_tokens=beam_lib.flat_batch_beam_expand(forced_tokens, beam).astype(jnp.int32),
    )
  init_rng, loop_rng = jax.random.split(rng)
  inputs = initial_tokens(init_rng, flat_lengths, t, config, rows.table_length)  # [n, t]
  inputs = force_tokens(inputs, rows)  # [n, t]
  k = config.dedup_top_k if config.dedup is DedupMode.OPTIMAL else 1

  initial_state = RefinementState(
      step=jnp.zeros((), jnp.int32),
      inputs=inputs,
      predictions=inputs,
      candidate_ids=jnp.zeros((n, t, k), jnp.int32),
      candidate_log_probs=jnp.zeros((n, t, k), jnp.float32),
      done=jnp.zeros((batch_size,), bool),
      passes=jnp.zeros((batch_size,), jnp.int32),
      log_prob_sum=None,
  )
  if config.prediction is PredictionMode.SUMMED:
    num_ids = jax.eval_shape(refine_fn, inputs, rows.length_mask).shape[-1]  # V
    initial_state = initial_state.replace(log_prob_sum=jnp.zeros((n, t, num_ids), jnp.float32))

  if config.refine_top_k is None:
    final = _refinement_loop(refine_fn, initial_state, rows, loop_rng, config)
  else:
    final = _refine_top_k(refine_fn, initial_state, rows, length_log_probs, loop_rng, config)
  return finalise(final, rows, length_log_probs, config)


def _refinement_loop(
    refine_fn: RefineFn, state: RefinementState, rows: RowLayout, rng: Array, config: DecodingConfig
) -> RefinementState:
  """Refinement passes (lax.while_loop) from `state` until max_passes or every example is done."""

  def not_finished(state: RefinementState) -> Array:
    return (state.step < config.max_passes) & ~jnp.all(state.done)

  return jax.lax.while_loop(
      not_finished, lambda state: refinement_pass(refine_fn, state, rows, rng, config), state
  )


def _refine_top_k(
    refine_fn: RefineFn,
    state: RefinementState,
    rows: RowLayout,
    length_log_probs: Array,
    rng: Array,
    config: DecodingConfig,
) -> RefinementState:
  """Candidate pruning (DecodingConfig.refine_top_k): the first pass over all n = b * c rows,
  then the later passes over the b * k rows of each example's k best first-pass hypotheses
  (gathered: refine_fn sees b * k rows); the others keep their first-pass state.

  The gathered rows keep their order (and with k = c they are all the rows), so that k = c
  decodes exactly as without pruning: same rows, same random draws (fold_in(rng, step)).
  """
  batch_size, beam = length_log_probs.shape
  k = min(config.refine_top_k, beam)  # given lengths (length_beam_lengths) may be fewer
  first = refinement_pass(refine_fn, state, rows, rng, config)  # the whole beam, step 0 -> 1
  if config.max_passes == 1:
    return first
  _, _, scores = _scored_hypotheses(first, rows, length_log_probs, config)  # [n]
  scores = beam_lib.unflatten_beam_dim(scores, batch_size, beam)  # [b, c]
  _, best = jax.lax.top_k(scores, k)  # [b, k] lowest index first among ties
  kept = jnp.sort(best, axis=-1) + beam * jnp.arange(batch_size)[:, None]  # [b, k] row ids
  kept = kept.reshape(-1)  # [b * k] flat rows, each example's k in their original order

  def take(x: Array | None) -> Array | None:
    return None if x is None else x[kept]

  def put(full: Array | None, part: Array | None) -> Array | None:
    return None if full is None else full.at[kept].set(part)

  per_row = ("inputs", "predictions", "candidate_ids", "candidate_log_probs", "log_prob_sum")
  kept_rows = rows._replace(
      **{
          name: take(getattr(rows, name))
          for name in ("lengths", "content", "eos", "length_mask", "forced", "forced_tokens")
      }
  )  # [b * k, ...] each
  refined = _refinement_loop(
      refine_fn,
      first.replace(**{name: take(getattr(first, name)) for name in per_row}),
      kept_rows,
      rng,
      config,
  )  # the passes after the first over b * k rows
  return refined.replace(
      **{name: put(getattr(first, name), getattr(refined, name)) for name in per_row}
  )  # [n, ...] rows again: the pruned ones as after the first pass
