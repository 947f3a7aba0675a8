"""The learning-rate schedule of every training run: linear warm-up, then cosine decay to a floor.

gin/experiments/recipe/train.gin binds `warmup_cosine_decay` as t5x's learning_rate_fn (with
WARMUP_STEPS and TRAIN_STEPS); padir_t5x.core.training's core loop builds the same schedule. No t5x
import: gin configures it by dynamic registration (`from padir_t5x.core import schedules`).

Why not optax.warmup_cosine_decay_schedule directly: a run shorter than its warm-up (a 20-step
smoke run of a recipe with 100 or 10000 warm-up steps) makes optax fail inside t5x with
"cosine_decay_schedule requires positive decay_steps, got decay_steps=-80". Here the warm-up is
clamped to the run instead, with a logged note, so that every recipe runs for any TRAIN_STEPS.
"""

from __future__ import annotations

import logging

import optax


def clamped_warmup_steps(warmup_steps: int, decay_steps: int) -> int:
  """The warm-up that fits the run: at most decay_steps - 1 (optax's cosine part needs >= 1 step).

  Raises ValueError naming the gin macros (WARMUP_STEPS, TRAIN_STEPS) when no schedule fits.
  """
  if decay_steps < 1:
    raise ValueError(f"TRAIN_STEPS (decay_steps) must be positive, got {decay_steps}")
  if warmup_steps < 0:
    raise ValueError(f"WARMUP_STEPS (warmup_steps) must not be negative, got {warmup_steps}")
  if warmup_steps < decay_steps:
    return warmup_steps
  clamped = decay_steps - 1
  logging.warning(
      "learning-rate schedule: WARMUP_STEPS=%d is not shorter than the run (TRAIN_STEPS=%d); "
      "warm-up clamped to %d steps (then 1 step of cosine decay)",
      warmup_steps,
      decay_steps,
      clamped,
  )
  return clamped


def warmup_cosine_decay(
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    end_value: float,
    init_value: float = 0.0,
) -> optax.Schedule:
  """optax.warmup_cosine_decay_schedule with the warm-up clamped to the run.

  Args:
    peak_value: the learning rate at the end of the warm-up.
    warmup_steps: steps of linear warm-up from init_value (gin: WARMUP_STEPS).
    decay_steps: the whole schedule's length, warm-up included (gin: TRAIN_STEPS); after it the
      rate stays at end_value.
    end_value: the cosine floor.
    init_value: the rate at step 0.
  """
  return optax.warmup_cosine_decay_schedule(
      init_value=init_value,
      peak_value=peak_value,
      warmup_steps=clamped_warmup_steps(warmup_steps, decay_steps),
      decay_steps=decay_steps,
      end_value=end_value,
  )
