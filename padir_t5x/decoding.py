"""PaDIR inference: length beam, parallel decoding with iterative refinement, de-duplication.

PaDIR (Li et al. 2024, Sec. 3 and App. L) decodes a whole target in parallel. The encoder runs
once; a length classifier proposes the `length_beam` most likely target lengths; for each
length, the decoder starts from an initial guess (uniform random tokens or [MASK]) with EOS at
the end and PAD after it, and refines it: each pass reads the previous pass's argmax and
predicts every position again. Decoding stops for an example once a pass no longer changes any
of its hypotheses, or after `max_passes`. Hypotheses are then ranked by their (mean) token
log-probability and, optionally, repeated tokens (the typical failure of parallel decoding) are
removed.

Everything here is a pure function over arrays. `iterative_refinement_decode` takes the decoder
as a plain `RefineFn`, so it can be tested with hand-made functions; `decode_with_network` wires
in `padir_t5x.network.Transformer`. Neither imports t5x: padir_t5x/models.py adapts the output
(best hypothesis last along the beam axis, increasing score: the t5x convention).

Shapes: b = batch, l = length_beam, n = b * l hypothesis rows, t = max_decode_length,
V = vocabulary size (network output), L = number of length classes, k = dedup_top_k.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol
from collections.abc import Sequence

import flax
import jax
import jax.numpy as jnp

from padir_t5x import EOS_ID
from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x import MASK_ID
from padir_t5x import PAD_ID

Array = jnp.ndarray

INIT_MODES = ("random", "mask")
SCORE_MODES = ("mean", "sum", "length_penalty")
DEDUP_MODES = ("none", "consecutive", "optimal")


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


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
  """How PaDIR decodes.

  Attributes:
    length_beam: number of target lengths decoded per example (top-l of the length classifier).
    max_passes: maximum number of refinement passes (decoder calls).
    init: initial decoder input at content positions: 'random' (uniform tokens from
      [vocab_low, vocab_high), as the 'random' training corruption) or 'mask' (mask_id).
    remask_stutter: between passes, replace positions repeating their left neighbour's
      prediction by mask_id ('mask' init) or a fresh random token ('random' init) in the next
      pass's input, so the decoder reconsiders them instead of copying the stutter.
    score: hypothesis score from the last pass's log-probs at the predicted content tokens
      (EOS excluded): 'mean', 'sum' or 'length_penalty' (sum / ((5 + length) / 6) ** alpha,
      GNMT-style, length with EOS).
    length_penalty_alpha: alpha of 'length_penalty'.
    add_length_log_prob: add the length classifier's log-prob of the hypothesis length to the
      token score (default on: on the toy reversal task, a model whose length classifier is 100%
      right picked a wrong length for 9-14% of examples with 3 candidates on the mean token
      log-prob alone, and none with the length log-prob added).
    dedup: final de-duplication: 'none', 'consecutive' (drop tokens equal to their left
      neighbour) or 'optimal' (Sun & Yang 2020: the best sequence over the top-k tokens per
      position with no two equal neighbours, found by Viterbi; keeps the length).
    dedup_top_k: candidates per position for 'optimal' (>= 2, so a solution always exists).
    vocab_low: first ordinary id; ids below it (PAD, EOS, UNK, MASK) are never predicted at
      content positions, and random tokens are drawn from [vocab_low, vocab_high).
    vocab_high: real vocabulary size (exclusive); required for 'random' init. When given, ids
      >= vocab_high (padding of the embedding table) are never predicted either.
    mask_id: the [MASK] id.
    min_length: shortest length (EOS included) the length beam may choose. The default 2 rules
      out the empty translation: with no content token its 'mean' or 'sum' score would be 0,
      the best possible, so an EOS-only hypothesis in the beam would always win.

  The defaults are the paper's headline setting (Li et al. 2024): 5 length candidates, 4 passes,
  stutter re-masking between passes.
  """

  length_beam: int = 5
  max_passes: int = 4
  init: str = "random"
  remask_stutter: bool = True
  score: str = "mean"
  length_penalty_alpha: float = 0.6
  add_length_log_prob: bool = True
  dedup: str = "consecutive"
  dedup_top_k: int = 4
  vocab_low: int = FIRST_ORDINARY_ID
  vocab_high: int | None = None
  mask_id: int = MASK_ID
  min_length: int = 2

  def __post_init__(self):
    if self.min_length < 1:
      raise ValueError(f"min_length must be >= 1, got {self.min_length}")
    if self.length_beam < 1:
      raise ValueError(f"length_beam must be >= 1, got {self.length_beam}")
    if self.max_passes < 1:
      raise ValueError(f"max_passes must be >= 1, got {self.max_passes}")
    if self.init not in INIT_MODES:
      raise ValueError(f"unknown init {self.init!r}; expected one of {INIT_MODES}")
    if self.score not in SCORE_MODES:
      raise ValueError(f"unknown score {self.score!r}; expected one of {SCORE_MODES}")
    if self.length_penalty_alpha < 0:
      raise ValueError(f"length_penalty_alpha must be >= 0, got {self.length_penalty_alpha}")
    if self.dedup not in DEDUP_MODES:
      raise ValueError(f"unknown dedup {self.dedup!r}; expected one of {DEDUP_MODES}")
    if self.dedup == "optimal" and self.dedup_top_k < 2:
      raise ValueError(f"dedup='optimal' needs dedup_top_k >= 2, got {self.dedup_top_k}")
    if self.vocab_low < 0:
      raise ValueError(f"vocab_low must be >= 0, got {self.vocab_low}")
    if self.vocab_low <= max(PAD_ID, EOS_ID):
      raise ValueError(f"vocab_low must exceed the PAD and EOS ids, got {self.vocab_low}")
    if self.init == "random" and self.vocab_high is None:
      raise ValueError("init='random' needs vocab_high (the real vocabulary size)")
    if self.vocab_high is not None and self.vocab_high <= self.vocab_low:
      raise ValueError(f"ordinary id range [{self.vocab_low}, {self.vocab_high}) is empty")


@flax.struct.dataclass
class DecodeResult:
  """Decoded hypotheses, best last along the beam axis (increasing score, as t5x).

  Attributes:
    sequences: [b, l, t] int32 tokens after de-duplication: content, EOS, then PAD.
    scores: [b, l] float32 hypothesis scores (see DecodingConfig.score), increasing along l.
    lengths: [b, l] int32 hypothesis lengths (EOS included) as decoded, before de-duplication.
    passes: [b] int32 refinement passes the example ran (all its hypotheses together).
    token_log_probs: [b, l, t] float32 log-prob of each token of the scored hypothesis (before
      'consecutive' de-duplication, the Viterbi tokens for 'optimal'); 0 at EOS and PAD.
  """

  sequences: Array
  scores: Array
  lengths: Array
  passes: Array
  token_log_probs: Array


# ----------------------------------------------------------------------------------------------
# Building blocks.


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
  lengths = jnp.arange(num_classes) + 1
  allowed = (lengths <= max_decode_length) & (lengths >= min_length)
  logits = jnp.where(allowed, length_logits.astype(jnp.float32), -jnp.inf)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  top_log_probs, top_classes = jax.lax.top_k(log_probs, length_beam)
  return (top_classes + 1).astype(jnp.int32), top_log_probs


def length_layout(lengths: Array, max_decode_length: int) -> tuple[Array, Array, Array]:
  """Masks of a batch of lengths.

  Args:
    lengths: [n] int, EOS included.

  Returns:
    (content [n, t] bool: positions < length - 1, eos [n, t] bool: position length - 1,
     length_mask [n, t] int32: positions < length).
  """
  positions = jnp.arange(max_decode_length)[None, :]
  lengths = lengths[:, None]
  return positions < lengths - 1, positions == lengths - 1, (positions < lengths).astype(jnp.int32)


def frame_tokens(content_tokens: Array, content: Array, eos: Array) -> Array:
  """[n, t] int32: content_tokens at content positions, EOS at length-1, PAD after."""
  return jnp.where(content, content_tokens, jnp.where(eos, EOS_ID, PAD_ID)).astype(jnp.int32)


def stutter_mask(tokens: Array, content: Array) -> Array:
  """[n, t] bool: content positions i > 0 whose token equals that of content position i - 1."""
  previous = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  previous_content = jnp.pad(content[:, :-1], ((0, 0), (1, 0)), constant_values=False)
  return content & previous_content & (tokens == previous)


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
    rng: Array, lengths: Array, max_decode_length: int, config: DecodingConfig
) -> Array:
  """[n, t] int32 first decoder input: random or MASK content, EOS at length-1, PAD after."""
  content, eos, _ = length_layout(lengths, max_decode_length)
  shape = (lengths.shape[0], max_decode_length)
  if config.init == "random":
    fill = jax.random.randint(rng, shape, config.vocab_low, config.vocab_high, dtype=jnp.int32)
  else:
    fill = jnp.full(shape, config.mask_id, jnp.int32)
  return frame_tokens(fill, content, eos)


def remask_stutter(rng: Array, predictions: Array, content: Array, config: DecodingConfig) -> Array:
  """Next pass's input: `predictions` with stuttering positions re-masked (or re-randomised)."""
  stutter = stutter_mask(predictions, content)
  if config.init == "random":
    fill = jax.random.randint(
        rng, predictions.shape, config.vocab_low, config.vocab_high, dtype=jnp.int32
    )
  else:
    fill = jnp.full(predictions.shape, config.mask_id, jnp.int32)
  return jnp.where(stutter, fill, predictions)


def consecutive_dedup(tokens: Array, content: Array) -> tuple[Array, Array]:
  """Removes content tokens equal to their left neighbour (keeps the first of each run).

  Kept tokens are compacted to the left, followed by EOS and PAD. Vectorised: each kept token
  goes to (number of kept tokens before it), written with one scatter; dropped ones are sent
  out of range and discarded.

  Args:
    tokens: [n, t] int; content: [n, t] bool (positions < length - 1).

  Returns:
    (deduplicated [n, t] int32, new lengths [n] int32, EOS included).
  """
  n, t = tokens.shape
  keep = content & ~stutter_mask(tokens, content)
  target = jnp.where(keep, jnp.cumsum(keep, axis=-1) - 1, t)
  rows = jnp.arange(n)[:, None]
  compact = jnp.zeros((n, t), jnp.int32).at[rows, target].set(tokens.astype(jnp.int32), mode="drop")
  num_kept = jnp.sum(keep, axis=-1).astype(jnp.int32)
  new_content, new_eos, _ = length_layout(num_kept + 1, t)
  return frame_tokens(compact, new_content, new_eos), num_kept + 1


def optimal_dedup(
    candidate_ids: Array, candidate_log_probs: Array, content: Array
) -> tuple[Array, Array]:
  """Optimal de-duplicated decoding (Sun & Yang 2020) by Viterbi over top-k candidates.

  Chooses, per row, one of the k candidates at every content position so that no two adjacent
  content tokens are equal and the total log-prob is maximal. Positions outside the content
  carry the state unchanged (identity transition, no emission), so rows of different lengths
  share one scan.

  Args:
    candidate_ids: [n, t, k] int: distinct candidate tokens per position.
    candidate_log_probs: [n, t, k] float: their log-probs.
    content: [n, t] bool.

  Returns:
    (tokens [n, t] int32 at content positions (other positions: undefined, to be framed),
     token log-probs [n, t] float32, 0 outside the content).
  """
  n, t, k = candidate_ids.shape
  ids = jnp.moveaxis(candidate_ids, 1, 0)  # [t, n, k]
  log_probs = jnp.moveaxis(candidate_log_probs.astype(jnp.float32), 1, 0)
  is_content = jnp.moveaxis(content, 1, 0)  # [t, n]
  identity = jnp.broadcast_to(jnp.arange(k), (n, k))

  first = jnp.where(is_content[0][:, None], log_probs[0], 0.0)  # [n, k]

  def step(carry, xs):
    score, previous_ids = carry  # [n, k] total log-prob of the best path ending in each state
    cur_ids, cur_log_probs, cur_content = xs
    # allowed[n, prev, cur]: the two neighbouring tokens differ.
    allowed = previous_ids[:, :, None] != cur_ids[:, None, :]
    through = jnp.where(allowed, score[:, :, None], -jnp.inf)
    best_prev = jnp.argmax(through, axis=1)  # [n, k]
    new_score = jnp.max(through, axis=1) + cur_log_probs
    # Past the content (EOS, PAD) the path is left as is, so the backtrack passes through.
    new_score = jnp.where(cur_content[:, None], new_score, score)
    back = jnp.where(cur_content[:, None], best_prev, identity)
    new_ids = jnp.where(cur_content[:, None], cur_ids, previous_ids)
    return (new_score, new_ids), back

  (final_score, _), backpointers = jax.lax.scan(
      step, (first, ids[0]), (ids[1:], log_probs[1:], is_content[1:])
  )
  last_state = jnp.argmax(final_score, axis=-1)  # [n]

  def backtrack(state, back):
    previous = jnp.take_along_axis(back, state[:, None], axis=-1)[:, 0]
    return previous, state

  first_state, later_states = jax.lax.scan(backtrack, last_state, backpointers, reverse=True)
  states = jnp.concatenate([first_state[None], later_states], axis=0).T  # [n, t]
  tokens = jnp.take_along_axis(candidate_ids, states[..., None], axis=-1)[..., 0]
  token_log_probs = jnp.take_along_axis(candidate_log_probs, states[..., None], axis=-1)[..., 0]
  return tokens.astype(jnp.int32), jnp.where(content, token_log_probs, 0.0).astype(jnp.float32)


def score_hypotheses(
    token_log_probs: Array, lengths: Array, length_log_probs: Array, config: DecodingConfig
) -> Array:
  """[n] float32 scores from content-token log-probs [n, t] (0 elsewhere) and lengths [n].

  A length-1 hypothesis (EOS only) has no content: its 'mean' is 0, not NaN.
  """
  total = jnp.sum(token_log_probs, axis=-1)
  num_content = (lengths - 1).astype(jnp.float32)
  if config.score == "sum":
    score = total
  elif config.score == "mean":
    score = total / jnp.maximum(num_content, 1.0)
  else:
    score = total / ((5.0 + lengths.astype(jnp.float32)) / 6.0) ** config.length_penalty_alpha
  if config.add_length_log_prob:
    score = score + length_log_probs
  return score.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------
# The decoder loop.


class _LoopState(flax.struct.PyTreeNode):
  step: Array  # [] int32 passes run so far (by the whole batch)
  inputs: Array  # [n, t] int32 next pass's decoder input
  predictions: Array  # [n, t] int32 last pass's framed argmax
  candidate_ids: Array  # [n, t, k'] int32 top-k' ids of the last pass (k' = k or 1)
  candidate_log_probs: Array  # [n, t, k'] float32 their log-probs
  done: Array  # [b] bool: converged, frozen
  passes: Array  # [b] int32


def iterative_refinement_decode(
    refine_fn: RefineFn,
    length_logits: Array,
    rng: Array,
    config: DecodingConfig,
    max_decode_length: int,
    length_beam_lengths: Array | None = None,
) -> DecodeResult:
  """Parallel decoding with iterative refinement over a beam of lengths.

  All b * l hypotheses are decoded together as n rows in t5x's flat_batch_beam_expand order
  (example 0's l hypotheses, then example 1's, ...). Each pass runs `refine_fn` on every row;
  rows of converged examples are still computed (one batched call) but their result is
  discarded, so their tokens and pass count stay frozen.

  Args:
    refine_fn: one decoder pass, see `RefineFn`.
    length_logits: [b, L] float length-classifier logits (class j = length j + 1).
    rng: PRNG key; the output is a deterministic function of it.
    config: DecodingConfig (static under jit).
    max_decode_length: t (static).
    length_beam_lengths: optional [b, l] int32 lengths to decode instead of the classifier's
      top-l (e.g. gold lengths for analysis); their log-probs are still read from the classifier.

  Returns:
    DecodeResult with b = length_logits.shape[0], l = config.length_beam, t = max_decode_length.
  """
  batch_size = length_logits.shape[0]
  t = max_decode_length
  if length_beam_lengths is None:
    lengths, length_log_probs = select_lengths(
        length_logits, config.length_beam, t, config.min_length
    )
  else:
    lengths = jnp.clip(length_beam_lengths.astype(jnp.int32), 1, t)
    all_log_probs = jax.nn.log_softmax(
        jnp.where(
            jnp.arange(length_logits.shape[-1]) < t, length_logits.astype(jnp.float32), -jnp.inf
        ),
        axis=-1,
    )
    length_log_probs = jnp.take_along_axis(
        all_log_probs, jnp.clip(lengths - 1, 0, length_logits.shape[-1] - 1), axis=-1
    )
  beam = lengths.shape[1]
  n = batch_size * beam
  flat_lengths = lengths.reshape(n)
  content, eos, length_mask = length_layout(flat_lengths, t)
  init_rng, loop_rng = jax.random.split(rng)
  inputs = initial_tokens(init_rng, flat_lengths, t, config)
  k = config.dedup_top_k if config.dedup == "optimal" else 1

  def one_pass(state: _LoopState) -> _LoopState:
    logits = refine_fn(state.inputs, length_mask)
    log_probs = jax.nn.log_softmax(
        restrict_logits(logits, config.vocab_low, config.vocab_high), axis=-1
    )
    # top_k's first entry is the argmax (lowest id among ties), so it is the prediction.
    candidate_log_probs, candidate_ids = jax.lax.top_k(log_probs, k)
    candidate_ids = candidate_ids.astype(jnp.int32)
    predictions = frame_tokens(candidate_ids[..., 0], content, eos)
    # The first pass always counts as a change: its "previous prediction" is the initial guess.
    changed = jnp.any((predictions != state.predictions).reshape(batch_size, -1), axis=-1)
    changed = changed | (state.step == 0)
    active = ~state.done  # [b] examples that take this pass
    active_rows = jnp.repeat(active, beam)  # [n]

    next_inputs = predictions
    if config.remask_stutter:
      next_inputs = remask_stutter(
          jax.random.fold_in(loop_rng, state.step), predictions, content, config
      )

    def keep_frozen(new, old):
      mask = active_rows.reshape((n,) + (1,) * (new.ndim - 1))
      return jnp.where(mask, new, old)

    return _LoopState(
        step=state.step + 1,
        inputs=keep_frozen(next_inputs, state.inputs),
        predictions=keep_frozen(predictions, state.predictions),
        candidate_ids=keep_frozen(candidate_ids, state.candidate_ids),
        candidate_log_probs=keep_frozen(candidate_log_probs, state.candidate_log_probs),
        done=state.done | (active & ~changed),
        passes=state.passes + active.astype(jnp.int32),
    )

  def not_finished(state: _LoopState) -> Array:
    return (state.step < config.max_passes) & ~jnp.all(state.done)

  initial_state = _LoopState(
      step=jnp.zeros((), jnp.int32),
      inputs=inputs,
      predictions=inputs,
      candidate_ids=jnp.zeros((n, t, k), jnp.int32),
      candidate_log_probs=jnp.zeros((n, t, k), jnp.float32),
      done=jnp.zeros((batch_size,), bool),
      passes=jnp.zeros((batch_size,), jnp.int32),
  )
  final = jax.lax.while_loop(not_finished, one_pass, initial_state)

  if config.dedup == "optimal":
    viterbi_tokens, token_log_probs = optimal_dedup(
        final.candidate_ids, final.candidate_log_probs, content
    )
    sequences = frame_tokens(viterbi_tokens, content, eos)
  else:
    token_log_probs = jnp.where(content, final.candidate_log_probs[..., 0], 0.0)
    sequences = final.predictions
    if config.dedup == "consecutive":
      # Scores stay those of the hypothesis as decoded (before removing repeats): the removed
      # tokens were predicted, and rescoring the shortened sequence would need another pass.
      sequences, _ = consecutive_dedup(sequences, content)

  scores = score_hypotheses(token_log_probs, flat_lengths, length_log_probs.reshape(n), config)

  # Sort each example's hypotheses by increasing score: best last, as t5x expects.
  scores = scores.reshape(batch_size, beam)
  order = jnp.argsort(scores, axis=-1, stable=True)

  def by_score(x):
    x = x.reshape((batch_size, beam) + x.shape[1:])
    return jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)

  return DecodeResult(
      sequences=by_score(sequences).astype(jnp.int32),
      scores=by_score(scores.reshape(n)).astype(jnp.float32),
      lengths=by_score(flat_lengths).astype(jnp.int32),
      passes=final.passes,
      token_log_probs=by_score(token_log_probs).astype(jnp.float32),
  )


# Jitted convenience wrapper: refine_fn must be hashable (a function, or a functools.partial of
# hashable arguments); one compile per (refine_fn, config, shapes).
jit_iterative_refinement_decode = jax.jit(
    iterative_refinement_decode, static_argnames=("refine_fn", "config", "max_decode_length")
)


# ----------------------------------------------------------------------------------------------
# With the PaDIR network.


def expand_to_beam(x: Array, beam: int) -> Array:
  """[b, ...] -> [b * beam, ...], each row repeated beam times (t5x flat_batch_beam_expand)."""
  return jnp.repeat(x, beam, axis=0)


@functools.partial(jax.jit, static_argnames=("module", "config", "max_decode_length"))
def _decode_with_network(
    module,
    params,
    encoder_input_tokens: Array,
    rng: Array,
    config: DecodingConfig,
    max_decode_length: int,
    encoded: Array | None,
) -> DecodeResult:
  variables = {"params": params}
  if encoded is None:
    encoded = module.apply(variables, encoder_input_tokens, enable_dropout=False, method="encode")
  length_logits = module.apply(variables, encoded, encoder_input_tokens, method="predict_length")
  # The encoder runs once per example; its output is shared by the example's l hypotheses.
  beam_encoded = expand_to_beam(encoded, config.length_beam)
  beam_inputs = expand_to_beam(encoder_input_tokens, config.length_beam)

  def refine_fn(decoder_input_tokens, length_mask):
    return module.apply(
        variables,
        beam_encoded,
        beam_inputs,
        decoder_input_tokens,
        length_mask,
        enable_dropout=False,
        method="decode",
    )

  return iterative_refinement_decode(refine_fn, length_logits, rng, config, max_decode_length)


def decode_with_network(
    module,
    params: Any,
    encoder_input_tokens: Array,
    rng: Array,
    config: DecodingConfig,
    max_decode_length: int,
    encoded: Array | None = None,
) -> DecodeResult:
  """Encodes once, predicts the length beam and decodes it with `iterative_refinement_decode`.

  Jitted (module, config and max_decode_length static): one compile per input shape.

  Args:
    module: a padir_t5x.network.Transformer (hashable flax module).
    params: its 'params' collection.
    encoder_input_tokens: [b, s] int32.
    rng: PRNG key (random initial tokens, stutter re-randomisation).
    config: DecodingConfig.
    max_decode_length: t, at most the network's maximum target length.
    encoded: optional [b, s, d] encoder output, to skip re-encoding.

  Returns:
    DecodeResult, best hypothesis last along axis 1.
  """
  return _decode_with_network(
      module, params, jnp.asarray(encoder_input_tokens), rng, config, max_decode_length, encoded
  )


@functools.partial(jax.jit, static_argnames=("module", "config", "max_decode_length"))
def _encode_and_longest_length(
    module, params, encoder_input_tokens: Array, config: DecodingConfig, max_decode_length: int
):
  variables = {"params": params}
  encoded = module.apply(variables, encoder_input_tokens, enable_dropout=False, method="encode")
  length_logits = module.apply(variables, encoded, encoder_input_tokens, method="predict_length")
  lengths, _ = select_lengths(
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
    config: DecodingConfig,
    max_decode_length: int,
    buckets: Sequence[int] = (16, 24, 32, 48, 64, 96, 128),
) -> tuple[DecodeResult, int]:
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
      decode_with_network(
          module, params, encoder_input_tokens, rng, config, bucket, encoded=encoded
      ),
      bucket,
  )
