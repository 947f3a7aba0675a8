"""Progress lines (padir_t5x/progress.py) and the loops that print them: the quickstart's
training log and the budget trainer's."""

import time

import numpy as np

from padir_t5x import progress
from padir_t5x.core import training


def test_progress_text_is_tqdm_like():
  assert progress.progress_text(250, 1000, 50.0) == "step 250/1000  25% [00:50<02:30, 5.00 step/s]"
  assert progress.progress_text(3, None, 2.0, unit="sent") == "sent 3 [00:02, 1.50 sent/s]"
  # A rate measured apart (after compilation) sets the ETA.
  assert progress.progress_text(11, 21, 100.0, rate=1.0).endswith("[01:40<00:10, 1.00 step/s]")
  assert progress.progress_text(0, 10, 0.0).endswith("[00:00<?, ? step/s]")
  assert progress.clock(3725) == "1:02:05" and progress.clock(float("inf")) == "?"


def test_training_log_line_says_the_loss_is_summed_and_gives_it_per_token():
  metrics = {"loss": np.float32(400.0), "num_tokens": np.float32(200.0)}
  metrics["stage1_accuracy"] = np.float32(0.5)
  start = time.perf_counter() - 10.0
  line = training._log_line(250, 1000, metrics, start, summed=True)
  assert line.startswith("step 250/1000  25% [00:10<")
  assert "loss/token=2.0000 (loss=400.0 summed over 200 target tokens)" in line
  assert "stage1_accuracy=0.5000" in line
  normalised = training._log_line(250, 1000, metrics, start, summed=False)
  assert "loss=400.0000" in normalised and "summed" not in normalised


def test_budget_trainer_progress_line():
  from benchmarks import budget_config
  from benchmarks import budget_training

  steps = budget_config.BudgetConfig(max_steps=400, minutes=0)
  assert budget_training.progress_line(steps, 100, 50.0) == (
      "step 100/400  25% [00:50<02:30, 2.00 step/s]"
  )
  clock = budget_config.BudgetConfig(minutes=10)
  assert budget_training.progress_line(clock, 120, 60.0) == (
      "step 120 [01:00, 2.00 step/s]  10% of 10 min, ETA 09:00"
  )
