"""The recipe's learning-rate schedule: optax's warm-up cosine, with the warm-up clamped to the run."""

import logging

import numpy as np
import optax
import pytest

from padir_t5x.core import schedules, training

RECIPE = dict(peak_value=0.01, end_value=0.0005, init_value=0.0)


def values(schedule, steps):
  return np.array([float(schedule(step)) for step in steps])


def test_a_warmup_shorter_than_the_run_is_optax_unchanged(caplog):
  steps = range(0, 1200, 7)
  with caplog.at_level(logging.WARNING):
    ours = schedules.warmup_cosine_decay(warmup_steps=100, decay_steps=800, **RECIPE)
  reference = optax.warmup_cosine_decay_schedule(warmup_steps=100, decay_steps=800, **RECIPE)
  np.testing.assert_array_equal(values(ours, steps), values(reference, steps))
  assert not caplog.records


def test_a_warmup_longer_than_the_run_is_clamped_with_a_note(caplog):
  # What a 20-step smoke run of the quickstart (WARMUP_STEPS = 100) asks for: optax itself
  # refuses it (negative cosine steps).
  with pytest.raises(ValueError, match="decay_steps=-80"):
    optax.warmup_cosine_decay_schedule(warmup_steps=100, decay_steps=20, **RECIPE)
  with caplog.at_level(logging.WARNING):
    schedule = schedules.warmup_cosine_decay(warmup_steps=100, decay_steps=20, **RECIPE)
  (record,) = caplog.records
  assert "WARMUP_STEPS=100" in record.getMessage() and "TRAIN_STEPS=20" in record.getMessage()
  assert "clamped to 19" in record.getMessage()
  lr = values(schedule, range(0, 21))
  assert np.all(np.isfinite(lr)) and lr[0] == 0.0 and np.all(lr[1:] > 0)
  assert np.all(np.diff(lr[:20]) > 0)  # warm-up up to the last step
  assert lr[19] == pytest.approx(0.01) and lr[20] == pytest.approx(0.0005)


@pytest.mark.parametrize("warmup, run, clamped", [(0, 1, 0), (5, 5, 4), (7, 1, 0), (3, 4, 3)])
def test_clamped_warmup_steps(warmup, run, clamped):
  assert schedules.clamped_warmup_steps(warmup, run) == clamped


@pytest.mark.parametrize("warmup, run, message", [(10, 0, "TRAIN_STEPS"), (-1, 10, "WARMUP_STEPS")])
def test_impossible_schedules_name_the_macro(warmup, run, message):
  with pytest.raises(ValueError, match=message):
    schedules.clamped_warmup_steps(warmup, run)


def test_the_core_loop_uses_the_same_schedule():
  config = training.TrainConfig(num_steps=10, warmup_steps=50, peak_learning_rate=0.002)
  lr = values(training.learning_rate_schedule(config), range(11))
  assert lr[9] == pytest.approx(0.002) and lr[10] == pytest.approx(0.002 * 0.05)
