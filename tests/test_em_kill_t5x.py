"""EM kill safety at scale: SIGKILL at 10 random moments across the stages of a tiny run.

Slow (needs t5x; about 2 x T plus the kills' overhead, T ~ 2 min for this tiny run on a 2-core
CPU). One uninterrupted reference run, timed stage by stage; then a second run directory is
killed (em and its t5x child: the whole process group, SIGKILL) at 10 moments drawn from a
seeded RNG over the reference run's stage time line (one per tenth of it), resumed with the same
command after each kill, and finally run to completion. Checked: every stage finished exactly once (its DONE marker never
rewritten after it appeared, one "done in" line over all attempts), and the final outputs equal
the reference run's file by file: no example lost, duplicated or reordered.

Bit-identical outputs need fixed seeds: t5x draws its RNG seed and the training data's shuffle
seed from the clock when they are None (t5x's pretrain.gin), so both runs bind RANDOM_SEED and
the train data seed. A train stage killed and resumed restarts from t5x's step-0 checkpoint (the
period is the whole run), and an infer stage from its completed chunks, so equal seeds give
equal models and decodes.
"""

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("t5x")

from padir_t5x import em  # noqa: E402
from padir_t5x.t5x_adapter import jobs as t5x_jobs  # noqa: E402
from padir_t5x.data import textio  # noqa: E402
import tiny_em  # noqa: E402  (tests/tiny_em.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 64
KILLS = 10
SEED = 15  # issue 15
SEEDED = ("RANDOM_SEED = 0", "train/utils.DatasetConfig.seed = 0")
# A stage's start line (not "done already", "done in", "resuming ..." or "completed before ...").
START = re.compile(r"^\[em (\d+)/\d+\] (\S+) \(\w+\): (?!done |resuming |completed before )")
DONE_IN = re.compile(r"^\[em (\d+)/\d+\] (\S+) \(\w+\): (done in |completed before )")
# Stage files that name the run directory or hold times: everything else must be equal.
UNCOMPARED = ("DONE.json", "t5x.log", "config.gin", "model-info.txt")


def em_command(run_dir, train_files):
  return tiny_em.em_command(run_dir, train_files, LIMIT, SEEDED)


class Attempt:
  """One `python -m padir_t5x.em` process, its stdout lines time-stamped by a reader thread."""

  def __init__(self, command, log_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    self.start = time.monotonic()
    self.lines = []  # (seconds since start, line)
    self.process = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill takes t5x with it
    )
    self._log = open(log_path, "a", encoding="utf-8")
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.process.stdout:
      self.lines.append((time.monotonic() - self.start, line.rstrip("\n")))
      self._log.write(line)
      self._log.flush()

  def text(self):
    return "\n".join(line for _, line in self.lines)

  def wait_for_start(self, min_index, timeout=600):
    """Waits until a stage numbered >= min_index starts; its monotonic time, None if exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      for seconds, line in list(self.lines):
        match = START.match(line)
        if match and int(match.group(1)) >= min_index:
          return self.start + seconds
      if self.process.poll() is not None:
        return None
      time.sleep(0.1)
    raise AssertionError(f"no stage >= {min_index} started within {timeout} s:\n{self.text()}")

  def kill_at(self, moment, number):
    """SIGKILLs the process group at monotonic `moment`, or at once when stage `number` ends
    before (a resumed stage can be quicker than in the reference); False if it had exited."""
    while time.monotonic() < moment and not self.stage_ended(number):
      if self.process.poll() is not None:
        break
      time.sleep(0.05)
    alive = self.process.poll() is None
    if alive:
      os.killpg(self.process.pid, signal.SIGKILL)
    self.finish()
    return alive

  def stage_ended(self, number):
    return any((m := DONE_IN.match(line)) and int(m.group(1)) >= number for _, line in self.lines)

  def finish(self, timeout=None):
    self.process.wait(timeout=timeout)
    self._reader.join(timeout=30)
    self._log.close()
    return self.process.returncode


def stage_segments(attempt):
  """[(stage number, start, duration)] of an uninterrupted attempt, from its log lines."""
  starts, segments = {}, []
  for seconds, line in attempt.lines:
    match = START.match(line)
    if match:
      starts[match.group(2)] = (int(match.group(1)), seconds)
    match = DONE_IN.match(line)
    if match and match.group(2) in starts:
      number, start = starts[match.group(2)]
      segments.append((number, start, seconds - start))
  return segments


def kill_plan(segments, rng):
  """KILLS (stage number, seconds after its start): one moment drawn uniformly in each of KILLS
  equal slices of the stages' total time (stratified, so that the kills spread over the stages).

  A later kill in the same stage waits only for the progress since the previous kill (the
  resumed attempt continues from t5x's last checkpoint or chunk); every wait is capped at 80% of
  the stage's reference duration, so that most kills land inside the stage.
  """
  total = sum(duration for _, _, duration in segments)
  plan, previous = [], (None, 0.0)
  for moment in [(i + rng.random()) * total / KILLS for i in range(KILLS)]:
    for number, _, duration in segments:
      if moment < duration:
        since = moment - previous[1] if previous[0] == number else moment
        plan.append((number, min(since, 0.8 * duration)))
        previous = (number, moment)
        break
      moment -= duration
  return plan


def done_markers(run_dir):
  stages = os.path.join(run_dir, "stages")
  markers = {}
  for name in os.listdir(stages):
    path = os.path.join(stages, name, em.DONE_FILE)
    if not name.startswith(em.PARTIAL_PREFIX) and os.path.exists(path):
      with open(path, encoding="utf-8") as f:
        markers[name] = f.read()
  return markers


def compared_files(run_dir):
  """{relative path: bytes} of every stage output but checkpoints, logs and DONE markers.

  t5x.infer names its output after the seqio task, whose name hashes the data directory (which
  differs between run directories): the hash is replaced by '*'.
  """
  files = {}
  stages = os.path.join(run_dir, "stages")
  for root, dirs, names in os.walk(stages):
    dirs[:] = [d for d in dirs if d != "model"]  # checkpoints: compared through their decodes
    for name in names:
      if name in UNCOMPARED or name.endswith(("_stage.gin", ".COMPLETED")):
        continue
      path = os.path.join(root, name)
      key = re.sub(r"padir_shards_[0-9a-f]+", "padir_shards_*", os.path.relpath(path, stages))
      with open(path, "rb") as f:
        files[key] = f.read()
  return files


@pytest.fixture(scope="module")
def train_files():
  sys.path.insert(0, REPO)
  import tasks

  data_dir, _ = tasks.ensure_quickstart_data()
  return [os.path.join(data_dir, "train.de"), os.path.join(data_dir, "train.en")]


@pytest.mark.slow
def test_ten_kills_change_nothing(tmp_path, train_files):
  reference_dir = str(tmp_path / "reference")
  reference = Attempt(em_command(reference_dir, train_files), tmp_path / "reference.log")
  assert reference.finish(timeout=1800) == 0, reference.text()[-5000:]
  reference_seconds = reference.lines[-1][0]
  segments = stage_segments(reference)
  num_stages = len(em.plan(em.EmConfig(run_dir=reference_dir, rounds=1)))
  assert [number for number, _, _ in segments] == list(range(1, num_stages + 1))

  run_dir = str(tmp_path / "killed")
  log_path = tmp_path / "killed.log"
  plan = kill_plan(segments, random.Random(SEED))
  first_markers = {}  # stage -> its DONE marker when first seen: never rewritten afterwards
  finished_lines = []  # every "done in" / "completed before" line of every attempt
  killed_in, missed = [], 0
  for number, offset in plan:
    attempt = Attempt(em_command(run_dir, train_files), log_path)
    started = attempt.wait_for_start(number)
    landed = started is not None and attempt.kill_at(started + offset, number)
    if started is None:
      attempt.finish()
    finished_lines += [line for _, line in attempt.lines if DONE_IN.match(line)]
    for name, marker in done_markers(run_dir).items():
      assert first_markers.setdefault(name, marker) == marker, f"{name} was redone"
    if not landed:  # the last stage ended quicker than planned: the run is complete
      assert number == num_stages, f"run finished before kill {len(killed_in) + 1}"
      missed = len(plan) - len(killed_in)
      break
    running = [m.group(2) for _, line in attempt.lines if (m := START.match(line))]
    killed_in.append((running[-1], round(offset, 1)))
  final = Attempt(em_command(run_dir, train_files), log_path)
  assert final.finish(timeout=1800) == 0, final.text()[-5000:]
  finished_lines += [line for _, line in final.lines if DONE_IN.match(line)]
  print(f"reference run {reference_seconds:.0f} s; {len(killed_in)} kills (stage, seconds into")
  print(f"the attempt's stage): {killed_in}; {missed} planned kill(s) found the run complete")
  # A planned kill can miss only in the last stage, when its resumed attempt was quick.
  assert len(killed_in) >= KILLS - 2

  # Every stage finished exactly once; markers seen after a kill were never rewritten.
  markers = done_markers(run_dir)
  assert set(markers) == set(done_markers(reference_dir))
  for name, marker in first_markers.items():
    assert markers[name] == marker, f"{name} was redone after it finished"
  finished = sorted(DONE_IN.match(line).group(2) for line in finished_lines)
  assert finished == sorted(markers), finished
  for name in markers:
    assert em.read_done(run_dir, name)["counts"] == em.read_done(reference_dir, name)["counts"]

  # The outputs, file by file.
  ours, theirs = compared_files(run_dir), compared_files(reference_dir)
  assert sorted(ours) == sorted(theirs)
  differing = [path for path in ours if ours[path] != theirs[path]]
  assert not differing, differing

  # And, independently of the reference: every source once, in order, everywhere.
  sources = [s for s, _ in textio.read_parallel_files(*train_files)[:LIMIT]]
  stage = lambda name, *p: os.path.join(em.stage_dir(run_dir, name), *p)  # noqa: E731
  for name, output in (
      ("prepare", "data"),
      ("r1_candidates", "distilled"),
      ("r1_select", "selected"),
  ):
    assert [s for s, _ in textio.read_distilled_shards(stage(name, output), "train")] == sources
  candidates = t5x_jobs.read_candidates(stage("r1_candidates"))
  assert [(c.source_index, c.rank) for c in candidates] == [
      (i, r) for i in range(LIMIT) for r in range(2)
  ]
