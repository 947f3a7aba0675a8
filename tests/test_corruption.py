"""Tests of padir_t5x.core.corruption: what is kept, what is replaced, by what."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from padir_t5x import EOS_ID
from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x import MASK_ID
from padir_t5x import PAD_ID
from padir_t5x.core import corruption

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


# ----------------------------------------------------------------------------------------------
# Training options: per-example rates, the (keep, random, mask) mix, glancing counts.


def test_uniform_rates_lie_in_range_vary_across_rows_and_follow_the_rng():
  rates = np.asarray(corruption.uniform_unmasking_rates(jax.random.PRNGKey(0), 256, 0.2, 0.6))
  assert rates.shape == (256,) and rates.dtype == np.float32
  assert rates.min() >= 0.2 and rates.max() < 0.6
  assert len(np.unique(rates)) > 200  # varies across rows
  assert abs(rates.mean() - 0.4) < 0.03  # uniform: mean (low + high) / 2, sd 0.0072 here
  again = np.asarray(corruption.uniform_unmasking_rates(jax.random.PRNGKey(0), 256, 0.2, 0.6))
  np.testing.assert_array_equal(rates, again)
  other = np.asarray(corruption.uniform_unmasking_rates(jax.random.PRNGKey(1), 256, 0.2, 0.6))
  assert not np.array_equal(rates, other)
  constant = corruption.uniform_unmasking_rates(jax.random.PRNGKey(0), 4, 0.3, 0.3)
  np.testing.assert_array_equal(np.asarray(constant), np.float32(0.3))


@pytest.mark.parametrize("low, high", [(0.6, 0.4), (-0.1, 0.5), (0.5, 1.1)])
def test_uniform_rates_reject_a_bad_range(low, high):
  with pytest.raises(ValueError, match="low <= high"):
    corruption.uniform_unmasking_rates(jax.random.PRNGKey(0), 4, low, high)


def test_pure_mixes_are_the_two_fill_modes_number_for_number():
  targets = _targets()
  for seed in range(3):
    rng = jax.random.PRNGKey(seed)
    random_mode = corruption.corrupt_targets_with_mask(rng, targets, 0.3, vocab_high=VOCAB_HIGH)
    random_mix = corruption.corrupt_targets_with_mask(
        rng, targets, 0.3, vocab_high=VOCAB_HIGH, mask_id=MASK_ID, mix=corruption.RANDOM_MIX
    )
    mask_mode = corruption.corrupt_targets_with_mask(
        rng, targets, 0.3, vocab_high=None, mask_id=MASK_ID
    )
    mask_mix = corruption.corrupt_targets_with_mask(
        rng, targets, 0.3, vocab_high=None, mask_id=MASK_ID, mix=[0, 0, 1]
    )
    for a, b in [(random_mode, random_mix), (mask_mode, mask_mix)]:
      np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))
      np.testing.assert_array_equal(np.asarray(a[1]), np.asarray(b[1]))


@pytest.mark.parametrize("mix", [(0.1, 0.1, 0.8), (0.5, 0.0, 0.5), (0.2, 0.5, 0.3)])
def test_mix_proportions_hold_on_a_big_batch(mix):
  # 4000 rows x 15 corruptible tokens, all selected (rate 0): 60,000 draws, so each observed
  # share lies within 0.01 of its probability (the standard deviation is <= 0.0021).
  vocab_high = 1000  # a random token equals the target with probability 1/996 only
  targets = np.tile(np.r_[np.arange(10, 25), EOS_ID].astype(np.int32), (4000, 1))
  corrupted, replaced = corruption.corrupt_targets_with_mask(
      jax.random.PRNGKey(0), targets, 0.0, vocab_high=vocab_high, mask_id=MASK_ID, mix=mix
  )
  corrupted, replaced = np.asarray(corrupted), np.asarray(replaced)
  assert replaced[:, :15].all() and not replaced[:, 15:].any()
  selected, original = corrupted[replaced], targets[replaced]
  keep, random, mask = mix
  is_mask = selected == MASK_ID
  is_kept = selected == original
  is_random = ~is_mask & ~is_kept
  assert abs(is_mask.mean() - mask) < 0.01
  assert abs(is_kept.mean() - (keep + random / (vocab_high - FIRST_ORDINARY_ID))) < 0.01
  assert abs(is_random.mean() - random) < 0.01
  if random:
    drawn = selected[is_random]
    assert drawn.min() >= FIRST_ORDINARY_ID and drawn.max() < vocab_high
  np.testing.assert_array_equal(corrupted[~replaced], targets[~replaced])


@pytest.mark.parametrize(
    "mix, match",
    [
        ((0.5, 0.6, 0.0), "sum to 1"),
        ((-0.1, 0.6, 0.5), ">= 0"),
        ((0.5, 0.5), "3 probabilities"),
        ((0.5, float("nan"), 0.5), ">= 0"),
        ("abc", "3 probabilities"),
    ],
)
def test_bad_mix_is_rejected(mix, match):
  with pytest.raises(ValueError, match=match):
    corruption.corrupt_targets(
        jax.random.PRNGKey(0), _targets(), 0.5, vocab_high=VOCAB_HIGH, mask_id=MASK_ID, mix=mix
    )
  with pytest.raises(ValueError, match="corruption_mix"):
    corruption.check_mix(mix, "corruption_mix")


def test_mix_shares_need_their_ids():
  with pytest.raises(ValueError, match="vocab_high"):
    corruption.corrupt_targets(
        jax.random.PRNGKey(0), _targets(), 0.5, vocab_high=None, mask_id=MASK_ID, mix=(0, 0.5, 0.5)
    )
  with pytest.raises(ValueError, match="mask_id"):
    corruption.corrupt_targets(
        jax.random.PRNGKey(0), _targets(), 0.5, vocab_high=VOCAB_HIGH, mix=(0.5, 0, 0.5)
    )
  # A keep-only mix needs neither: selected positions keep their token.
  kept = corruption.corrupt_targets(
      jax.random.PRNGKey(0), _targets(), 0.0, vocab_high=None, mix=(1, 0, 0)
  )
  np.testing.assert_array_equal(np.asarray(kept), _targets())


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
def test_glancing_reveals_round_ratio_times_wrong(ratio):
  targets = _targets()
  corruptible = (targets != PAD_ID) & (targets != EOS_ID)
  # Wrong at every other position (and right everywhere else, EOS and PAD included).
  wrong_at = corruptible & (np.arange(targets.shape[1]) % 2 == 0)
  predictions = np.where(wrong_at, targets + 1, targets)
  rates, revealed, wrong, num = corruption.glancing_unmasking_rates(predictions, targets, ratio)
  expected_wrong = wrong_at.sum(-1)
  np.testing.assert_array_equal(np.asarray(wrong), expected_wrong)
  np.testing.assert_array_equal(np.asarray(num), corruptible.sum(-1))
  expected_revealed = _expected_kept(ratio, expected_wrong)  # round(ratio * wrong), halves up
  np.testing.assert_array_equal(np.asarray(revealed), expected_revealed)
  # The rates make corruption_mask keep exactly the revealed count.
  replaced = np.asarray(corruption.corruption_mask(jax.random.PRNGKey(0), targets, rates))
  np.testing.assert_array_equal(corruptible.sum(-1) - replaced.sum(-1), expected_revealed)
  assert np.all((np.asarray(rates) >= 0) & (np.asarray(rates) <= 1))
