"""De-duplication of PaDIR hypotheses: the repeated neighbouring tokens of parallel decoding.

Parallel decoding's typical failure is token stutter ("the the cat"): neighbouring positions
predict the same token because each reads the same source context. Two remedies, chosen by
`DecodingConfig.dedup` (modes.DedupMode):

* 'consecutive': drop the stutter of layout.stutter_mask (DecodingConfig.stutter_unit): every
  content token equal to its left neighbour ('piece'), or every word repeating the whole word
  before it ('word'), keeping the first of each run; the hypothesis gets shorter.
* 'optimal' (Sun & Yang 2020): the best sequence over the top-k tokens of each position with no
  two equal neighbours, by Viterbi; keeps the length. It stays piece-level whatever the
  stutter unit (a word-level constraint would need the word boundaries inside the Viterbi
  state), so it still breaks `▁a p p le s`.

Shapes: n = hypothesis rows, t = positions, k = candidates per position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from padir_t5x.core import layout

Array = jnp.ndarray


def consecutive_dedup(
    tokens: Array, content: Array, word_starts: Array | None = None, keep: Array | None = None
) -> tuple[Array, Array]:
  """Removes stutter (layout.stutter_mask), keeping the first of each run.

  Without `word_starts`, content tokens equal to their left neighbour; with a [V] bool
  word-start table, the pieces of every word that repeats the whole word before it.

  Kept tokens are compacted to the left, followed by EOS and PAD. Vectorised: each kept token
  goes to (number of kept tokens before it), written with one scatter; dropped ones are sent
  out of range and discarded.

  Args:
    tokens: [n, t] int; content: [n, t] bool (positions < length - 1).
    word_starts: None ('piece') or [V] bool ('word'), see DecodingConfig.stutter_word_starts.
    keep: optional [n, t] bool content positions never dropped (forced tokens; a kept prefix
      stays in place). None: only stutter decides.

  Returns:
    (deduplicated [n, t] int32, new lengths [n] int32, EOS included).
  """
  n, t = tokens.shape
  stutter = layout.stutter_mask(tokens, content, word_starts)
  if keep is not None:
    stutter = stutter & ~keep
  keep = content & ~stutter
  target = jnp.where(keep, jnp.cumsum(keep, axis=-1) - 1, t)
  rows = jnp.arange(n)[:, None]
  compact = jnp.zeros((n, t), jnp.int32).at[rows, target].set(tokens.astype(jnp.int32), mode="drop")
  num_kept = jnp.sum(keep, axis=-1).astype(jnp.int32)
  new_content, new_eos, _ = layout.length_layout(num_kept + 1, t)
  return layout.frame_tokens(compact, new_content, new_eos), num_kept + 1


def optimal_dedup(
    candidate_ids: Array, candidate_log_probs: Array, content: Array
) -> tuple[Array, Array]:
  """Optimal de-duplicated decoding (Sun & Yang 2020) by Viterbi over top-k candidates.

  Chooses, per row, one of the k candidates at every content position so that no two adjacent
  content tokens are equal and the total log-prob is maximal. Piece-level whatever
  DecodingConfig.stutter_unit: equal pieces inside a word (`▁a p p le s`) are ruled out too. Positions outside the content
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
