"""padir_t5x.em / padir_t5x.distill without t5x: plan, selection, files, kill-and-resume.

A fake StageRunner stands in for t5x: its 'train' leaves a checkpoint directory, its 'infer'
writes t5x.infer's JSON-lines format (inputs_pretokenized / prediction / aux.scores / score)
from the shards it is given, so the real parsing, checking, selection and writing run.
"""

import collections
import dataclasses
import json
import os
import zlib

import gin
import pytest

from padir_t5x import distill, em, em_actions, stages
from padir_t5x.t5x_adapter import jobs as t5x_jobs
from padir_t5x.data import textio


class Killed(Exception):
  """Stands for SIGKILL at some moment of a run."""


def make_pairs(n):
  # Tabs, newlines, quotes and non-ASCII inside sentences: the shard format must keep them.
  return [(f'quelle {i}\tmit tab "q" ä', f"target {i}\nline two") for i in range(n)]


def fake_beam(target, rank):
  return f"{target} \t beam{rank}"


def fake_score(source, target):
  # Deterministic, with many ties (5 values), so the tie rule matters.
  return float(zlib.crc32((source + "|" + target).encode("utf-8")) % 5)


class FakeRunner:
  """t5x stand-in. `crash_in` = stage work-dir basename: that call writes partial output and
  raises Killed (once)."""

  def __init__(self, crash_in=None):
    self.crash_in = crash_in
    self.completed = collections.Counter()  # stage partial-dir name -> finished calls
    self.resumed = []

  def _stage(self, path):
    return os.path.basename(os.path.dirname(path.rstrip("/")))

  def _maybe_crash(self, stage):
    if self.crash_in is not None and stage == stages.PARTIAL_PREFIX + self.crash_in:
      self.crash_in = None
      raise Killed(stage)

  def train(self, job):
    stage = self._stage(job.model_dir)
    partial_ckpt = os.path.join(job.model_dir, "checkpoint_1")
    if os.path.isdir(partial_ckpt):
      self.resumed.append(stage)
    os.makedirs(partial_ckpt, exist_ok=True)
    self._maybe_crash(stage)
    n = sum(1 for _ in textio.iter_distilled_shards(job.data_dir, "train"))
    ckpt = os.path.join(job.model_dir, f"checkpoint_{job.steps}")
    os.makedirs(ckpt, exist_ok=True)
    with open(os.path.join(ckpt, "trained_on.json"), "w") as f:
      json.dump({"examples": n, "data_dir": job.data_dir}, f)
    self.completed[stage] += 1

  def infer(self, job):
    stage = self._stage(job.output_dir)
    pairs = textio.read_distilled_shards(job.data_dir, "train")
    os.makedirs(job.output_dir, exist_ok=True)
    path = os.path.join(job.output_dir, f"padir_shards_x-{job.mode}.jsonl-00000-of-00001")
    with open(path, "w", encoding="utf-8") as f:
      for i, (source, target) in enumerate(pairs):
        if i == len(pairs) // 2:
          f.flush()
          self._maybe_crash(stage)
        record = {"inputs": {"inputs_pretokenized": source, "targets_pretokenized": target}}
        if job.mode == "score":
          record["score"] = fake_score(source, target)
        else:
          beams = [fake_beam(target, r) for r in range(job.num_decodes)]
          record["prediction"] = beams[::-1]  # t5x: increasing score, best last
          record["aux"] = {"scores": [-float(r) for r in range(job.num_decodes)][::-1]}
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
    self.completed[stage] += 1

  def evaluate(self, job):
    stage = self._stage(job.output_dir)
    directory = os.path.join(job.output_dir, "inference_eval")
    os.makedirs(directory, exist_ok=True)
    self._maybe_crash(stage)
    with open(os.path.join(job.checkpoint, "trained_on.json")) as f:
      examples = json.load(f)["examples"]
    # A value that depends on the checkpoint evaluated, so the report's rows can be checked.
    bleu = fake_bleu(job.checkpoint)
    with open(os.path.join(directory, "padir_fake-metrics.jsonl"), "w") as f:
      f.write(json.dumps({"step": 1, "bleu": bleu - 1}) + "\n")  # an earlier line
      f.write(
          json.dumps(
              {"step": 2, "bleu": bleu, "chrf": float(examples), "samples": "text is left out"}
          )
          + "\n"
      )
    self.completed[stage] += 1


def fake_bleu(checkpoint):
  return (
      float(
          zlib.crc32(
              os.path.relpath(
                  checkpoint,
                  os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(checkpoint)))),
              ).encode()
          )
          % 1000
      )
      / 10
  )


def write_corpus(tmp_path, pairs):
  src, tgt = tmp_path / "train.de", tmp_path / "train.en"
  # Line files cannot hold newlines inside sentences; the shards after 'prepare' can.
  src.write_text("".join(s.replace("\n", " ") + "\n" for s, _ in pairs), encoding="utf-8")
  tgt.write_text("".join(t.replace("\n", " ") + "\n" for _, t in pairs), encoding="utf-8")
  return str(src), str(tgt)


def make_config(tmp_path, n=7, **kw):
  pairs = make_pairs(n)
  files = write_corpus(tmp_path, pairs)
  defaults = dict(
      run_dir=str(tmp_path / "run"),
      train_files=files,
      rounds=1,
      num_candidates=3,
      beam_size=4,
      ar_steps=5,
      nar_steps=3,
      num_shards=3,
  )
  defaults.update(kw)
  return em.EmConfig(**defaults), [(s.replace("\n", " "), t.replace("\n", " ")) for s, t in pairs]


def expected_selection(pairs, num_candidates):
  chosen = []
  for source, target in pairs:
    beams = [(-fake_score(source, fake_beam(target, r)), r) for r in range(num_candidates)]
    chosen.append((source, fake_beam(target, min(beams)[1])))
  return chosen


def quiet(_):
  pass


# ---------------------------------------------------------------------------------------------
# Plan.
def test_plan_one_round_in_order():
  names = [s.name for s in em.plan(em.EmConfig(run_dir="r", rounds=1))]
  assert names == [
      "prepare",
      "r0_ar_train",
      "r1_ar_decode",
      "r1_candidates",
      "r1_nar_train",
      "r1_nar_score",
      "r1_select",
      "r1_ar_train",
  ]


def test_plan_two_rounds_without_final_e_step_and_inputs_come_first():
  stages = em.plan(em.EmConfig(run_dir="r", rounds=2, final_e_step=False))
  names = [s.name for s in stages]
  assert names[-1] == "r2_nar_train" and "r2_select" not in names and "r1_select" in names
  decode2 = stages[names.index("r2_ar_decode")]
  assert decode2.inputs == ("prepare", "r1_ar_train")
  assert stages[names.index("r1_ar_train")].inputs == ("r1_select",)
  for stage in stages:
    assert stage.kind in em.STAGE_KINDS
    assert all(names.index(i) < names.index(stage.name) for i in stage.inputs)


def test_plan_with_raw_baseline_and_eval_stages():
  config = em.EmConfig(
      run_dir="r",
      rounds=2,
      final_e_step=False,
      raw_baseline=True,
      student_eval_gin=("s.gin",),
      teacher_eval_gin=("t.gin",),
  )
  stages = {s.name: s for s in em.plan(config)}
  names = list(stages)
  assert names[:5] == ["prepare", "r0_ar_train", "r0_ar_eval", "r0_nar_train", "r0_nar_eval"]
  assert stages["r0_nar_train"].inputs == ("prepare",)
  evals = [n for n in names if stages[n].kind == "eval"]
  assert evals == ["r0_ar_eval", "r0_nar_eval", "r1_nar_eval", "r1_ar_eval", "r2_nar_eval"]
  for name in evals:
    assert stages[name].inputs == (name.replace("_eval", "_train"),)
    assert names.index(name) == names.index(name.replace("_eval", "_train")) + 1
  # Without eval gins there are no eval stages; without raw_baseline no r0_nar_train.
  plain = [s.name for s in em.plan(em.EmConfig(run_dir="r", rounds=2))]
  assert not [n for n in plain if n.endswith("_eval")] and "r0_nar_train" not in plain


def test_plan_extends_when_rounds_grow():
  one = em.plan(em.EmConfig(run_dir="r", rounds=1))
  two = em.plan(em.EmConfig(run_dir="r", rounds=2))
  assert two[: len(one)] == one


def test_check_plan_rejects_unknown_input():
  with pytest.raises(em_actions.EmError, match="reads \\['nope'\\]"):
    stages.check_plan([stages.Stage("a", "write", "prepare", ("nope",), ())])


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("num_candidates", 5, "must not exceed beam_size"),
        ("rounds", -1, "rounds must be positive"),
        ("train_files", None, "exactly one of"),
        ("checkpoint_period", 2, "must divide"),
    ],
)
def test_config_validation(field, value, message):
  config = em.EmConfig(
      run_dir="r", train_files=("a", "b"), beam_size=4, num_candidates=4, ar_steps=5
  )
  config = dataclasses.replace(config, **{field: value})
  with pytest.raises(em_actions.EmError, match=message):
    config.validate()


# ---------------------------------------------------------------------------------------------
# Selection.
def cand(i, r, target="t"):
  return t5x_jobs.Candidate(i, r, f"s{i}", f"{target}{r}")


def test_select_best_argmax_and_tie_goes_to_lowest_rank():
  candidates = [cand(0, 0), cand(0, 1), cand(0, 2), cand(1, 2), cand(1, 0), cand(1, 1)]
  scores = [-3.0, -1.0, -2.0, 5.0, 5.0, 4.0]
  chosen = em_actions.select_best(candidates, scores, 2)
  assert [(c.source_index, c.rank, s) for c, s in chosen] == [(0, 1, -1.0), (1, 0, 5.0)]


def test_select_best_missing_source_names_index():
  with pytest.raises(em_actions.EmError, match="source index 1 has no candidate"):
    em_actions.select_best([cand(0, 0), cand(2, 0)], [0.0, 0.0], 3)


def test_select_best_duplicate_names_source_and_rank():
  with pytest.raises(em_actions.EmError, match="source index 0 rank 1 appears twice"):
    em_actions.select_best([cand(0, 1), cand(0, 1)], [0.0, 1.0], 1)


def test_select_best_rejects_nan_out_of_range_and_length_mismatch():
  with pytest.raises(em_actions.EmError, match="source index 0, rank 0.*not a number"):
    em_actions.select_best([cand(0, 0)], [float("nan")], 1)
  with pytest.raises(em_actions.EmError, match="source index 3 is outside"):
    em_actions.select_best([cand(3, 0)], [0.0], 2)
  with pytest.raises(em_actions.EmError, match="2 candidates but 1 scores"):
    em_actions.select_best([cand(0, 0), cand(0, 1)], [0.0], 1)


# ---------------------------------------------------------------------------------------------
# t5x.infer outputs.
def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
  return str(path)


def test_candidates_from_decodes_best_beam_first(tmp_path):
  path = write_jsonl(
      tmp_path / "x-predict_with_aux.jsonl-00000-of-00001",
      [
          {
              "inputs": {"inputs_pretokenized": "a\tb"},
              "prediction": ["worst", "mid", "best"],
              "aux": {"scores": [-3.0, -2.0, -1.0]},
          }
      ],
  )
  records = list(t5x_jobs.iter_infer_records(path, "predict_with_aux"))
  got = t5x_jobs.candidates_from_decodes([("a\tb", "ref")], records, 2)
  assert [(c.rank, c.target, c.ar_score) for c in got] == [(0, "best", -1.0), (1, "mid", -2.0)]


def test_candidates_from_decodes_detects_reordering(tmp_path):
  path = write_jsonl(
      tmp_path / "out",
      [
          {"inputs": {"inputs_pretokenized": "second"}, "prediction": ["x"], "aux": {}},
          {"inputs": {"inputs_pretokenized": "first"}, "prediction": ["y"], "aux": {}},
      ],
  )
  records = list(t5x_jobs.iter_infer_records(path, "predict_with_aux"))
  with pytest.raises(
      em_actions.EmError,
      match=r"out: line 1: inputs.inputs_pretokenized 'second' " r"differs from example 0",
  ):
    t5x_jobs.candidates_from_decodes([("first", ""), ("second", "")], records, 1)


def test_candidates_from_decodes_needs_the_whole_beam_and_all_lines(tmp_path):
  one_text = write_jsonl(
      tmp_path / "a", [{"inputs": {"inputs_pretokenized": "s"}, "prediction": "only top-1"}]
  )
  with pytest.raises(em_actions.EmError, match="return_all_decodes"):
    t5x_jobs.candidates_from_decodes(
        [("s", "")], list(t5x_jobs.iter_infer_records(one_text, "p")), 1
    )
  short = write_jsonl(
      tmp_path / "b", [{"inputs": {"inputs_pretokenized": "s"}, "prediction": ["x"]}]
  )
  with pytest.raises(em_actions.EmError, match="1 beams, need 2"):
    t5x_jobs.candidates_from_decodes([("s", "")], list(t5x_jobs.iter_infer_records(short, "p")), 2)
  with pytest.raises(em_actions.EmError, match="1 lines for 2 input examples"):
    t5x_jobs.candidates_from_decodes(
        [("s", ""), ("t", "")], list(t5x_jobs.iter_infer_records(short, "p")), 1
    )


def test_scores_from_records_checks_targets(tmp_path):
  path = write_jsonl(
      tmp_path / "s",
      [{"inputs": {"inputs_pretokenized": "s0", "targets_pretokenized": "other"}, "score": -1.5}],
  )
  with pytest.raises(em_actions.EmError, match="s: line 1: inputs.targets_pretokenized 'other'"):
    t5x_jobs.scores_from_records([cand(0, 0)], list(t5x_jobs.iter_infer_records(path, "score")))


def test_iter_infer_records_names_file_and_line(tmp_path):
  path = tmp_path / "bad"
  path.write_text('{"inputs": {}, "score": 1}\nnot json\n')
  with pytest.raises(em_actions.EmError, match="bad: line 2 is not valid JSON"):
    list(t5x_jobs.iter_infer_records(str(path), "score"))
  path.write_text('{"inputs": {}, "prediction": "x"}\n')
  with pytest.raises(em_actions.EmError, match="bad: line 1: no 'score' field"):
    list(t5x_jobs.iter_infer_records(str(path), "score"))


def test_infer_output_path_wants_exactly_one_file(tmp_path):
  with pytest.raises(em_actions.EmError, match="found none"):
    t5x_jobs.infer_output_path(str(tmp_path), "score")
  (tmp_path / "t-score.jsonl-00000-of-00001").write_text("")
  assert t5x_jobs.infer_output_path(str(tmp_path), "score").endswith("t-score.jsonl-00000-of-00001")


def test_candidate_files_round_trip_tabs_and_newlines(tmp_path):
  candidates = [
      t5x_jobs.Candidate(i // 2, i % 2, f"s\t{i}\n", f"t\r\n{i}\u2028x", -i * 0.5) for i in range(7)
  ]
  t5x_jobs.write_candidates(str(tmp_path), candidates, num_shards=3)
  assert len(os.listdir(tmp_path / "candidates")) == 3
  assert t5x_jobs.read_candidates(str(tmp_path)) == candidates


# ---------------------------------------------------------------------------------------------
# Stage gin files.
def test_stage_gin_binds_data_steps_and_mode(tmp_path):
  train = t5x_jobs.train_stage_gin(
      t5x_jobs.TrainJob(("g.gin",), ("WARMUP_STEPS = 1",), "/d/it's", "/m", 10, 5, "de")
  )
  assert 'distill.shards_task.directory = "/d/it\'s"' in train
  assert "TRAIN_STEPS = 10" in train and "utils.SaveCheckpointConfig.period = 5" in train
  assert "train_script.train.infer_eval_dataset_cfg = None" in train
  assert train.rstrip().endswith("WARMUP_STEPS = 1")  # user bindings win: they come last
  infer = t5x_jobs.infer_stage_gin(
      t5x_jobs.InferJob(
          ("g.gin",),
          (),
          "/d",
          "/c/checkpoint_5",
          "/o",
          "predict_with_aux",
          num_decodes=4,
          batch_size=8,
      )
  )
  for line in (
      "infer_script.infer.mode = 'predict_with_aux'",
      "models.DecoderParams.num_decodes = 4",
      "models.DecoderParams.return_all_decodes = True",
      "utils.DatasetConfig.shuffle = False",
      "utils.DatasetConfig.split = 'train'",
      "CHECKPOINT_PATH = '/c/checkpoint_5'",
      "utils.DatasetConfig.batch_size = 8",
  ):
    assert line in infer.splitlines()
  score = t5x_jobs.infer_stage_gin(t5x_jobs.InferJob(("g.gin",), (), "/d", "/c", "/o", "score"))
  assert "return_all_decodes" not in score and "infer_script.infer.mode = 'score'" in score
  evaluate = t5x_jobs.eval_stage_gin(
      t5x_jobs.EvalJob(("e.gin",), ("X = 1",), "/c/checkpoint_5", "/o", "validation")
  )
  for line in (
      "CHECKPOINT_PATH = '/c/checkpoint_5'",
      "EVAL_OUTPUT_DIR = '/o'",
      "utils.DatasetConfig.split = 'validation'",
      "X = 1",
  ):
    assert line in evaluate.splitlines()


# ---------------------------------------------------------------------------------------------
# Whole pipeline with the fake runner.
def run(config, runner, on_event=None):
  return em.run(config, runner, log=quiet, on_event=on_event)


def check_final_files(config, pairs):
  run_dir = config.run_dir
  assert (
      textio.read_distilled_shards(
          os.path.join(stages.stage_dir(run_dir, "prepare"), "data"), "train"
      )
      == pairs
  )
  distilled = textio.read_distilled_shards(
      os.path.join(stages.stage_dir(run_dir, "r1_candidates"), "distilled"), "train"
  )
  assert distilled == [(s, fake_beam(t, 0)) for s, t in pairs]
  selected = textio.read_distilled_shards(
      os.path.join(stages.stage_dir(run_dir, "r1_select"), "selected"), "train"
  )
  assert selected == expected_selection(pairs, config.num_candidates)
  with open(
      os.path.join(t5x_jobs.final_checkpoint(run_dir, "r1_ar_train"), "trained_on.json")
  ) as f:
    assert json.load(f)["examples"] == len(pairs)
  assert not [
      d for d in os.listdir(os.path.join(run_dir, "stages")) if d.startswith(stages.PARTIAL_PREFIX)
  ]


def test_full_run_writes_everything_once(tmp_path):
  config, pairs = make_config(tmp_path)
  runner = FakeRunner()
  done = run(config, runner)
  assert list(done) == [s.name for s in em.plan(config)]
  assert done["r1_select"]["counts"]["sources"] == len(pairs)
  assert done["r1_candidates"]["counts"]["candidates"] == len(pairs) * config.num_candidates
  check_final_files(config, pairs)
  assert sum(runner.completed.values()) == 5  # 3 trainings + 2 inferences
  # A second run finds everything done and runs nothing.
  again = FakeRunner()
  run(config, again)
  assert not again.completed


def kill_points():
  config = em.EmConfig(run_dir="r", rounds=1)
  points = []
  for stage in em.plan(config):
    points += [(stage.name, event) for event in ("start", "executed", "marked", "finished")]
    if stage.kind in stages.RESUMABLE_KINDS:
      points.append((stage.name, "runner"))
  return points


@pytest.mark.parametrize("stage_name,event", kill_points())
def test_kill_anywhere_then_resume(tmp_path, stage_name, event):
  config, pairs = make_config(tmp_path, n=5)
  marked = collections.Counter()

  def hook(crash):
    def on_event(stage, name):
      if name == "marked":
        marked[stage.name] += 1
      if crash and (stage.name, name) == (stage_name, event):
        raise Killed(f"{stage.name}/{name}")

    return on_event

  first = FakeRunner(crash_in=stage_name if event == "runner" else None)
  with pytest.raises(Killed):
    run(config, first, on_event=hook(crash=True))
  second = FakeRunner()
  run(config, second, on_event=hook(crash=False))
  # Every stage was marked done exactly once over both runs: nothing finished was redone.
  assert marked == collections.Counter(s.name for s in em.plan(config))
  stages_before = [s.name for s in em.plan(config)]
  killed_index = stages_before.index(stage_name)
  for name in stages_before[:killed_index]:
    assert stages.PARTIAL_PREFIX + name not in second.completed
  kinds = {s.name: s.kind for s in em.plan(config)}
  if event == "runner" and kinds[stage_name] == "train":
    assert second.resumed == [stages.PARTIAL_PREFIX + stage_name]  # t5x's own partial work
  check_final_files(config, pairs)


def test_partial_python_stage_is_discarded(tmp_path):
  config, pairs = make_config(tmp_path, n=4)

  def kill_at_select(stage, name):
    if (stage.name, name) == ("r1_select", "start"):
      raise Killed()

  with pytest.raises(Killed):
    run(config, FakeRunner(), on_event=kill_at_select)
  junk = os.path.join(
      stages.partial_dir(config.run_dir, "r1_select"), "selected", "train.jsonl-00000-of-00009"
  )
  os.makedirs(os.path.dirname(junk))
  with open(junk, "w") as f:
    f.write("half a line")
  with open(os.path.join(stages.partial_dir(config.run_dir, "r1_select"), "stray.tmp1"), "w") as f:
    f.write("{")
  run(config, FakeRunner())
  check_final_files(config, pairs)
  final = os.path.join(stages.stage_dir(config.run_dir, "r1_select"), "selected")
  assert "train.jsonl-00000-of-00009" not in os.listdir(final)
  assert sorted(os.listdir(os.path.dirname(final))) == ["DONE.json", "selected", "selection.jsonl"]


def test_rerun_with_other_config_names_the_field(tmp_path):
  config, _ = make_config(tmp_path, n=3)
  run(config, FakeRunner())
  with pytest.raises(em_actions.EmError, match="num_candidates: 3 -> 2"):
    run(dataclasses.replace(config, num_candidates=2), FakeRunner())


def test_more_rounds_extend_a_finished_run(tmp_path):
  config, pairs = make_config(tmp_path, n=3)
  run(config, FakeRunner())
  runner = FakeRunner()
  done = run(dataclasses.replace(config, rounds=2), runner)
  assert "r2_select" in done
  assert set(runner.completed) == {
      stages.PARTIAL_PREFIX + n
      for n in ("r2_ar_decode", "r2_nar_train", "r2_nar_score", "r2_ar_train")
  }


def test_baseline_and_eval_stages_run_report_and_resume(tmp_path):
  config, pairs = make_config(
      tmp_path,
      n=4,
      rounds=2,
      final_e_step=False,
      raw_baseline=True,
      student_eval_gin=("s.gin",),
      teacher_eval_gin=("t.gin",),
  )
  with pytest.raises(Killed):
    run(config, FakeRunner(crash_in="r1_nar_eval"))
  runner = FakeRunner()
  done = run(config, runner)
  # The killed eval stage is redone (not resumable); the stages before it are not.
  assert stages.PARTIAL_PREFIX + "r0_nar_eval" not in runner.completed
  assert runner.completed[stages.PARTIAL_PREFIX + "r1_nar_eval"] == 1
  # The baseline trained on the raw pairs (the prepare stage's data).
  with open(
      os.path.join(t5x_jobs.final_checkpoint(config.run_dir, "r0_nar_train"), "trained_on.json")
  ) as f:
    assert json.load(f)["data_dir"].endswith(os.path.join("prepare", "data"))
  for name in ("r0_ar_eval", "r0_nar_eval", "r1_nar_eval", "r1_ar_eval", "r2_nar_eval"):
    counts = done[name]["counts"]
    checkpoint = os.path.join(config.run_dir, counts["checkpoint"])
    assert counts["metrics"] == {
        "padir_fake": {"bleu": fake_bleu(checkpoint), "chrf": float(len(pairs))}
    }
  table = em.report(config).splitlines()
  assert table[0].startswith("| stage | model | trained on | steps |")
  rows = {line.split(" | ")[0][2:]: line for line in table[2:]}
  assert list(rows) == [
      "r0_ar_train",
      "r0_nar_train",
      "r1_nar_train",
      "r1_ar_train",
      "r2_nar_train",
  ]
  assert "| PaDIR | raw targets | 3 | 4 |" in rows["r0_nar_train"]
  assert "AR round 0 top beam (distilled)" in rows["r1_nar_train"]
  assert "(EM round 2)" in rows["r2_nar_train"]
  bleu = fake_bleu(os.path.join(config.run_dir, done["r2_nar_eval"]["counts"]["checkpoint"]))
  assert rows["r2_nar_train"].endswith(f"| padir_fake (validation) | {bleu:.2f} | 4.00 |")


def test_read_eval_metrics_names_missing_and_bad_files(tmp_path):
  with pytest.raises(em_actions.EmError, match="no '\\*-metrics.jsonl' written by t5x.eval"):
    t5x_jobs.read_eval_metrics(str(tmp_path))
  directory = tmp_path / "inference_eval"
  directory.mkdir()
  (directory / "t-metrics.jsonl").write_text('{"step": 1, "bleu": 2}\n{"bleu": \n')
  with pytest.raises(em_actions.EmError, match="t-metrics.jsonl: line 2 is not valid JSON"):
    t5x_jobs.read_eval_metrics(str(tmp_path))


def test_stage_dir_without_marker_is_an_error(tmp_path):
  config, _ = make_config(tmp_path, n=3)
  os.makedirs(stages.stage_dir(config.run_dir, "prepare"))
  with pytest.raises(em_actions.EmError, match="prepare exists without DONE.json"):
    run(config, FakeRunner())


def test_bad_training_file_names_file_and_line(tmp_path):
  config, _ = make_config(tmp_path, n=3)
  with open(config.train_files[1], "a") as f:
    f.write("\n")
  with pytest.raises(textio.CorpusFileError, match=r"train.en: line 4 is empty"):
    run(config, FakeRunner())


# ---------------------------------------------------------------------------------------------
# Command line and distillation.
def test_cli_gin_then_flags(tmp_path):
  gin_file = tmp_path / "em.gin"
  gin_file.write_text(
      "EmConfig.rounds = 3\nEmConfig.beam_size = 6\n" "EmConfig.teacher_bindings = ('A = 1',)\n"
  )
  args = em.build_parser().parse_args(
      [
          "--gin_file",
          str(gin_file),
          "--run_dir",
          "r",
          "--beam_size",
          "8",
          "--train_files",
          "a",
          "b",
          "--final_e_step",
          "false",
          "--student_eval_gin",
          "e.gin",
      ]
  )
  gin.clear_config()
  try:
    config = em.config_from_args(args)
    # The config is left open: a stage may import modules that define configurables later
    # (the padir_* tasks, when the training data are a task).
    gin.external_configurable(lambda: None, name="em_test_defined_after_parsing")
  finally:
    gin.clear_config()
  assert (config.rounds, config.beam_size, config.final_e_step) == (3, 8, False)
  assert not config.raw_baseline and config.student_eval_gin == ("e.gin",)
  assert config.teacher_bindings == ("A = 1",) and config.train_files == ("a", "b")


def test_distill_writes_ordered_shards_and_resumes(tmp_path):
  config, pairs = make_config(tmp_path, n=6, rounds=0, num_candidates=1, num_shards=2)
  out = str(tmp_path / "distilled" / "wmt14_de_en")
  with pytest.raises(Killed):
    distill.distill(
        config, "/ckpt/checkpoint_5", out, FakeRunner(crash_in="teacher_decode"), log=quiet
    )
  runner = FakeRunner()
  counts = distill.distill(config, "/ckpt/checkpoint_5", out, runner, log=quiet)
  assert counts["examples"] == 6 and counts["differs_from_reference"] == 6
  assert sorted(os.listdir(out)) == ["train.jsonl-00000-of-00002", "train.jsonl-00001-of-00002"]
  assert textio.read_distilled_shards(out, "train") == [(s, fake_beam(t, 0)) for s, t in pairs]
  assert runner.completed == {stages.PARTIAL_PREFIX + "teacher_decode": 1}


def test_shards_task_yields_the_shards_in_order(tmp_path, tiny_vocab_path):
  import seqio

  pairs = [("eins\tzwei", "one\ntwo"), ("drei", "three")]
  directory = str(tmp_path / "shards")
  textio.write_distilled_shards(directory, "train", pairs, num_shards=2)
  vocabulary = seqio.SentencePieceVocabulary(tiny_vocab_path)
  name = distill.shards_task(directory, vocabulary)
  assert distill.shards_task(directory, vocabulary) == name  # idempotent
  try:
    dataset = seqio.get_mixture_or_task(name).get_dataset(
        sequence_length={"inputs": 16, "targets": 16}, split="train", shuffle=False
    )
    got = [
        (ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
        for ex in dataset.as_numpy_iterator()
    ]
    assert got == pairs
  finally:
    seqio.TaskRegistry.remove(name)


def test_shards_task_missing_directory_is_named(tmp_path):
  with pytest.raises(textio.MissingCorpusFileError, match="nothing_here"):
    distill.shards_task(str(tmp_path / "nothing_here"), vocabulary=None)


def test_cli_data_flag_replaces_the_gin_data_option(tmp_path):
  gin_file = tmp_path / "em.gin"
  gin_file.write_text("EmConfig.task = 'some_task'\n")
  args = em.build_parser().parse_args(
      ["--gin_file", str(gin_file), "--run_dir", "r", "--train_files", "a", "b"]
  )
  gin.clear_config()
  try:
    config = em.config_from_args(args)
  finally:
    gin.clear_config()
  assert (config.task, config.train_files) == (None, ("a", "b"))
  config.validate()


def test_training_pairs_from_a_seqio_task_match_its_files():
  import tasks

  data_dir, _ = tasks.ensure_quickstart_data()
  config = em.EmConfig(run_dir="r", task="padir_quickstart_de_en", limit=5)
  expected = textio.read_parallel_files(
      os.path.join(data_dir, "train.de"), os.path.join(data_dir, "train.en")
  )[:5]
  assert em_actions.read_training_pairs(config) == expected


def test_read_candidates_names_bad_meta_line(tmp_path):
  t5x_jobs.write_candidates(str(tmp_path), [cand(0, 0), cand(0, 1)], num_shards=1)
  meta = tmp_path / "candidates.meta.jsonl"
  meta.write_text(meta.read_text().splitlines()[0] + '\n{"index": 1}\n')
  with pytest.raises(
      em_actions.EmError,
      match=r"candidates.meta.jsonl: line 2: not a candidate " r"record \(KeyError",
  ):
    t5x_jobs.read_candidates(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Issue 15: checks before the first stage, --report on a missing run, t5x progress lines.
def _em_main(argv, capsys):
  """(exit status, last stderr line) of em.main(argv)."""
  gin.clear_config()
  try:
    with pytest.raises(SystemExit) as exit_info:
      em.main(argv)
  finally:
    gin.clear_config()
  return exit_info.value.code, capsys.readouterr().err.strip().splitlines()[-1]


def test_report_on_a_missing_run_directory_exits_2(tmp_path, capsys):
  missing = str(tmp_path / "no_run")
  status, last = _em_main(["--run_dir", missing, "--train_files", "a", "b", "--report"], capsys)
  assert status == 2
  assert (
      last
      == f"python -m padir_t5x.em: error: argument --run_dir: run directory not found: {missing}"
  )


def test_em_without_t5x_fails_before_the_first_stage(tmp_path, capsys, monkeypatch):
  config, _ = make_config(tmp_path, n=3)
  monkeypatch.setattr(t5x_jobs, "t5x_importable", lambda *args: False)
  argv = ["--run_dir", config.run_dir, "--train_files", *config.train_files, "--rounds", "1"]
  status, last = _em_main(argv, capsys)
  assert status == 2
  assert "t5x is not importable by " in last and "(needed from stage r0_ar_train on)" in last
  assert "pip install --no-deps -c constraints/t5x.txt t5x airio jestimator" in last
  assert not os.path.exists(config.run_dir)  # not even the prepare stage ran


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--train_files", "missing.de", "x.en"], "EmConfig.train_files: source file not found"),
        (["--teacher_train_gin", "nope.gin"], "EmConfig.teacher_train_gin: gin file not found"),
        (["--beam_size", "0"], "argument --beam_size: must be an integer >= 1, got 0"),
        (["--num_candidates", "5"], "num_candidates (5) must not exceed beam_size (4)"),
        (["--gin_file", "nope.gin"], "argument --gin_file: file not found: nope.gin"),
        (["--task", "no_such_task"], "argument --task: no seqio task or mixture 'no_such_task'"),
    ],
)
def test_em_inputs_are_checked_before_the_first_stage(
    flags, message, tmp_path, capsys, monkeypatch
):
  config, _ = make_config(tmp_path, n=3)
  monkeypatch.setattr(t5x_jobs, "t5x_importable", lambda *args: True)
  monkeypatch.setattr(em, "run", lambda *args, **kw: pytest.fail("ran despite a bad input"))
  data = [] if "--task" in flags else ["--train_files", *config.train_files]
  status, last = _em_main(["--run_dir", config.run_dir, *data, *flags], capsys)
  assert status == 2 and message in last
  assert not os.path.exists(config.run_dir)


def test_em_checks_pass_then_it_runs(tmp_path, capsys, monkeypatch):
  config, _ = make_config(tmp_path, n=3)
  monkeypatch.setattr(t5x_jobs, "t5x_importable", lambda *args: True)
  ran = []
  monkeypatch.setattr(em, "run", lambda config, runner: ran.append(config.run_dir))
  gin.clear_config()
  try:
    assert em.main(["--run_dir", config.run_dir, "--train_files", *config.train_files]) == 0
  finally:
    gin.clear_config()
  assert ran == [config.run_dir]


def test_distill_checks_its_inputs_first(tmp_path, capsys, monkeypatch):
  config, _ = make_config(tmp_path, n=3)
  argv = ["--output_dir", str(tmp_path / "out"), "--corpus", "c", "--train_files"]
  argv += [*config.train_files]
  for flags, status, message in (
      (["--checkpoint", str(tmp_path / "nope")], 2, "argument --checkpoint: directory not found"),
      (["--checkpoint", str(tmp_path), "--beam_size", "0"], 2, "argument --beam_size: must be"),
      (["--checkpoint", str(tmp_path)], 2, "t5x is not importable by "),
  ):
    monkeypatch.setattr(t5x_jobs, "t5x_importable", lambda *args: False)
    with pytest.raises(SystemExit) as exit_info:
      distill.main([*argv, *flags])
    assert exit_info.value.code == status
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
  assert not os.path.exists(tmp_path / "out")


def _fake_t5x(directory, body):
  """A package `t5x` whose `python -m t5x.train` runs `body` (T5xRunner runs it in `directory`)."""
  package = directory / "t5x"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "train.py").write_text("import sys, time\n" + body)


def test_t5x_importable_looks_from_where_t5x_runs(tmp_path):
  import importlib.util

  _fake_t5x(tmp_path, "")
  assert t5x_jobs.t5x_importable(cwd=str(tmp_path))
  assert not t5x_jobs.t5x_importable(python=str(tmp_path / "no_python"))
  if importlib.util.find_spec("t5x") is None:
    (tmp_path / "empty").mkdir()
    assert not t5x_jobs.t5x_importable(cwd=str(tmp_path / "empty"))


def test_t5x_runner_logs_step_progress(tmp_path):
  # clu's LoggingWriter lines, as t5x.train writes them to the log.
  _fake_t5x(
      tmp_path,
      "for step in (10, 40, 70):\n"
      "  print(f'I0101 00:00:00.0 1 logging_writer.py:48] [{step}] collection=train loss=1.5',"
      " flush=True)\n"
      "  time.sleep(0.4)\n"
      "sys.exit(0)\n",
  )
  lines = []
  runner = t5x_jobs.T5xRunner(cwd=str(tmp_path), log=lines.append, progress_every=0.15)
  job = t5x_jobs.TrainJob((), (), "data", str(tmp_path / "stage" / "model"), 100, 100)
  runner.train(job)
  progress = [line for line in lines if "t5x.train: step " in line]
  assert progress and all("/100 " in line and "step/s" in line for line in progress)
  assert "t5x.train: step 70/100  70% [" in progress[-1]
  assert t5x_jobs.last_train_step(str(tmp_path / "stage" / "t5x.log")) == 70
