"""Tests of padir_t5x.corruption: what is kept, what is replaced, by what."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from padir_t5x import EOS_ID
from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x import MASK_ID
from padir_t5x import PAD_ID
from padir_t5x import corruption

VOCAB_HIGH = 50


def _targets(seed=0, batch=6, length=16):
  """Right-padded rows with EOS at the end of each, lengths 1..length (EOS included)."""
  rng = np.random.default_rng(seed)
  out = np.zeros((batch, length), np.int32)
  lengths = [1, 2, length, 7, 10, 5][:batch]
  for row, n in enumerate(lengths):
    out[row, : n - 1] = rng.integers(FIRST_ORDINARY_ID, VOCAB_HIGH, n - 1)
    out[row, n - 1] = EOS_ID
  return out


def _num_corruptible(targets):
  return np.sum((targets != PAD_ID) & (targets != EOS_ID), axis=-1)


def _expected_kept(rate, n):
  # round(rate * n) with halves up, in float32 like the implementation.
  return np.floor(np.float32(rate) * n.astype(np.float32) + np.float32(0.5)).astype(int)


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.75, 1.0])
def test_exact_number_of_tokens_kept_per_row(rate):
  targets = _targets()
  for seed in range(3):
    corrupted, replaced = corruption.corrupt_targets_with_mask(
        jax.random.PRNGKey(seed), targets, rate, vocab_high=VOCAB_HIGH
    )
    corrupted, replaced = np.asarray(corrupted), np.asarray(replaced)
    n = _num_corruptible(targets)
    expected_kept = _expected_kept(rate, n)
    np.testing.assert_array_equal(n - replaced.sum(-1), expected_kept)
    # Unselected positions are unchanged.
    np.testing.assert_array_equal(corrupted[~replaced], targets[~replaced])


def test_rate_zero_and_one_in_mask_mode():
  targets = _targets()
  corruptible = (targets != PAD_ID) & (targets != EOS_ID)
  all_masked = np.asarray(
      corruption.corrupt_targets(
          jax.random.PRNGKey(0), targets, 0.0, vocab_high=None, mask_id=MASK_ID
      )
  )
  np.testing.assert_array_equal(all_masked, np.where(corruptible, MASK_ID, targets))
  untouched = np.asarray(
      corruption.corrupt_targets(
          jax.random.PRNGKey(0), targets, 1.0, vocab_high=None, mask_id=MASK_ID
      )
  )
  np.testing.assert_array_equal(untouched, targets)


def test_mask_mode_replaces_selected_by_mask_and_counts_exactly():
  targets = _targets()
  corrupted = np.asarray(
      corruption.corrupt_targets(
          jax.random.PRNGKey(3), targets, 0.4, vocab_high=VOCAB_HIGH, mask_id=MASK_ID
      )
  )
  n = _num_corruptible(targets)
  np.testing.assert_array_equal((corrupted == MASK_ID).sum(-1), n - _expected_kept(0.4, n))
  changed = corrupted != targets
  assert np.all(corrupted[changed] == MASK_ID)


def test_padding_and_eos_untouched():
  targets = _targets()
  for mask_id in (None, MASK_ID):
    corrupted = np.asarray(
        corruption.corrupt_targets(
            jax.random.PRNGKey(1), targets, 0.0, vocab_high=VOCAB_HIGH, mask_id=mask_id
        )
    )
    np.testing.assert_array_equal(corrupted == PAD_ID, targets == PAD_ID)
    np.testing.assert_array_equal(corrupted == EOS_ID, targets == EOS_ID)


def test_eos_inside_a_row_is_kept_and_not_counted():
  # EOS in the middle of a row (not only at the end) must stay, and must not be counted.
  targets = np.array([[5, EOS_ID, 6, 7, 8, EOS_ID, 0, 0]], np.int32)
  corrupted, replaced = corruption.corrupt_targets_with_mask(
      jax.random.PRNGKey(0), targets, 0.5, vocab_high=VOCAB_HIGH, mask_id=MASK_ID
  )
  corrupted = np.asarray(corrupted)
  assert corrupted[0, 1] == EOS_ID and corrupted[0, 5] == EOS_ID
  assert int(np.asarray(replaced).sum()) == 2  # 4 corruptible tokens, 2 kept


def test_random_tokens_in_range_and_never_special():
  targets = _targets(batch=6, length=16)
  targets = np.tile(targets, (20, 1))  # more draws
  vocab_low, vocab_high = FIRST_ORDINARY_ID, 9  # narrow range: every value should show up
  corrupted, replaced = corruption.corrupt_targets_with_mask(
      jax.random.PRNGKey(0), targets, 0.0, vocab_high=vocab_high, vocab_low=vocab_low
  )
  drawn = np.asarray(corrupted)[np.asarray(replaced)]
  assert drawn.min() >= vocab_low and drawn.max() < vocab_high
  assert set(drawn.tolist()) == set(range(vocab_low, vocab_high))
  assert not np.isin(drawn, [PAD_ID, EOS_ID, MASK_ID]).any()


def test_kept_positions_are_spread_uniformly():
  # Each corruptible position of a full row should be kept about rate of the time.
  targets = np.tile(np.r_[np.arange(10, 25), EOS_ID].astype(np.int32), (400, 1))
  _, replaced = corruption.corrupt_targets_with_mask(
      jax.random.PRNGKey(0), targets, 0.4, vocab_high=VOCAB_HIGH
  )
  kept_fraction = 1.0 - np.asarray(replaced)[:, :15].mean(0)
  np.testing.assert_allclose(kept_fraction, 0.4, atol=0.1)


def test_deterministic_for_an_rng_and_varies_with_it():
  targets = _targets()
  fn = functools.partial(
      corruption.corrupt_targets, targets=targets, unmasking_rate=0.5, vocab_high=VOCAB_HIGH
  )
  a = np.asarray(fn(jax.random.PRNGKey(0)))
  np.testing.assert_array_equal(a, np.asarray(fn(jax.random.PRNGKey(0))))
  assert not np.array_equal(a, np.asarray(fn(jax.random.PRNGKey(1))))


def test_jit_with_traced_rate_matches_eager():
  targets = jnp.asarray(_targets())
  jitted = jax.jit(functools.partial(corruption.corrupt_targets, vocab_high=VOCAB_HIGH))
  rate = jnp.full((targets.shape[0],), 0.5)
  np.testing.assert_array_equal(
      np.asarray(jitted(jax.random.PRNGKey(2), targets, rate)),
      np.asarray(
          corruption.corrupt_targets(jax.random.PRNGKey(2), targets, 0.5, vocab_high=VOCAB_HIGH)
      ),
  )


def test_per_example_rate_array():
  targets = np.tile(np.r_[np.arange(10, 20), EOS_ID, 0].astype(np.int32), (4, 1))
  rates = np.array([0.0, 0.2, 0.75, 1.0], np.float32)  # 0.75 * 10 = 7.5 rounds up to 8
  _, replaced = corruption.corrupt_targets_with_mask(
      jax.random.PRNGKey(0), targets, rates, vocab_high=VOCAB_HIGH
  )
  np.testing.assert_array_equal(10 - np.asarray(replaced).sum(-1), [0, 2, 8, 10])


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), [0.2, 1.2]])
def test_rejects_rate_outside_unit_interval(rate):
  with pytest.raises(ValueError, match="unmasking_rate"):
    corruption.corrupt_targets(
        jax.random.PRNGKey(0), _targets(batch=2), rate, vocab_high=VOCAB_HIGH
    )


@pytest.mark.parametrize("vocab_low, vocab_high", [(10, 10), (12, 5), (-1, 5)])
def test_rejects_empty_vocabulary_range(vocab_low, vocab_high):
  with pytest.raises(ValueError, match="nonempty"):
    corruption.corrupt_targets(
        jax.random.PRNGKey(0), _targets(), 0.5, vocab_high=vocab_high, vocab_low=vocab_low
    )


def test_random_mode_requires_vocab_high():
  with pytest.raises(ValueError, match="vocab_high"):
    corruption.corrupt_targets(jax.random.PRNGKey(0), _targets(), 0.5, vocab_high=None)


def test_rejects_mask_id_that_collides_with_special_ids():
  with pytest.raises(ValueError, match="mask_id"):
    corruption.corrupt_targets(
        jax.random.PRNGKey(0), _targets(), 0.5, vocab_high=None, mask_id=EOS_ID
    )
