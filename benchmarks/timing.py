"""Timing helpers shared by the benchmarks: latency percentiles, the machine and its load.

Imports only numpy, jax and the standard library, so that benchmarks/accelerator.py runs on a
machine with jax and nothing else of the project's dependencies.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence

import jax
import numpy as np


def latency_summary(seconds: Sequence[float]) -> dict:
  """Median, p90, p99 and mean, in milliseconds, of per-call wall times given in seconds.

  Percentiles use linear interpolation between order statistics (numpy's default), so for
  1..100 ms the p90 is 90.1 ms.
  """
  ms = np.asarray(seconds, np.float64) * 1e3
  if ms.size == 0:
    raise ValueError("no latencies to summarise")
  return {
      "median": float(np.percentile(ms, 50)),
      "p90": float(np.percentile(ms, 90)),
      "p99": float(np.percentile(ms, 99)),
      "mean": float(ms.mean()),
  }


def load_average() -> list[float] | None:
  """The 1, 5 and 15 minute load averages (what `uptime` prints), None where unavailable."""
  try:
    return [round(x, 2) for x in os.getloadavg()]
  except OSError:
    return None


def environment() -> dict:
  """Where a figure was measured: platform, CPUs, jax version, devices, load average."""
  return {
      "platform": platform.platform(),
      "processor": platform.processor(),
      "cpu_count": os.cpu_count(),
      "jax": jax.__version__,
      "devices": [str(d) for d in jax.devices()],
      "load_average": load_average(),
  }


def time_calls(call: Callable[[], object], reps: int, warmup: int = 1) -> tuple[list[float], float]:
  """(seconds of each of `reps` timed calls, seconds of the first call, compile included).

  Each call's result is blocked on (jax.block_until_ready) before the clock stops; `warmup`
  untimed calls (the first among them) come before the timed ones.
  """
  start = time.perf_counter()
  jax.block_until_ready(call())
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    jax.block_until_ready(call())
  seconds = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(call())
    seconds.append(time.perf_counter() - start)
  return seconds, first
