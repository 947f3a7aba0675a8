"""Progress lines of long runs: done/total, rate and ETA, in tqdm's format.

    step 250/1500  17% [00:41<03:25, 6.10 step/s]

One format for every loop that logs lines rather than drawing a bar (the quickstart's training,
the budget trainer, the EM stages' t5x runs, translate without tqdm), so that a log file reads
the same whatever wrote it.
"""

from __future__ import annotations

import math


def clock(seconds: float) -> str:
  """'MM:SS', or 'H:MM:SS' from an hour, or '?' for an unknown (inf / nan) time; tqdm's style."""
  if not math.isfinite(seconds):
    return "?"
  minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def progress_text(
    done: int, total: int | None, elapsed: float, unit: str = "step", rate: float | None = None
) -> str:
  """'step 250/1500  17% [00:41<03:25, 6.10 step/s]' after `done` of `total` in `elapsed` s.

  `total` None (unknown, e.g. a wall-clock budget): 'step 250 [00:41, 6.10 step/s]'. The rate,
  and the ETA from it, are those of the whole run so far (done / elapsed) unless `rate` is
  given (e.g. measured after a first step that compiled).
  """
  if rate is None:
    rate = done / elapsed if elapsed > 0 else math.nan
  rate_text = f"{rate:.2f} {unit}/s" if math.isfinite(rate) else f"? {unit}/s"
  if total is None:
    return f"{unit} {done} [{clock(elapsed)}, {rate_text}]"
  remaining = (total - done) / rate if rate > 0 else math.inf
  percent = 100.0 * done / total if total else 100.0
  return f"{unit} {done}/{total} {percent:3.0f}% [{clock(elapsed)}<{clock(remaining)}, {rate_text}]"
