"""The EM loop and distillation with real t5x runs, on 64 quickstart pairs, 5 steps per stage.

Slow (several minutes on a CPU: eight stages, each t5x process compiling its model). Runs the
real commands (`python -m padir_t5x.em`, `python -m padir_t5x.distill`) with this interpreter,
kills the EM run (its whole process group, t5x included) in the middle of the beam-decoding
stage, resumes it, and checks the result: every finished stage untouched, every training
source selected exactly once, in order.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("t5x")

from padir_t5x import em  # noqa: E402
from padir_t5x.t5x_adapter import jobs as t5x_jobs  # noqa: E402
from padir_t5x.data import textio  # noqa: E402
import tiny_em  # noqa: E402  (tests/tiny_em.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 64
KILL_STAGE = "r1_ar_decode"


def em_command(run_dir, train_files):
  return tiny_em.em_command(run_dir, train_files, LIMIT, ("WARMUP_STEPS = 1",))


def environment():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.setdefault("PYTHONUNBUFFERED", "1")
  return env


@pytest.fixture(scope="module")
def train_files():
  sys.path.insert(0, REPO)
  import tasks

  data_dir, _ = tasks.ensure_quickstart_data()
  return [os.path.join(data_dir, "train.de"), os.path.join(data_dir, "train.en")]


def wait_for(path, process, timeout):
  deadline = time.time() + timeout
  while not os.path.exists(path):
    if process.poll() is not None:
      raise AssertionError(f"em exited ({process.returncode}) before {path} appeared")
    if time.time() > deadline:
      raise AssertionError(f"{path} did not appear within {timeout} s")
    time.sleep(0.5)


def read_markers(run_dir):
  stages = os.path.join(run_dir, "stages")
  markers = {}
  for name in os.listdir(stages):
    path = os.path.join(stages, name, em.DONE_FILE)
    if os.path.exists(path):
      with open(path) as f:
        markers[name] = f.read()
  return markers


@pytest.fixture(scope="module")
def em_run(tmp_path_factory, train_files):
  run_dir = str(tmp_path_factory.mktemp("em") / "run")
  log_path = run_dir + ".log"
  with open(log_path, "w") as log:
    process = subprocess.Popen(
        em_command(run_dir, train_files),
        cwd=REPO,
        env=environment(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
      # Kill while t5x.infer is running (it has started writing its log).
      wait_for(os.path.join(em.partial_dir(run_dir, KILL_STAGE), "t5x.log"), process, 1200)
      time.sleep(5)
      assert process.poll() is None
    finally:
      os.killpg(process.pid, signal.SIGKILL)
      process.wait()
  before = read_markers(run_dir)
  with open(log_path, "a") as log:
    resumed = subprocess.run(
        em_command(run_dir, train_files),
        cwd=REPO,
        env=environment(),
        stdout=log,
        stderr=subprocess.STDOUT,
        timeout=1800,
    )
  with open(log_path) as f:
    output = f.read()
  assert resumed.returncode == 0, output[-5000:]
  return run_dir, before, output


def test_kill_left_finished_stages_and_a_partial_one(em_run):
  run_dir, before, _ = em_run
  assert set(before) == {"prepare", "r0_ar_train"}
  for name, marker in before.items():
    assert read_markers(run_dir)[name] == marker  # not redone


def test_resume_reports_skips_and_completes(em_run):
  run_dir, _, output = em_run
  assert "[em 1/8] prepare (write): done already (examples 64), skipped" in output
  assert "[em 2/8] r0_ar_train (train): done already" in output
  assert f"{KILL_STAGE} (infer): resuming t5x's partial work" in output
  assert "[em] all 8 stages done" in output
  assert set(read_markers(run_dir)) == {
      s.name for s in em.plan(em.EmConfig(run_dir=run_dir, rounds=1))
  }


def test_every_source_selected_once_in_order(em_run, train_files):
  run_dir, _, _ = em_run
  sources = [s for s, _ in textio.read_parallel_files(*train_files)[:LIMIT]]
  stage = lambda name, *p: os.path.join(em.stage_dir(run_dir, name), *p)  # noqa: E731
  assert [s for s, _ in textio.read_distilled_shards(stage("prepare", "data"), "train")] == sources
  distilled = textio.read_distilled_shards(stage("r1_candidates", "distilled"), "train")
  selected = textio.read_distilled_shards(stage("r1_select", "selected"), "train")
  assert [s for s, _ in distilled] == sources and [s for s, _ in selected] == sources
  candidates = t5x_jobs.read_candidates(stage("r1_candidates"))
  assert [(c.source_index, c.rank) for c in candidates] == [
      (i, r) for i in range(LIMIT) for r in range(2)
  ]
  with open(stage("r1_select", "selection.jsonl")) as f:
    selection = [json.loads(line) for line in f]
  assert [s["index"] for s in selection] == list(range(LIMIT))
  by_key = {(c.source_index, c.rank): c.target for c in candidates}
  assert [t for _, t in selected] == [by_key[(s["index"], s["rank"])] for s in selection]
  done = em.read_done(run_dir, "r1_ar_train")
  assert done["counts"]["train_examples"] == LIMIT
  assert os.path.isdir(t5x_jobs.final_checkpoint(run_dir, "r1_ar_train"))
  assert os.path.isdir(t5x_jobs.final_checkpoint(run_dir, "r1_nar_train"))


def test_distill_command_writes_where_distilled_tasks_read(em_run, train_files, tmp_path):
  run_dir, _, _ = em_run
  output_dir = str(tmp_path / "distilled")
  command = [
      sys.executable,
      "-m",
      "padir_t5x.distill",
      f"--checkpoint={t5x_jobs.final_checkpoint(run_dir, 'r0_ar_train')}",
      "--train_files",
      *train_files,
      "--limit=16",
      "--beam_size=2",
      "--batch_size=16",
      "--num_shards=3",
      f"--output_dir={output_dir}",
      "--corpus=wmt14_de_en",
      "--teacher_gin=gin/em/quickstart_ar_infer.gin",
  ]
  result = subprocess.run(
      command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=1200
  )
  assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
  corpus = os.path.join(output_dir, "wmt14_de_en")
  assert len(textio.distilled_shard_paths(corpus, "train")) == 3
  pairs = textio.read_distilled_shards(corpus, "train")
  sources = [s for s, _ in textio.read_parallel_files(*train_files)[:16]]
  assert [s for s, _ in pairs] == sources
  assert "[distill] 16 pairs in 3 shards" in result.stdout


def test_raw_baseline_eval_stage_and_report(tmp_path, train_files):
  """rounds=0 with raw_baseline and a student eval gin: AR and PaDIR on the raw pairs, then
  t5x.eval of PaDIR on the quickstart validation split; the report shows its BLEU."""
  run_dir = str(tmp_path / "run")
  command = [
      sys.executable,
      "-m",
      "padir_t5x.em",
      "--gin_file=gin/em/quickstart.gin",
      f"--run_dir={run_dir}",
      "--train_files",
      *train_files,
      f"--limit={LIMIT}",
      "--rounds=0",
      "--ar_steps=5",
      "--nar_steps=5",
      "--raw_baseline=true",
      "--student_eval_gin=gin/experiments/quickstart_eval.gin",
      "--eval_split=validation",
      "--teacher_bindings=WARMUP_STEPS = 1",
      "--student_bindings=WARMUP_STEPS = 1",
  ]
  result = subprocess.run(
      command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=1800
  )
  assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
  done = em.read_done(run_dir, "r0_nar_eval")
  assert done["counts"]["split"] == "validation"
  assert done["counts"]["checkpoint"] == os.path.join(
      "stages", "r0_nar_train", "model", "checkpoint_5"
  )
  metrics = done["counts"]["metrics"]["padir_quickstart_de_en"]
  assert 0.0 <= metrics["bleu"] <= 100.0 and "stutter_rate" in metrics
  assert em.read_done(run_dir, "r0_nar_train")["counts"]["train_examples"] == LIMIT
  row = [line for line in result.stdout.splitlines() if line.startswith("| r0_nar_train |")]
  assert row and f"| {metrics['bleu']:.2f} |" in row[0], result.stdout[-2000:]
