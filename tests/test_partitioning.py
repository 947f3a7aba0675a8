"""The scale path under t5x's partitioner, on 8 simulated CPU devices (slow; needs t5x).

Each run is a real `python -m t5x.train` / `t5x.infer` subprocess of the quickstart gin files
with XLA_FLAGS=--xla_force_host_platform_device_count=8 (or 1 for the reference), so the same
mesh, `PjitPartitioner` and checkpoint code run as on a pod slice:

* training: PaDIR with data parallelism (8 x 1, gin/partitioning/data_parallel.gin) and model
  parallelism (4 x 2, gin/partitioning/model_parallel.gin), the AR twin with 4 x 2; the per-step
  losses equal a 1-device run of the same seeds within `LOSS_RTOL`;
* partition specs: every parameter and optimizer-state axis has a rule, and under 4 x 2 every
  embedding, attention and MLP matrix (and its second moment) is split over 'model';
* a checkpoint saved under 8 x 1 restores under 4 x 2, both to keep training (the losses go on
  as the 1-device run's) and to decode with t5x.infer (the same predictions as on 1 device);
* Adafactor logs no "falls back to heuristics" (no factor rule is silently ignored).

About 6 minutes on a 2-core CPU (nine subprocesses, each compiling its model).
"""

import json
import os
import pathlib
import re
import shutil

import numpy as np
import pytest

t5x = pytest.importorskip(
    "t5x", reason="runs t5x.train and t5x.infer (t5x is not on PyPI: setup.cfg's 't5x' extra)"
)

from t5x import partitioning  # noqa: E402

from padir_t5x import models  # noqa: E402
from padir_t5x.core import network  # noqa: E402
import t5x_subprocess  # noqa: E402  (tests/t5x_subprocess.py)

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 4  # steps of each run from scratch; the resumed run goes on to RESUMED_STEPS
RESUMED_STEPS = 6
# Relative tolerance on a step's loss between meshes: the runs differ only in the order of
# floating-point reductions (data-parallel gradient all-reduce, model-parallel partial matmuls),
# which compounds over the steps. Measured on a 2-core CPU: at most 9.1e-8 (8 x 1 and 4 x 2 over
# steps 1-4, the resumed 4 x 2 run over steps 5-6, the AR twin 7.4e-8); 100 x that as margin.
LOSS_RTOL = 1e-5
FALLBACK = "falls back to heuristics"

# Bound after the experiment's files: fixed data order and seeds, one loss per step, a learning
# rate schedule that does not depend on TRAIN_STEPS (so that a 4-step and a 6-step run share
# their first steps), no evaluation, the dataset iterator in the checkpoint (so that a resumed
# run reads the batches the uninterrupted one reads), and the WMT recipe's Adafactor (bound in
# padir_base.gin and ar_base.gin; the quickstart itself trains with the core's AdamW), whose
# factored second moments the partition specs are checked for.
OVERRIDES = """\
from __gin__ import dynamic_registration
import __main__ as train_script
from padir_t5x.core import schedules
from t5x import adafactor
from t5x import utils
QUICKSTART_STEPS = {steps}
OPTIMIZER = @adafactor.Adafactor()
CHECKPOINT_PERIOD = {steps}
WARMUP_STEPS = 2
RANDOM_SEED = 0
schedules.warmup_cosine_decay.decay_steps = 100
train/utils.DatasetConfig.seed = 0
utils.SaveCheckpointConfig.save_dataset = True
train_script.train.stats_period = 1
train_script.train.train_eval_dataset_cfg = None
train_script.train.infer_eval_dataset_cfg = None
"""

MESHES = {
    "1": (1, "data_parallel.gin"),
    "8x1": (8, "data_parallel.gin"),
    "4x2": (8, "model_parallel.gin"),
}


def environment(devices):
  """Subprocess environment: CPU only, `devices` host devices, this checkout's package first."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  return env


def run_t5x(args, devices, log_path, timeout=900):
  """Runs `python -m t5x.<args>` from the repository root; returns its log, failing on error."""
  return t5x_subprocess.run_module(args, log_path, environment(devices), timeout)


def train(root, name, experiment, mesh, steps=STEPS, resume_from=None):
  """t5x.train of `experiment` under `mesh`; returns (model_dir, log)."""
  devices, partitioning_file = MESHES[mesh]
  model_dir = root / name
  if resume_from is not None:  # t5x.train restores the latest checkpoint of its MODEL_DIR
    # Without the old run's summaries: this run's own first step is then in plain sight.
    shutil.copytree(resume_from, model_dir, ignore=shutil.ignore_patterns("train"))
  overrides = root / f"{name}.gin"
  overrides.write_text(OVERRIDES.format(steps=steps))
  log = run_t5x(
      [
          "t5x.train",
          f"--gin_file=gin/experiments/{experiment}",
          f"--gin_file=gin/partitioning/{partitioning_file}",
          f"--gin_file={overrides}",
          f"--gin.MODEL_DIR='{model_dir}'",
          "--alsologtostderr",
      ],
      devices,
      root / f"{name}.log",
  )
  return model_dir, log


def step_losses(model_dir):
  """{step: loss} from the TensorBoard summaries t5x.train writes (one per step here)."""
  import tensorflow as tf

  losses = {}
  for path in sorted((model_dir / "train").glob("events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(str(path)):
      for value in event.summary.value:
        if value.tag == "loss":
          losses[event.step] = float(tf.make_ndarray(value.tensor))
  return losses


def assert_losses_agree(losses, reference):
  assert losses, "no loss summaries"
  steps = sorted(losses)
  got = np.array([losses[s] for s in steps])
  want = np.array([reference[s] for s in steps])
  worst = float(np.max(np.abs(got - want) / np.abs(want)))
  assert worst <= LOSS_RTOL, f"steps {steps}: {got} vs 1 device {want} (max rel. diff {worst:.2e})"
  print(f"steps {steps}: max relative loss difference {worst:.2e}")


def partition_specs(model_dir):
  """{variable: (axes, spec)} from the model-info.txt t5x.train writes (parameters and state)."""
  pattern = re.compile(r"^Variable (\S+)\s+size \d+\s+shape \((.*?)\)\s+partition spec (.*)$")
  specs = {}
  for line in (model_dir / "model-info.txt").read_text().splitlines():
    match = pattern.match(line)
    if match:
      name, shape, spec = match.groups()
      axes = tuple(part.split("=")[0] for part in shape.split(", ") if "=" in part)
      specs[name] = (axes, spec)
  return specs


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("partitioning")


@pytest.fixture(scope="module")
def padir_reference(root):
  """1 device, RESUMED_STEPS steps: the losses every other PaDIR run is compared with."""
  model_dir, log = train(root, "padir_1", "quickstart.gin", "1", steps=RESUMED_STEPS)
  return step_losses(model_dir), log


@pytest.fixture(scope="module")
def padir_8x1(root):
  return train(root, "padir_8x1", "quickstart.gin", "8x1")


@pytest.fixture(scope="module")
def padir_4x2(root):
  return train(root, "padir_4x2", "quickstart.gin", "4x2")


def test_padir_data_parallel_8x1_losses_match_one_device(padir_reference, padir_8x1):
  model_dir, log = padir_8x1
  assert_losses_agree(step_losses(model_dir), padir_reference[0])
  assert FALLBACK not in log and FALLBACK not in padir_reference[1]


def test_padir_model_parallel_4x2_losses_match_one_device(padir_reference, padir_4x2):
  model_dir, log = padir_4x2
  assert_losses_agree(step_losses(model_dir), padir_reference[0])
  assert FALLBACK not in log


def test_model_parallel_splits_every_large_matrix(padir_4x2):
  """No silent replication: every axis has a rule; kernels and their state are split."""
  specs = partition_specs(padir_4x2[0])
  rules = dict(
      partitioning.standard_logical_axis_rules(
          additional_rules=list(models.ADDITIONAL_LOGICAL_AXIS_RULES)
      )
  )
  used = {axis for axes, _ in specs.values() for axis in axes}
  assert used <= set(network.LOGICAL_AXIS_NAMES) <= set(rules), used - set(rules)
  split = {name for name, (_, spec) in specs.items() if "'model'" in spec}
  for name, (axes, spec) in sorted(specs.items()):
    print(f"{name:70s} {axes} {spec}")
    big = set(axes) & {"vocab", "mlp", "joined_kv"} and len(axes) == 2
    if big and not name.endswith(("/v_row", "/v_col", "/m")):
      assert name in split, f"{name} {axes} is replicated: {spec}"
  # Replicated by design: layer norms and biases over 'embed' (t5x's 1-D parameter rules keep
  # 'embed' whole) and the position tables [abspos_buckets, embed] (0.4% of Base's parameters).
  replicated = {name for name in specs if name not in split and not name.startswith("param_states")}
  assert all(
      specs[name][0] in {("embed",), ("length_classes",), ("abspos_buckets", "embed"), ()}
      for name in replicated
  ), sorted(replicated)
  assert "token_embedder/embedding" in split
  assert "param_states/token_embedder/embedding/v" in split


def test_checkpoint_from_8x1_trains_on_under_4x2(root, padir_reference, padir_8x1):
  """Parameters, Adafactor state and the data iterator restore into the other mesh."""
  model_dir, _ = train(
      root,
      "padir_resumed_4x2",
      "quickstart.gin",
      "4x2",
      steps=RESUMED_STEPS,
      resume_from=padir_8x1[0],
  )
  losses = step_losses(model_dir)
  # It started at step STEPS + 1 (restored, not from scratch) and went on as 1 device did.
  assert sorted(losses) == list(range(STEPS + 1, RESUMED_STEPS + 1)), sorted(losses)
  assert_losses_agree(losses, padir_reference[0])


def test_ar_twin_model_parallel_4x2_losses_match_one_device(root):
  reference_dir, reference_log = train(root, "ar_1", "quickstart_ar.gin", "1")
  model_dir, log = train(root, "ar_4x2", "quickstart_ar.gin", "4x2")
  assert_losses_agree(step_losses(model_dir), step_losses(reference_dir))
  assert FALLBACK not in log and FALLBACK not in reference_log


def infer(root, name, checkpoint, mesh):
  """t5x.infer (PaDIR decoding) of the validation split under `mesh`; the predictions."""
  devices, partitioning_file = MESHES[mesh]
  output_dir = root / name
  run_t5x(
      [
          "t5x.infer",
          "--gin_file=gin/experiments/quickstart_infer.gin",
          f"--gin_file=gin/partitioning/{partitioning_file}",
          f"--gin.CHECKPOINT_PATH='{checkpoint}'",
          f"--gin.INFER_OUTPUT_DIR='{output_dir}'",
          "--gin.INFER_SPLIT='validation'",
          "--gin.INFER_BATCH_SIZE=128",  # a multiple of the 4 or 8 data shards
          "--alsologtostderr",
      ],
      devices,
      root / f"{name}.log",
  )
  outputs = sorted(
      p
      for p in output_dir.glob("padir_quickstart_de_en-predict.jsonl-*-of-*")
      if not p.name.endswith(".COMPLETED")
  )
  assert outputs, sorted(p.name for p in output_dir.iterdir())
  return [json.loads(line)["prediction"] for p in outputs for line in p.read_text().splitlines()]


def test_infer_4x2_predicts_as_one_device_from_an_8x1_checkpoint(root, padir_8x1):
  checkpoint = padir_8x1[0] / f"checkpoint_{STEPS}"
  one = infer(root, "infer_1", checkpoint, "1")
  split = infer(root, "infer_4x2", checkpoint, "4x2")
  assert len(one) == 500
  assert split == one
