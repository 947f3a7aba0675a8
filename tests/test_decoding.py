"""Tests of PaDIR inference (padir_t5x/decoders/decoding.py) with hand-made refine functions.

A refine function is a pure function of the decoder input, so the tests encode "what pass is
this" in the tokens themselves (e.g. a counter that advances by one each pass) and read the
loop's behaviour (early stop, freezing, re-masking) off the final tokens and pass counts.
"""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from padir_t5x import EOS_ID
from padir_t5x import MASK_ID
from padir_t5x import PAD_ID
from padir_t5x.decoders import bucketing
from padir_t5x.decoders import decoding
from padir_t5x.decoders import dedup
from padir_t5x.core import layout
from padir_t5x.decoders import length_candidates
from padir_t5x.core import network
from padir_t5x.core import network_config
from padir_t5x.decoders import refinement
from padir_t5x.decoders import remasking
from padir_t5x.decoders.decoding_config import DecodingConfig

V = 12  # network vocabulary in these tests; ordinary ids are [4, 12)
LOW = 4
T = 6  # max_decode_length


def _config(**overrides):
  # Explicit so that each test states the behaviour it checks, whatever the library defaults.
  defaults = dict(
      length_beam=1,
      max_passes=4,
      init="mask",
      dedup="none",
      vocab_high=V,
      remask="none",
      add_length_log_prob=False,
      min_length=1,
      stutter_unit="piece",  # the toy ids have no words
  )
  defaults.update(overrides)
  return DecodingConfig(**defaults)


def _length_logits(lengths_by_preference, num_classes=8):
  """[b, L] logits ranking, per example, the given lengths first (in that order)."""
  logits = np.zeros((len(lengths_by_preference), num_classes), np.float32)
  for row, lengths in enumerate(lengths_by_preference):
    for rank, length in enumerate(lengths):
      logits[row, length - 1] = 10.0 - rank
  return jnp.asarray(logits)


def _decode(refine_fn, length_logits, config, rng=0, max_decode_length=T):
  return jax.tree.map(
      np.asarray,
      decoding.jit_iterative_refinement_decode(
          refine_fn, length_logits, jax.random.PRNGKey(rng), config, max_decode_length
      ),
  )


def _check_layout(result):
  """EOS at length-1, PAD after, only ordinary ids before (no dedup: lengths are final)."""
  positions = np.arange(result.sequences.shape[-1])
  lengths = result.lengths[..., None]
  np.testing.assert_array_equal(result.sequences[positions == lengths - 1], EOS_ID)
  assert np.all(result.sequences[positions[None, None] >= lengths] == PAD_ID)
  content = result.sequences[np.broadcast_to(positions < lengths - 1, result.sequences.shape)]
  assert np.all((content >= LOW) & (content < V))


# ----------------------------------------------------------------------------------------------
# Config.


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(dedup="greedy"), "unknown dedup"),
        (dict(length_beam=0), "length_beam"),
        (dict(max_passes=0), "max_passes"),
        (dict(init="noise"), "unknown init"),
        (dict(score="max"), "unknown score"),
        (dict(dedup="optimal", dedup_top_k=1), "dedup_top_k"),
        (dict(vocab_low=1), "vocab_low"),
        (dict(vocab_high=3), "empty"),
        (dict(inits_per_length=0), "inits_per_length"),
        (dict(inits_per_length=2), "inits_per_length=2 needs init='random'"),
        (dict(length_offsets=-1), "length_offsets"),
        (dict(prediction="mean"), "unknown prediction"),
        (dict(remask="lowest"), "unknown remask"),
        (dict(refine_top_k=0), "refine_top_k must be in 1..num_candidates"),
        (dict(length_beam=2, refine_top_k=3), r"refine_top_k must be in 1..num_candidates \(2"),
        (
            dict(length_beam=2, inits_per_length=2, init="random", refine_top_k=5),
            r"refine_top_k .*\(4",
        ),
    ],
)
def test_config_rejects_bad_values(overrides, message):
  with pytest.raises(ValueError, match=message):
    _config(**overrides)


def test_random_init_without_vocab_high_fails_when_decoding():
  # Constructible (PadirModel fills vocab_high in from its vocabulary), but not decodable.
  config = _config(init="random", vocab_high=None)
  with pytest.raises(ValueError, match="vocab_high"):
    _decode(_counter_refine([0]), _length_logits([[3]]), config)


def test_length_beam_larger_than_decodable_lengths_is_an_error():
  with pytest.raises(ValueError, match="length_beam"):
    length_candidates.select_lengths(jnp.zeros((1, 8)), length_beam=4, max_decode_length=3)


# ----------------------------------------------------------------------------------------------
# Early stop.


def _counter_refine(caps):
  """Each pass writes (previous token at position 0) + 1 everywhere, up to a per-row cap.

  From all-[MASK] input the first pass writes LOW; row r then advances by one per pass until it
  reaches LOW + caps[r], so its prediction stops changing at pass caps[r] + 2.
  """
  caps = jnp.asarray(caps)

  def refine(tokens, length_mask):
    del length_mask
    first = tokens[:, 0]
    value = jnp.where(first == MASK_ID, LOW, jnp.minimum(first + 1, LOW + caps))
    return 5.0 * jax.nn.one_hot(jnp.broadcast_to(value[:, None], tokens.shape), V)

  return refine


def test_early_stop_counts_passes_per_example():
  # Rows (b=3, l=2): example 0's hypotheses converge at passes 2 and 2, example 1's at 2 and 3
  # (the example waits for its slowest hypothesis), example 2 would need 7 > max_passes.
  refine = _counter_refine([0, 0, 0, 1, 5, 5])
  logits = _length_logits([[4, 3], [4, 3], [4, 3]])
  result = _decode(refine, logits, _config(length_beam=2, max_passes=4))
  np.testing.assert_array_equal(result.passes, [2, 3, 4])
  # Frozen rows keep the tokens of their last pass; example 2 ran exactly max_passes passes.
  content = result.sequences[:, :, 0]
  np.testing.assert_array_equal(np.sort(content, axis=1), [[4, 4], [4, 5], [7, 7]])
  _check_layout(result)


def test_single_pass():
  refine = _counter_refine([5])
  result = _decode(refine, _length_logits([[4]]), _config(max_passes=1))
  np.testing.assert_array_equal(result.passes, [1])
  np.testing.assert_array_equal(result.sequences[0, 0], [4, 4, 4, EOS_ID, 0, 0])


# ----------------------------------------------------------------------------------------------
# Stutter re-masking.


def _stutter_then_fill_refine(tokens, length_mask):
  """All-[MASK] content -> 5 everywhere (a stutter); [MASK] elsewhere -> 6 + position; else copy.

  Without re-masking the stutter 5 5 5 is copied forever; with it, positions 1.. are re-masked
  and filled with distinct tokens.
  """
  content = (length_mask > 0) & (tokens != EOS_ID)
  all_masked = jnp.all(jnp.where(content, tokens == MASK_ID, True), axis=-1, keepdims=True)
  positions = jnp.arange(tokens.shape[1])[None, :]
  value = jnp.where(all_masked, 5, jnp.where(tokens == MASK_ID, 6 + positions, tokens))
  return 5.0 * jax.nn.one_hot(value, V)


@pytest.mark.parametrize(
    "remask, expected_content, expected_passes", [(True, [5, 7, 8], 3), (False, [5, 5, 5], 2)]
)
def test_stutter_remasking(remask, expected_content, expected_passes):
  result = _decode(
      _stutter_then_fill_refine,
      _length_logits([[4]]),
      _config(remask="stutter" if remask else "none"),
  )
  np.testing.assert_array_equal(result.sequences[0, 0], expected_content + [EOS_ID, 0, 0])
  np.testing.assert_array_equal(result.passes, [expected_passes])


def test_remask_stutter_with_random_init_draws_fresh_ordinary_tokens():
  config = _config(init="random", remask="stutter")
  predictions = jnp.array([[5, 5, 5, 6, 6, EOS_ID, 0, 0]] * 64, jnp.int32)
  content = jnp.arange(8)[None, :] < 5
  out = np.asarray(remasking.remask_stutter(jax.random.PRNGKey(0), predictions, content, config))
  # The first token of each run is kept; the repeats are replaced by tokens in [LOW, V).
  np.testing.assert_array_equal(out[:, [0, 3, 5, 6, 7]], [[5, 6, EOS_ID, 0, 0]] * 64)
  assert np.all((out[:, [1, 2, 4]] >= LOW) & (out[:, [1, 2, 4]] < V))
  assert len(np.unique(out[:, [1, 2, 4]])) > 3  # fresh random draws, not a constant
  other = remasking.remask_stutter(jax.random.PRNGKey(1), predictions, content, config)
  assert not np.array_equal(out, np.asarray(other))


def _recording(refine):
  """(refine', inputs): refine' appends each decoder input it is run on to `inputs`, in order."""
  seen = []

  def wrapped(tokens, length_mask):
    jax.debug.callback(lambda x: seen.append(np.asarray(x)), tokens, ordered=True)
    return refine(tokens, length_mask)

  return wrapped, seen


def _mask_count_confidence_refine(tokens, length_mask):
  """Predicts 5 everywhere, with a confidence that depends on the position and on how many
  [MASK] tokens the input holds (distinct over 8 neighbouring positions), so that the least
  confident positions differ from pass to pass."""
  del length_mask
  masks = jnp.sum(tokens == MASK_ID, axis=-1, keepdims=True)  # [n, 1]
  confidence = 1.0 + (5 * jnp.arange(tokens.shape[1])[None, :] + masks) % 8  # [n, t]
  return confidence[..., None] * jax.nn.one_hot(jnp.full(tokens.shape, 5), V)


def test_low_confidence_remasking_follows_the_mask_predict_schedule():
  refine, seen = _recording(_mask_count_confidence_refine)
  config = _config(length_beam=2, max_passes=3, remask="low_confidence")
  result = decoding.iterative_refinement_decode(
      refine, _length_logits([[9, 6]], 10), jax.random.PRNGKey(0), config, 10
  )
  # The prediction (5 everywhere) never changes after the first pass, yet the schedule runs all
  # T passes: the input is re-masked less every pass.
  np.testing.assert_array_equal(result.passes, [3])
  assert len(seen) == 3
  # Rows in length-beam order: length 9 (8 content positions), then 6 (5). Masks per pass input:
  # all, then floor(N * (T - i) / T) (rounding would give 3 and 2 in the last pass).
  for row, num_content, counts in ((0, 8, [8, 5, 2]), (1, 5, [5, 3, 1])):
    masked = [np.flatnonzero(inputs[row, :num_content] == MASK_ID) for inputs in seen]
    assert [len(m) for m in masked] == counts
    for i in (1, 2):
      # Exactly the least confident positions of the previous pass (its confidence depends on
      # how many masks its input held).
      confidence = 1 + (5 * np.arange(num_content) + counts[i - 1]) % 8
      np.testing.assert_array_equal(masked[i], np.sort(np.argsort(confidence)[: counts[i]]))


def test_low_confidence_remask_count_is_floored_and_ends_at_zero():
  counts = [
      np.asarray(remasking.low_confidence_count(jnp.array([10, 7, 1, 0]), jnp.asarray(i), 4))
      for i in range(5)
  ]
  np.testing.assert_array_equal(
      counts, [[7, 5, 0, 0], [5, 3, 0, 0], [2, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
  )


# ----------------------------------------------------------------------------------------------
# Summed log-probs.


def test_summed_prediction_is_the_argmax_of_the_summed_log_probs():
  # Random logits for each (input token, position): the passes' inputs differ, so do their
  # logits. Rows: lengths 6 then 4.
  table = 2.0 * jax.random.normal(jax.random.PRNGKey(3), (V, T, V))

  def random_refine(tokens, length_mask):
    del length_mask
    return table[tokens, jnp.arange(tokens.shape[1])]

  refine, seen = _recording(random_refine)
  config = _config(length_beam=2, max_passes=4, prediction="summed", score="sum")
  result = _decode(refine, _length_logits([[6, 4]]), config)
  assert len(seen) == result.passes[0] > 1
  log_probs = np.stack(
      [jax.nn.log_softmax(refinement.restrict_logits(random_refine(x, None), LOW, V)) for x in seen]
  )  # [passes, 2, T, V]
  summed = np.argmax(log_probs.sum(axis=0), axis=-1)  # [2, T]
  for j, length in enumerate(result.lengths[0]):
    row = 0 if length == 6 else 1
    np.testing.assert_array_equal(result.sequences[0, j, : length - 1], summed[row, : length - 1])
    # The score is the last pass's log-probs of the predicted (summed-argmax) tokens.
    expected = log_probs[-1, row, np.arange(length - 1), summed[row, : length - 1]].sum()
    np.testing.assert_allclose(result.scores[0, j], expected, rtol=1e-5)
  last = np.argmax(log_probs[-1], axis=-1)
  assert np.any(summed[0, :5] != last[0, :5])  # the sum made a difference


def _strong_then_weak_refine(tokens, length_mask):
  """All-[MASK] content -> 5 with logit 3.5; any other input -> 6 with logit 1."""
  content = (length_mask > 0) & (tokens != EOS_ID)
  all_masked = jnp.all(jnp.where(content, tokens == MASK_ID, True), axis=-1, keepdims=True)
  return jnp.where(
      all_masked[..., None],
      3.5 * jax.nn.one_hot(jnp.full(tokens.shape, 5), V),
      jax.nn.one_hot(jnp.full(tokens.shape, 6), V),
  )


@pytest.mark.parametrize("prediction, expected_passes", [("last", 3), ("summed", 6)])
def test_summed_prediction_stops_only_at_a_fixed_point(prediction, expected_passes):
  """With 'summed', 5 leads 6 by 3.5 - 1 per later pass: passes 1-3 keep predicting 5 although
  each of them alone predicts 6 (an unchanged prediction that is no fixed point), pass 4 flips
  to 6 and pass 5 confirms it. 'last' predicts 6 from pass 1 and stops after pass 2."""
  config = _config(max_passes=8, prediction=prediction)
  result = _decode(_strong_then_weak_refine, _length_logits([[4]]), config)
  np.testing.assert_array_equal(result.passes, [expected_passes])
  np.testing.assert_array_equal(result.sequences[0, 0], [6, 6, 6, EOS_ID, 0, 0])


# ----------------------------------------------------------------------------------------------
# More candidates: initialisations per length, length offsets.


def _copy_refine_confident_in_first_token(tokens, length_mask):
  """Copies its input, more confidently the larger its first token (so the score ranks it)."""
  del length_mask
  return tokens[:, :1, None].astype(jnp.float32) * jax.nn.one_hot(tokens, V)


def test_inits_per_length_decodes_distinct_initialisations_and_keeps_the_best():
  config = _config(init="random", length_beam=2, inits_per_length=4, max_passes=1)
  assert config.num_candidates == 8
  result = _decode(_copy_refine_confident_in_first_token, _length_logits([[6, 4]]), config)
  assert result.sequences.shape == (1, 8, T) and result.scores.shape == (1, 8)
  np.testing.assert_array_equal(np.sort(result.lengths[0]), [4] * 4 + [6] * 4)
  for length in (4, 6):
    rows = result.sequences[0][result.lengths[0] == length]
    assert len({tuple(r) for r in rows}) == 4  # one pass of a copy: 4 different random inits
  _check_layout(result)
  # The best score wins: the hypothesis with the largest first token (ties score equally).
  assert np.all(np.diff(result.scores[0]) >= 0)
  assert result.sequences[0, -1, 0] == result.sequences[0, :, 0].max()


def test_length_offsets_give_distinct_clipped_lengths_with_their_own_log_probs():
  logits = _length_logits([[8, 3, 5, 2, 4]])  # 8 classes; max_decode_length 8
  config = _config(length_beam=2, length_offsets=1, min_length=2, init="random")
  config = dataclasses.replace(config, inits_per_length=2)
  assert (config.num_lengths, config.num_candidates) == (6, 12)
  lengths, log_probs = jax.tree.map(np.asarray, length_candidates.length_beam(logits, config, 8))
  # Around 8: 7, 8 and 9, clipped to 8, already taken, so the most likely free length (3);
  # around 3: 2, then 3 (taken: the most likely free one, 5), then 4. Adjacent initialisations.
  np.testing.assert_array_equal(lengths[0], np.repeat([7, 8, 3, 2, 5, 4], 2))
  expected = np.asarray(layout.length_log_probs(logits, 8, min_length=2))[0, lengths[0] - 1]
  np.testing.assert_allclose(log_probs[0], expected)
  result = _decode(_length_dependent_refine, logits, config, max_decode_length=8)
  np.testing.assert_array_equal(np.sort(result.lengths[0]), np.sort(lengths[0]))
  _check_layout(result)
  # Without offsets: the top-l lengths.
  plain, _ = length_candidates.length_beam(logits, dataclasses.replace(config, length_offsets=0), 8)
  np.testing.assert_array_equal(plain[0], [8, 8, 3, 3])
  with pytest.raises(ValueError, match="length_offsets 2 asks for 10 distinct lengths"):
    length_candidates.length_beam(logits, dataclasses.replace(config, length_offsets=2), 8)


# ----------------------------------------------------------------------------------------------
# De-duplication.


def test_consecutive_dedup_on_known_sequences():
  tokens = jnp.array(
      [
          [5, 5, 6, 6, 6, 7, 5, EOS_ID, 0, 0],
          [4, 5, 4, 5, EOS_ID, 0, 0, 0, 0, 0],
          [9, 9, 9, 9, 9, 9, 9, 9, 9, EOS_ID],
          [EOS_ID, 0, 0, 0, 0, 0, 0, 0, 0, 0],
      ],
      jnp.int32,
  )
  lengths = jnp.array([8, 5, 10, 1])
  content, _, _ = layout.length_layout(lengths, 10)
  deduplicated, new_lengths = dedup.consecutive_dedup(tokens, content)
  np.testing.assert_array_equal(
      deduplicated,
      [
          [5, 6, 7, 5, EOS_ID, 0, 0, 0, 0, 0],
          [4, 5, 4, 5, EOS_ID, 0, 0, 0, 0, 0],
          [9, EOS_ID, 0, 0, 0, 0, 0, 0, 0, 0],
          [EOS_ID, 0, 0, 0, 0, 0, 0, 0, 0, 0],
      ],
  )
  np.testing.assert_array_equal(new_lengths, [5, 5, 2, 1])


def _brute_force_dedup(ids, log_probs, num_content):
  best, best_score = None, -np.inf
  for choice in itertools.product(range(ids.shape[1]), repeat=num_content):
    tokens = [ids[i, c] for i, c in enumerate(choice)]
    if any(a == b for a, b in zip(tokens, tokens[1:])):
      continue
    score = sum(log_probs[i, c] for i, c in enumerate(choice))
    if score > best_score:
      best, best_score = tokens, score
  return best, best_score


def test_optimal_dedup_matches_brute_force():
  rng = np.random.default_rng(0)
  n, t, k = 6, 6, 3
  # Candidates drawn from only 4 ids, so neighbours often share candidates; the top candidate
  # is often the same at neighbouring positions (the case dedup exists for).
  ids = np.stack([np.stack([rng.permutation(4)[:k] + LOW for _ in range(t)]) for _ in range(n)])
  ids[:, 1::2, 0] = ids[:, 0::2, 0]
  log_probs = np.sort(np.log(rng.dirichlet(np.ones(8), size=(n, t))[..., :k]), axis=-1)[..., ::-1]
  lengths = np.array([6, 5, 4, 2, 1, 6])
  content, _, _ = layout.length_layout(jnp.asarray(lengths), t)
  tokens, token_log_probs = dedup.optimal_dedup(jnp.asarray(ids), jnp.asarray(log_probs), content)
  tokens, token_log_probs = np.asarray(tokens), np.asarray(token_log_probs)
  for row in range(n):
    num_content = lengths[row] - 1
    expected, expected_score = _brute_force_dedup(ids[row], log_probs[row], num_content)
    np.testing.assert_array_equal(tokens[row, :num_content], expected)
    np.testing.assert_allclose(
        token_log_probs[row].sum(), expected_score if num_content else 0, rtol=1e-5
    )
    assert np.all(token_log_probs[row, num_content:] == 0)


def _fixed_target_refine(target, confidence=3.0):
  """Logits favouring `target` [t] at every row, whatever the input."""
  target = jnp.asarray(target)

  def refine(tokens, length_mask):
    del length_mask
    return confidence * jax.nn.one_hot(jnp.broadcast_to(target, tokens.shape), V)

  return refine


@pytest.mark.parametrize("dedup", ["none", "consecutive", "optimal"])
def test_decode_dedup_modes(dedup):
  refine = _fixed_target_refine([5, 5, 6, 6, 7, 8])
  result = _decode(refine, _length_logits([[6]]), _config(dedup=dedup, dedup_top_k=2))
  sequence = result.sequences[0, 0]
  np.testing.assert_array_equal(result.lengths, [[6]])  # lengths before dedup
  if dedup == "none":
    np.testing.assert_array_equal(sequence, [5, 5, 6, 6, 7, EOS_ID])
  elif dedup == "consecutive":
    np.testing.assert_array_equal(sequence, [5, 6, 7, EOS_ID, 0, 0])
  else:
    # The second candidate everywhere is 4 (the lowest of the tied ordinary ids). The best
    # sequence without equal neighbours keeps the length and replaces exactly one token of each
    # pair by 4 (which one is a tie).
    np.testing.assert_array_equal(sequence[[4, 5]], [7, EOS_ID])
    assert np.all(sequence[1:5] != sequence[:4])
    assert sequence[:4].tolist().count(4) == 2
  # Scores: 'none' and 'consecutive' score the hypothesis as decoded (same numbers); 'optimal'
  # the Viterbi sequence, which is worse by two swaps.
  top = jax.nn.log_softmax(jnp.where(jnp.arange(V) >= LOW, 3.0 * jax.nn.one_hot(5, V), -jnp.inf))
  best, second = float(top[5]), float(top[6])
  expected_mean = best if dedup != "optimal" else (3 * best + 2 * second) / 5
  np.testing.assert_allclose(result.scores[0, 0], expected_mean, rtol=1e-5)
  np.testing.assert_allclose(result.token_log_probs[0, 0].sum() / 5, expected_mean, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Length beam, scores, special ids.


def _length_dependent_refine(tokens, length_mask):
  """Target 4 5 6 ...; very confident for hypotheses of length 3, less for the others."""
  length = jnp.sum(length_mask, axis=-1, keepdims=True)[..., None]
  confidence = jnp.where(length == 3, 8.0, 2.0)
  target = LOW + jnp.arange(tokens.shape[1]) % (V - LOW)
  return confidence * jax.nn.one_hot(jnp.broadcast_to(target, tokens.shape), V)


def test_length_beam_decodes_top_lengths_and_puts_best_last():
  # Example 0 prefers length 8 (> T, never decodable), then 2, 5, 3, 4; example 1 prefers 3, 6.
  logits = _length_logits([[8, 7, 2, 5, 3, 4], [3, 6, 1, 2]])
  result = _decode(_length_dependent_refine, logits, _config(length_beam=3))
  assert result.sequences.shape == (2, 3, T)
  assert result.scores.shape == (2, 3) and result.lengths.shape == (2, 3)
  np.testing.assert_array_equal(np.sort(result.lengths, axis=1), [[2, 3, 5], [1, 3, 6]])
  assert np.all(result.lengths <= T)
  # Increasing scores; the confident length-3 hypothesis wins in example 0 although it was only
  # the third most likely length. In example 1 the content-free length-1 hypothesis has mean
  # score 0, the maximum (why add_length_log_prob exists).
  assert np.all(np.diff(result.scores, axis=1) >= 0)
  np.testing.assert_array_equal(result.lengths[:, -1], [3, 1])
  _check_layout(result)


def test_min_length_keeps_the_empty_hypothesis_out_of_the_beam():
  # Same preferences as above: example 1's favourite lengths are 3, 6, 1, 2.
  logits = _length_logits([[8, 7, 2, 5, 3, 4], [3, 6, 1, 2]])
  result = _decode(_length_dependent_refine, logits, _config(length_beam=3, min_length=2))
  np.testing.assert_array_equal(np.sort(result.lengths, axis=1), [[2, 3, 5], [2, 3, 6]])
  assert np.all(result.lengths >= 2)
  with pytest.raises(ValueError, match="min_length"):
    _config(min_length=0)


def test_defaults_are_the_papers_headline_setting():
  config = DecodingConfig(vocab_high=V)
  assert (config.length_beam, config.max_passes, config.remask) == (5, 4, "stutter")
  assert config.min_length == 2 and config.add_length_log_prob
  assert (config.dedup, config.stutter_unit, config.word_starts) == ("consecutive", "word", None)


def test_add_length_log_prob_changes_ranking():
  # Length 1 is very unlikely; adding its log-prob demotes it below length 3.
  logits = jnp.zeros((1, 8)).at[0, 2].set(5.0).at[0, 0].set(-5.0)
  config = _config(length_beam=8, add_length_log_prob=True, score="sum")
  result = _decode(_length_dependent_refine, logits, config, max_decode_length=8)
  assert result.lengths[0, -1] == 3
  length_log_probs = jax.nn.log_softmax(logits[0])
  plain = result.scores[0] - np.asarray(length_log_probs)[result.lengths[0] - 1]
  # Without the length term, the 'sum' score of length 1 (no content) is 0 and the best.
  assert plain[result.lengths[0] == 1] == pytest.approx(0.0)
  assert np.all(plain <= 1e-6)


def test_score_modes():
  refine = _fixed_target_refine([5, 6, 7, 8, 9, 10], confidence=2.0)
  per_token = float(
      jax.nn.log_softmax(jnp.where(jnp.arange(V) >= LOW, 2.0 * jax.nn.one_hot(5, V), -jnp.inf))[5]
  )
  for score, expected in [
      ("sum", 4 * per_token),
      ("mean", per_token),
      ("length_penalty", 4 * per_token / ((5 + 5) / 6) ** 0.6),
  ]:
    result = _decode(refine, _length_logits([[5]]), _config(score=score))
    np.testing.assert_allclose(result.scores[0, 0], expected, rtol=1e-5)


def _special_ids_refine(tokens, length_mask):
  """Strongly favours PAD, EOS, UNK, MASK and the padded ids >= vocab_high; 7 is 3rd best."""
  del length_mask
  preference = jnp.zeros(V).at[:LOW].set(10.0).at[V - 2 :].set(10.0).at[7].set(1.0)
  return jnp.broadcast_to(preference, tokens.shape + (V,))


def test_special_ids_never_predicted():
  config = _config(length_beam=2, vocab_high=V - 2, init="random")
  result = _decode(_special_ids_refine, _length_logits([[5, 2], [6, 4]]), config)
  _check_layout(result)
  content = result.sequences[result.sequences > EOS_ID]
  assert content.size and np.all(content == 7)


# ----------------------------------------------------------------------------------------------
# Determinism and jit.


def _copy_refine(tokens, length_mask):
  del length_mask
  return 4.0 * jax.nn.one_hot(tokens, V)


def test_deterministic_given_rng_and_random_init_varies_with_it():
  config = _config(init="random", max_passes=1, length_beam=2)
  logits = _length_logits([[6, 5], [4, 3]])
  first = _decode(_copy_refine, logits, config, rng=0)
  again = _decode(_copy_refine, logits, config, rng=0)
  other = _decode(_copy_refine, logits, config, rng=1)
  jax.tree.map(np.testing.assert_array_equal, first, again)
  # One pass of a copying decoder returns the random initial tokens: in range, rng-dependent.
  _check_layout(first)
  assert not np.array_equal(first.sequences, other.sequences)
  np.testing.assert_array_equal(np.sort(first.lengths, axis=1), np.sort(other.lengths, axis=1))


def _mixing_refine(tokens, length_mask):
  """Position p predicts its input token plus its left neighbour's (mod the ordinary ids), with a
  confidence that depends on the token: input-dependent, and it stutters now and then."""
  del length_mask
  previous = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))
  value = LOW + (tokens + previous) % (V - LOW)
  return (1.0 + tokens % 3)[..., None] * jax.nn.one_hot(value, V)


def test_default_options_decode_as_the_plain_algorithm():
  """With the decoding options at their defaults (1 initialisation, no length offsets, 'last'
  predictions) a decode is the plain algorithm written out here, with the same rng use: the
  initial fill from split(rng)[0], re-mask fills from fold_in(split(rng)[1], pass)."""
  config = _config(init="random", remask="stutter", length_beam=2, max_passes=6, score="sum")
  logits = _length_logits([[6, 4]])
  result = _decode(_mixing_refine, logits, config, rng=7)
  lengths, _ = length_candidates.select_lengths(logits, 2, T)
  content, eos, length_mask = layout.length_layout(lengths[0], T)
  init_rng, loop_rng = jax.random.split(jax.random.PRNGKey(7))
  inputs = layout.frame_tokens(config.fill(init_rng, (2, T)), content, eos)
  previous = inputs
  for step in range(config.max_passes):
    log_probs = jax.nn.log_softmax(refinement.restrict_logits(_mixing_refine(inputs, None), LOW, V))
    predictions = layout.frame_tokens(jnp.argmax(log_probs, axis=-1), content, eos)
    if step and np.array_equal(predictions, previous):
      break
    previous = predictions
    rng = jax.random.fold_in(loop_rng, step)
    inputs = remasking.next_pass_inputs(rng, predictions, content, config)
  np.testing.assert_array_equal(result.passes, [step + 1])
  scores = jnp.sum(jnp.where(content, jnp.max(log_probs, axis=-1), 0.0), axis=-1)
  for j, length in enumerate(result.lengths[0]):
    row = list(np.asarray(lengths[0])).index(length)
    np.testing.assert_array_equal(result.sequences[0, j], predictions[row])
    np.testing.assert_allclose(result.scores[0, j], scores[row], rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Candidate pruning (refine_top_k).


@pytest.mark.parametrize(
    "options",
    [
        dict(init="random", remask="stutter", score="sum"),
        dict(init="random", remask="low_confidence", dedup="optimal", dedup_top_k=2),
        dict(init="random", prediction="summed", inits_per_length=2, dedup="consecutive"),
        dict(init="mask", length_offsets=1, add_length_log_prob=True),
    ],
)
def test_refine_top_k_of_all_candidates_decodes_as_no_pruning(options):
  config = _config(length_beam=2, max_passes=5, **options)
  logits = _length_logits([[6, 4, 3], [2, 5, 4], [3, 6, 2]])
  plain = _decode(_mixing_refine, logits, config, rng=3)
  pruned = _decode(
      _mixing_refine, logits, dataclasses.replace(config, refine_top_k=config.num_candidates), rng=3
  )
  jax.tree.map(np.testing.assert_array_equal, pruned, plain)


def _climbing_refine(tokens, length_mask):
  """Each pass writes (previous token at position 0) + 1 everywhere (LOW from [MASK]), up to the
  last id; confident for hypotheses of length 3, less for the others."""
  first = tokens[:, 0]
  value = jnp.where(first == MASK_ID, LOW, jnp.minimum(first + 1, V - 1))
  length = jnp.sum(length_mask, axis=-1)[:, None, None]
  confidence = jnp.where(length == 3, 8.0, 2.0)
  return confidence * jax.nn.one_hot(jnp.broadcast_to(value[:, None], tokens.shape), V)


def test_refine_top_k_one_refines_only_the_best_first_pass_candidate():
  # b = 2 examples, c = 3 lengths each; length 3 scores best after the first pass.
  logits = _length_logits([[5, 3, 4], [3, 2, 6]])
  config = _config(length_beam=3, max_passes=4)
  recording, seen = _recording(_climbing_refine)
  pruned = _decode(recording, logits, dataclasses.replace(config, refine_top_k=1))
  jax.effects_barrier()
  # The first pass over all b * c = 6 rows, the other three over the b * k = 2 kept rows, which
  # are the length-3 hypotheses.
  assert [len(x) for x in seen] == [6, 2, 2, 2]
  for later in seen[1:]:
    np.testing.assert_array_equal((later != PAD_ID).sum(axis=1), [3, 3])
  np.testing.assert_array_equal(pruned.passes, [4, 4])
  # The kept candidate is the one the unpruned decode makes at its length (mask init, no
  # re-masking: nothing random), and still best; the pruned ones are first-pass hypotheses, with
  # the first pass's scores.
  plain = _decode(_climbing_refine, logits, config)
  one_pass = _decode(_climbing_refine, logits, dataclasses.replace(config, max_passes=1))
  np.testing.assert_array_equal(pruned.lengths[:, -1], [3, 3])
  np.testing.assert_array_equal(pruned.sequences[:, -1], plain.sequences[:, -1])
  np.testing.assert_array_equal(pruned.scores[:, -1], plain.scores[:, -1])
  np.testing.assert_array_equal(pruned.sequences[:, -1, 0], [LOW + 3, LOW + 3])
  for example in range(2):
    for j in range(2):  # the pruned candidates
      length = pruned.lengths[example, j]
      (row,) = np.flatnonzero(one_pass.lengths[example] == length)
      np.testing.assert_array_equal(pruned.sequences[example, j], one_pass.sequences[example, row])
      np.testing.assert_array_equal(pruned.scores[example, j], one_pass.scores[example, row])
    assert pruned.sequences[example, 0, 0] == LOW


def test_refine_top_k_with_a_single_pass_is_the_single_pass():
  logits = _length_logits([[5, 3, 4]])
  config = _config(length_beam=3, max_passes=1)
  recording, seen = _recording(_climbing_refine)
  pruned = _decode(recording, logits, dataclasses.replace(config, refine_top_k=1))
  jax.effects_barrier()
  assert [len(x) for x in seen] == [3]
  jax.tree.map(np.testing.assert_array_equal, pruned, _decode(_climbing_refine, logits, config))


# ----------------------------------------------------------------------------------------------
# With the real network.


def make_tiny_network(max_target_length, **overrides):
  """(module, params, inputs [2, 6]) of a 1+1-layer PaDIR network over a 16-id vocabulary.

  `overrides`: more TransformerConfig fields (e.g. the length predictor's).
  """
  network = pytest.importorskip("padir_t5x.core.network")
  module = network.Transformer(
      network_config.tiny_config(
          vocab_size=16,
          emb_dim=32,
          num_heads=2,
          head_dim=16,
          mlp_dim=64,
          num_encoder_layers=1,
          num_decoder_layers=1,
          max_input_length=8,
          max_target_length=max_target_length,
          dropout_rate=0.0,
          **overrides,
      )
  )
  inputs = jnp.array([[5, 6, 7, EOS_ID, 0, 0], [8, 9, EOS_ID, 0, 0, 0]], jnp.int32)
  targets = jnp.ones((2, max_target_length), jnp.int32)
  params = module.init(jax.random.PRNGKey(0), inputs, targets, targets, enable_dropout=False)[
      "params"
  ]
  return module, params, inputs


@pytest.fixture(scope="module")
def tiny_network():
  return make_tiny_network(8)


def test_decode_with_network(tiny_network):
  module, params, inputs = tiny_network
  config = DecodingConfig(
      length_beam=3,
      max_passes=3,
      vocab_high=14,
      remask="stutter",
      dedup="consecutive",
      stutter_unit="piece",
  )
  result = decoding.decode_with_network(
      module, params, inputs, jax.random.PRNGKey(1), config, max_decode_length=8
  )
  compiled = decoding._decode_with_network._cache_size()
  again = decoding.decode_with_network(
      module, params, inputs, jax.random.PRNGKey(1), config, max_decode_length=8
  )
  assert decoding._decode_with_network._cache_size() == compiled  # jitted: no recompile
  result, again = jax.tree.map(np.asarray, result), jax.tree.map(np.asarray, again)
  assert result.sequences.shape == (2, 3, 8) and result.sequences.dtype == np.int32
  assert result.scores.shape == (2, 3) and result.lengths.shape == (2, 3)
  assert result.passes.shape == (2,) and np.all((result.passes >= 1) & (result.passes <= 3))
  assert np.all(np.diff(result.scores, axis=1) >= 0)
  jax.tree.map(np.testing.assert_array_equal, result, again)

  # The same decode by hand: the lengths are the classifier's top 3 and the encoder output is
  # shared by each example's hypotheses (rows repeated in flat_batch_beam_expand order).
  variables = {"params": params}
  encoded = module.apply(variables, inputs, enable_dropout=False, method=type(module).encode)
  length_logits = module.apply(variables, encoded, inputs, method=type(module).predict_length)
  expected_lengths, _ = length_candidates.select_lengths(length_logits, 3, 8)
  np.testing.assert_array_equal(
      np.sort(result.lengths, axis=1), np.sort(np.asarray(expected_lengths), axis=1)
  )
  with_encoded = decoding.decode_with_network(
      module, params, inputs, jax.random.PRNGKey(1), config, max_decode_length=8, encoded=encoded
  )
  # Same tokens; scores equal up to float rounding (the encoder ran in another computation).
  np.testing.assert_array_equal(result.sequences, np.asarray(with_encoded.sequences))
  np.testing.assert_allclose(result.scores, np.asarray(with_encoded.scores), rtol=1e-5)
  deduplicated = result.sequences
  assert np.all((deduplicated[:, :, 1:] != deduplicated[:, :, :-1]) | (deduplicated[:, :, 1:] == 0))
  content = deduplicated[deduplicated > EOS_ID]
  assert np.all((content >= LOW) & (content < 14))


@pytest.mark.parametrize(
    "pooling, target", [("mean", "offset"), ("token", "absolute"), ("token", "offset")]
)
def test_decode_with_network_and_each_length_predictor(pooling, target):
  k = 2
  module, params, inputs = make_tiny_network(
      8, length_pooling=pooling, length_target=target, max_length_offset=k
  )
  config = DecodingConfig(length_beam=3, max_passes=2, vocab_high=14, stutter_unit="piece")
  decode = functools.partial(
      decoding.decode_with_network, module, params, inputs, jax.random.PRNGKey(1), config, 8
  )
  result = jax.tree.map(np.asarray, decode())
  assert result.sequences.shape == (2, 3, 8) and result.scores.shape == (2, 3)
  assert np.all(np.isfinite(result.scores)) and np.all(np.diff(result.scores, axis=1) >= 0)
  if target == "offset":  # every candidate length is in reach: |length - source length| <= K
    sources = np.sum(np.asarray(inputs) > 0, axis=-1)  # [4, 3]
    assert np.all(np.abs(result.lengths - sources[:, None]) <= k)
  if (pooling, target) == ("token", "offset"):
    # encode's output, [LENGTH] slot included, can be passed in (its beam copies included).
    encoded = module.apply({"params": params}, inputs, enable_dropout=False, method="encode")
    assert encoded.shape[1] == inputs.shape[1] + 1
    with_encoded = jax.tree.map(np.asarray, decode(encoded=encoded))
    np.testing.assert_array_equal(result.sequences, with_encoded.sequences)
    np.testing.assert_allclose(result.scores, with_encoded.scores, rtol=1e-5)


def test_length_buckets():
  assert bucketing.length_buckets(64, (16, 8, 64, 128, 32), 3, 2) == (8, 16, 32, 64)
  # A bucket must hold l lengths >= min_length: 4 + 2 - 1 = 5 positions at least.
  assert bucketing.length_buckets(24, (4, 5, 12), 4, 2) == (5, 12, 24)


def test_bucket_index_is_the_smallest_bucket_that_holds_the_longest_length():
  buckets = (8, 12, 16, 24)
  got = [int(bucketing.bucket_index(jnp.asarray(n), buckets)) for n in (1, 8, 9, 12, 13, 24)]
  assert got == [0, 0, 1, 1, 2, 3]


@pytest.mark.parametrize(
    "favoured, init",
    # Buckets 8, 12 and the full table; both fills (random fills are the case the cut could break).
    [
        ((3, 4, 5), "random"),
        ((9, 10, 11), "mask"),
        ((9, 10, 11), "random"),
        ((20, 21, 22), "random"),
    ],
)
def test_bucketed_decoding_matches_the_full_length_decode(favoured, init):
  """Refining only the bucket (8, 12 or the full 24 positions here) must not change any
  hypothesis: padding positions are masked out of every attention, and random fills are drawn
  over the whole table whatever the bucket."""
  module, params, inputs = make_tiny_network(24)
  # Make the length classifier prefer the classes `favoured` (class i = length i + 1, EOS
  # included), so the beam is known.
  bias = np.full((24,), -20.0, np.float32)
  bias[list(favoured)] = [3.0, 2.0, 1.0]
  params = jax.tree.map(lambda x: x, params)
  params["length_predictor"]["logits"]["bias"] = jnp.asarray(bias)
  params["length_predictor"]["logits"]["kernel"] = jnp.zeros((32, 24))
  config = DecodingConfig(
      length_beam=3, max_passes=3, init=init, vocab_high=14, length_buckets=(), stutter_unit="piece"
  )
  bucketed = dataclasses.replace(config, length_buckets=(8, 12, 16))
  rng = jax.random.PRNGKey(1)
  full = jax.tree.map(
      np.asarray, decoding.decode_with_network(module, params, inputs, rng, config, 24)
  )
  cut = jax.tree.map(
      np.asarray, decoding.decode_with_network(module, params, inputs, rng, bucketed, 24)
  )
  assert cut.sequences.shape == full.sequences.shape == (2, 3, 24)
  np.testing.assert_array_equal(np.sort(cut.lengths, axis=1), [[c + 1 for c in favoured]] * 2)
  np.testing.assert_array_equal(cut.sequences, full.sequences)
  np.testing.assert_array_equal(cut.passes, full.passes)
  np.testing.assert_allclose(cut.scores, full.scores, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(cut.token_log_probs, full.token_log_probs, rtol=1e-4, atol=1e-5)


def test_bucketed_decode_compiles_one_branch_per_bucket():
  module, params, inputs = make_tiny_network(24)
  config = DecodingConfig(length_beam=3, max_passes=2, vocab_high=14, stutter_unit="piece")
  jaxpr = jax.make_jaxpr(
      lambda p, x, r: decoding._decode_with_network.__wrapped__(
          module, p, x, r, dataclasses.replace(config, length_buckets=(8, 12, 16)), 24, None
      )
  )(params, inputs, jax.random.PRNGKey(0))
  (switch,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "cond"]
  assert len(switch.params["branches"]) == 4  # buckets 8, 12, 16 and the full 24


@pytest.fixture(scope="module")
def favouring_network():
  """A 24-position tiny network whose length classifier prefers lengths 5, 6, 7 (classes 4-6)."""
  module, params, inputs = make_tiny_network(24)
  bias = np.full((24,), -20.0, np.float32)
  bias[[4, 5, 6]] = [3.0, 2.0, 1.0]
  params = jax.tree.map(lambda x: x, params)
  params["length_predictor"]["logits"]["bias"] = jnp.asarray(bias)
  params["length_predictor"]["logits"]["kernel"] = jnp.zeros((32, 24))
  return module, params, inputs


@pytest.mark.parametrize(
    "options",
    [
        dict(prediction="summed", length_offsets=1),
        dict(remask="low_confidence", inits_per_length=2, dedup="optimal"),
    ],
)
def test_decode_with_network_options_bucketed_and_not(options, favouring_network):
  module, params, inputs = favouring_network
  config = DecodingConfig(
      length_beam=2, max_passes=3, vocab_high=14, length_buckets=(), stutter_unit="piece", **options
  )
  bucketed = dataclasses.replace(config, length_buckets=(8,))
  rng = jax.random.PRNGKey(2)
  full = jax.tree.map(
      np.asarray, decoding.decode_with_network(module, params, inputs, rng, config, 24)
  )
  cut = jax.tree.map(
      np.asarray, decoding.decode_with_network(module, params, inputs, rng, bucketed, 24)
  )
  c = config.num_candidates
  assert cut.sequences.shape == full.sequences.shape == (2, c, 24)
  assert cut.scores.shape == (2, c) and np.all(np.diff(cut.scores, axis=1) >= 0)
  for lengths in cut.lengths:  # num_lengths distinct lengths, inits_per_length rows each
    assert sorted(np.unique(lengths, return_counts=True)[1]) == [config.inits_per_length] * (
        config.num_lengths
    )
    assert lengths.max() <= 8  # all in the 8-position bucket
  if config.remask == "low_confidence":
    np.testing.assert_array_equal(cut.passes, [3, 3])
  np.testing.assert_array_equal(cut.sequences, full.sequences)
  np.testing.assert_array_equal(cut.lengths, full.lengths)
  np.testing.assert_array_equal(cut.passes, full.passes)
  np.testing.assert_allclose(cut.scores, full.scores, rtol=1e-4, atol=1e-5)


def test_network_refine_fn_equals_the_plain_decoder_pass(tiny_network):
  """Pass-invariant work done once per decode and rows grouped per example change no
  hypothesis: the same decode with the encoder output copied per row and everything redone at
  every pass gives the same tokens and passes."""
  module, params, inputs = tiny_network
  encoded, length_logits = network.encode_and_predict_length(module, params, inputs)
  c = 3

  def plain(tokens, length_mask):
    return module.apply(
        {"params": params},
        jnp.repeat(encoded, c, axis=0),
        jnp.repeat(inputs, c, axis=0),
        tokens,
        length_mask,
        enable_dropout=False,
        method="decode",
    )

  fast = decoding.network_refine_fn(module, params, encoded, inputs)
  config = DecodingConfig(length_beam=c, max_passes=3, vocab_high=14, stutter_unit="piece")
  plain_result, fast_result = (
      jax.tree.map(
          np.asarray,
          decoding.iterative_refinement_decode(fn, length_logits, jax.random.PRNGKey(2), config, 8),
      )
      for fn in (plain, fast)
  )
  np.testing.assert_array_equal(fast_result.sequences, plain_result.sequences)
  np.testing.assert_array_equal(fast_result.passes, plain_result.passes)
  np.testing.assert_allclose(fast_result.scores, plain_result.scores, rtol=1e-5, atol=1e-5)


def test_early_stopping_off_runs_every_pass_and_keeps_fixed_points(tiny_network):
  module, params, inputs = tiny_network
  stopping = DecodingConfig(
      length_beam=2, max_passes=6, vocab_high=14, init="mask", remask="none", stutter_unit="piece"
  )
  fixed = dataclasses.replace(stopping, early_stopping=False)
  a, b = (
      jax.tree.map(
          np.asarray,
          decoding.decode_with_network(module, params, inputs, jax.random.PRNGKey(0), c, 8),
      )
      for c in (stopping, fixed)
  )
  np.testing.assert_array_equal(b.passes, 6)
  stopped = a.passes < 6
  assert stopped.any()
  # An example that stopped was at a fixed point (nothing re-masked): more passes keep it.
  np.testing.assert_array_equal(b.sequences[stopped], a.sequences[stopped])


def test_refine_top_k_with_the_network(favouring_network):
  """Pruning through decode_with_network (bucketed, the decoder's rows grouped per example):
  k = c gives the unpruned hypotheses; k = 1 keeps the [b, c, t] shape, sorted."""
  module, params, inputs = favouring_network
  config = DecodingConfig(
      length_beam=3, max_passes=3, vocab_high=14, length_buckets=(8,), stutter_unit="piece"
  )
  rng = jax.random.PRNGKey(4)

  def decode(**overrides):
    return jax.tree.map(
        np.asarray,
        decoding.decode_with_network(
            module, params, inputs, rng, dataclasses.replace(config, **overrides), 24
        ),
    )

  plain, all_kept, one = decode(), decode(refine_top_k=3), decode(refine_top_k=1)
  np.testing.assert_array_equal(all_kept.sequences, plain.sequences)
  np.testing.assert_array_equal(all_kept.passes, plain.passes)
  np.testing.assert_allclose(all_kept.scores, plain.scores, rtol=1e-6, atol=1e-6)
  assert one.sequences.shape == plain.sequences.shape == (2, 3, 24)
  assert np.all(np.diff(one.scores, axis=1) >= 0)
  np.testing.assert_array_equal(np.sort(one.lengths, axis=1), np.sort(plain.lengths, axis=1))


def test_log_softmax_at_equals_log_softmax_taken_at_the_ids():
  """A pass's log-probs at its candidates (and forced tokens) are log_softmax's, masked ids
  included (-inf), without the [n, t, V] array."""
  logits = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 11)) * 4.0
  masked = refinement.restrict_logits(logits, vocab_low=4, vocab_high=9)  # [2, 5, 11]
  ids = jnp.asarray(np.random.default_rng(0).integers(0, 11, size=(2, 5, 3)), jnp.int32)
  expected = jnp.take_along_axis(jax.nn.log_softmax(masked, axis=-1), ids, axis=-1)
  got = refinement._log_softmax_at(masked)(ids)  # pylint: disable=protected-access
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, atol=1e-6)
  assert np.all(np.isneginf(np.asarray(got)[np.asarray((ids < 4) | (ids >= 9))]))
