"""Every gin file parses and builds what it promises; the quickstart runs t5x train/eval/infer.

Needs t5x (skipped without). The gin files are parsed as t5x's main programs parse them, with
the repository root and t5x's own config directory on the search path.
"""

import __main__
import json
import math
import os
import pathlib
import re

import pytest

t5x = pytest.importorskip("t5x")

import gin  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import seqio  # noqa: E402
import t5x.eval  # noqa: E402
import t5x.infer  # noqa: E402
import t5x.train  # noqa: E402
from t5x import models as t5x_models  # noqa: E402
from t5x import utils as t5x_utils  # noqa: E402

import tasks  # noqa: E402,F401  (registers the padir_* tasks)
from padir_t5x import models  # noqa: E402
from padir_t5x.data import shared_data  # noqa: E402
from padir_t5x.core import network, network_config  # noqa: E402
import t5x_subprocess  # noqa: E402  (tests/t5x_subprocess.py)

REPO = pathlib.Path(__file__).resolve().parents[1]
GIN = REPO / "gin"
T5X_CONFIG_ROOT = os.path.dirname(os.path.dirname(t5x.__file__))
EXPERIMENTS = sorted(
    p.name
    for p in (GIN / "experiments").glob("*.gin")
    if not p.name.endswith(("_eval.gin", "_infer.gin"))
)
WMT_EXPERIMENTS = [n for n in EXPERIMENTS if "_wmt" in n]
# Shrinks any network a gin file builds, so that initialising it stays cheap.
TINY_NETWORK = [
    f"padir_t5x.core.network.TransformerConfig.{k} = {v}"
    for k, v in dict(
        emb_dim=16,
        num_heads=2,
        head_dim=8,
        mlp_dim=32,
        num_encoder_layers=1,
        num_decoder_layers=1,
        vocab_size=512,
    ).items()
]


def _capture(model=None, axis_rules=None, train=None, train_eval=None, infer_eval=None):
  return dict(
      model=model, axis_rules=axis_rules, train=train, train_eval=train_eval, infer_eval=infer_eval
  )


gin.external_configurable(_capture, "padir_test_capture")


@pytest.fixture(autouse=True)
def clean_gin(monkeypatch, tmp_path):
  # Stand-in WMT vocabularies (the quickstart's 256-piece model under the WMT file names), so
  # that models whose vocabulary is read lazily can be built without the real 32k files.
  vocab_dir = tmp_path / "vocab"
  vocab_dir.mkdir()
  for pair in ("de_en", "ro_en", "zh_en", "wmt_all"):
    os.symlink(_quickstart_vocab_path(), vocab_dir / f"{pair}.32k.model")
  monkeypatch.setenv("PADIR_VOCAB_DIR", str(vocab_dir))
  # t5x's run configs bind `__main__.train` / `.evaluate` / `.infer` (`import __main__ as ...`).
  monkeypatch.setattr(__main__, "train", t5x.train.train, raising=False)
  monkeypatch.setattr(__main__, "evaluate", t5x.eval.evaluate, raising=False)
  monkeypatch.setattr(__main__, "infer", t5x.infer.infer, raising=False)
  gin.clear_config()
  yield
  gin.clear_config()


def _parse(files, bindings=(), capture=("model",)):
  gin.clear_config()  # parsing finalises (locks) the config: each parse starts from a clean one
  for path in (str(REPO), T5X_CONFIG_ROOT):
    gin.add_config_file_search_path(path)
  targets = {
      "model": "%MODEL",
      "axis_rules": "@t5x.partitioning.standard_logical_axis_rules()",
      "train": "@train/t5x.utils.DatasetConfig()",
      "train_eval": "@train_eval/t5x.utils.DatasetConfig()",
      "infer_eval": "@infer_eval/t5x.utils.DatasetConfig()",
  }
  capture_bindings = [f"padir_test_capture.{k} = {targets[k]}" for k in capture]
  gin.parse_config_files_and_bindings([str(f) for f in files], list(bindings) + capture_bindings)
  return gin.get_configurable("padir_test_capture")()


def _toy_init(model):
  variables = model.get_initial_variables(
      jax.random.PRNGKey(0),
      {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 8)},
      {"encoder_input_tokens": jnp.int32, "decoder_input_tokens": jnp.int32},
  )
  assert "params" in variables and "params_axes" in variables
  return variables


def _quickstart_vocab_path():
  return tasks.ensure_quickstart_data()[1]


@pytest.mark.parametrize("name", ["padir_base.gin", "padir_tiny.gin", "ar_base.gin", "ar_tiny.gin"])
def test_model_gin_builds_and_initialises(name):
  bindings = ["DROPOUT_RATE = 0.0", f"VOCAB_PATH = '{_quickstart_vocab_path()}'"]
  if "base" in name:
    bindings += TINY_NETWORK
  captured = _parse([GIN / "models" / name], bindings)
  model = captured["model"]
  assert model.output_vocabulary.vocab_size == 256
  mode = model.module.config.decoder_mode
  if name.startswith("padir"):
    assert isinstance(model, models.PadirModel)
    assert mode == "padir"
    assert model.decoding_config.length_beam == 5 and model.decoding_config.max_passes == 4
    assert model.loss_config.num_stages == 2
    assert model.vocab_high == 256
  else:
    assert type(model) is t5x_models.EncoderDecoderModel
    assert mode == "autoregressive"
  variables = _toy_init(model)
  if name == "padir_tiny.gin":
    assert variables["params"]["token_embedder"]["embedding"].shape == (256, 64)


def test_padir_base_gin_defaults_are_the_library_defaults():
  """The gin macros exist for overrides; their values must not become a second set of defaults."""
  from padir_t5x.decoders.decoding_config import DecodingConfig
  from padir_t5x.core.loss_config import PadirLossConfig

  bindings = ["DROPOUT_RATE = 0.0", f"VOCAB_PATH = '{_quickstart_vocab_path()}'"] + TINY_NETWORK
  model = _parse([GIN / "models" / "padir_base.gin"], bindings)["model"]
  vocab = {"vocab_high": model.vocab_high}
  assert model.loss_config == PadirLossConfig(**vocab)
  assert model.decoding_config == DecodingConfig(**vocab, word_starts=model.word_starts)
  assert model.word_starts is not None  # filled in from the SentencePiece vocabulary
  length_fields = ("length_pooling", "length_target", "max_length_offset")
  library = network_config.TransformerConfig()
  for field in length_fields:
    assert getattr(model.module.config, field) == getattr(library, field), field


def test_padir_gin_macros_reach_the_model():
  captured = _parse(
      [GIN / "models" / "padir_tiny.gin"],
      [
          "DROPOUT_RATE = 0.0",
          f"VOCAB_PATH = '{_quickstart_vocab_path()}'",
          "NUM_STAGES = 3",
          "UNMASKING_RATE = 0.4",
          "LENGTH_LOSS_WEIGHT = 0.5",
          "CORRUPTION = 'mask'",
          "DECODING_INIT = 'mask'",
          "LENGTH_BEAM = 2",
          "MAX_PASSES = 7",
          "STUTTER_UNIT = 'piece'",
          "LENGTH_POOLING = 'token'",
          "LENGTH_TARGET = 'offset'",
          "MAX_LENGTH_OFFSET = 8",
          "LENGTH_OFFSETS = 1",
          "DECODING_PREDICTION = 'summed'",
          "REMASK = 'low_confidence'",
          "REFINE_TOP_K = 3",
      ],
  )
  model = captured["model"]
  cfg = model.module.config
  assert (cfg.length_pooling, cfg.length_target, cfg.max_length_offset) == ("token", "offset", 8)
  loss, decode = model.loss_config, model.decoding_config
  assert (loss.num_stages, loss.unmasking_rate, loss.length_loss_weight, loss.corruption) == (
      3,
      0.4,
      0.5,
      "mask",
  )
  assert (decode.init, decode.length_beam, decode.max_passes) == ("mask", 2, 7)
  assert decode.stutter_unit == "piece"
  assert (decode.length_offsets, decode.prediction, decode.remask) == (
      1,
      "summed",
      "low_confidence",
  )
  assert decode.refine_top_k == 3


def test_padir_gin_training_option_macros_reach_the_model():
  captured = _parse(
      [GIN / "models" / "padir_tiny.gin"],
      [
          "DROPOUT_RATE = 0.0",
          f"VOCAB_PATH = '{_quickstart_vocab_path()}'",
          "UNMASKING_RATE_MODE = 'glancing'",
          "UNMASKING_RATE_RANGE = (0.1, 0.9)",
          "CORRUPTION_MIX = (0.1, 0.1, 0.8)",
          "LOSS_POSITIONS = 'corrupted'",
          "GLANCING_RATIO = 0.3",
      ],
  )
  loss = captured["model"].loss_config
  assert (loss.unmasking_rate_mode, loss.unmasking_rate_range, loss.corruption_mix) == (
      "glancing",
      (0.1, 0.9),
      (0.1, 0.1, 0.8),
  )
  assert (loss.loss_positions, loss.glancing_ratio) == ("corrupted", 0.3)
  # T5X's loss_fn gets no step: an annealed glancing ratio is refused up front.
  with pytest.raises(ValueError, match="glancing_anneal_steps"):
    _parse(
        [GIN / "models" / "padir_tiny.gin"],
        [
            "DROPOUT_RATE = 0.0",
            f"VOCAB_PATH = '{_quickstart_vocab_path()}'",
            "UNMASKING_RATE_MODE = 'glancing'",
            "GLANCING_RATIO_END = 0.3",
            "GLANCING_ANNEAL_STEPS = 1000",
        ],
    )


@pytest.mark.parametrize("name", ["data_parallel.gin", "model_parallel.gin"])
def test_partitioning_rules_cover_every_network_axis(name):
  captured = _parse([GIN / "partitioning" / name], capture=("axis_rules",))
  covered = {logical for logical, _ in captured["axis_rules"]}
  assert set(network.LOGICAL_AXIS_NAMES) <= covered
  partitions = gin.query_parameter("t5x.partitioning.PjitPartitioner.num_partitions")
  if name == "data_parallel.gin":
    assert partitions == 1
  else:  # bound to the NUM_PARTITIONS macro
    assert gin.query_parameter("NUM_PARTITIONS/macro.value") == 2
    assert "NUM_PARTITIONS" in repr(partitions)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_gin_parses_and_initialises(name):
  path = GIN / "experiments" / name
  header = path.read_text().splitlines()[:25]
  assert any(
      f"--gin_file=gin/experiments/{name}" in line for line in header
  ), "every experiment opens with the command that runs it"
  assert any(line.startswith("# Expected") or "BLEU" in line for line in header)
  if name.startswith("shared_de_en") and shared_data.find_data_dir() is None:
    pytest.skip(
        "padir_shared_de_en needs the shared data (set $PADIR_DATA_DIR or provide "
        "../shared/data): its vocabulary is built from them"
    )
  captured = _parse(
      [path],
      ["MODEL_DIR = '/tmp/unused'"] + TINY_NETWORK,
      capture=("model", "axis_rules", "train", "train_eval", "infer_eval"),
  )
  model = captured["model"]
  is_padir = not (name.startswith("ar_") or name.endswith("_ar.gin"))
  assert isinstance(model, models.PadirModel) == is_padir
  if not is_padir:
    assert model.module.config.decoder_mode == "autoregressive"

  train_cfg, infer_cfg = captured["train"], captured["infer_eval"]
  for cfg in (train_cfg, captured["train_eval"], infer_cfg):
    assert cfg.pack is False
    assert cfg.mixture_or_task_name == train_cfg.mixture_or_task_name
  assert infer_cfg.split == "validation"
  task = seqio.get_mixture_or_task(train_cfg.mixture_or_task_name)
  assert any(getattr(fn, "__name__", "").startswith("bleu") for fn in task.metric_fns)
  # t5x refuses to train when the model's and the task's vocabularies differ.
  t5x_utils.verify_matching_vocabs(train_cfg, model)
  # Feature lengths fit the network's position tables.
  config = model.module.config
  for cfg in (train_cfg, infer_cfg):
    assert cfg.task_feature_lengths["inputs"] <= config.max_input_length
    assert cfg.task_feature_lengths["targets"] <= config.max_target_length
  assert set(network.LOGICAL_AXIS_NAMES) <= {k for k, _ in captured["axis_rules"]}

  if name in WMT_EXPERIMENTS:
    match = re.match(r"(padir|ar)_wmt(\d\d)_([a-z]{2})_([a-z]{2})(_distilled)?\.gin", name)
    assert match, name
    _, year, src, tgt, distilled = match.groups()
    assert train_cfg.mixture_or_task_name == (f"padir_wmt{year}_{src}_{tgt}" + (distilled or ""))
    assert train_cfg.batch_size == 2048
    assert gin.query_parameter("TRAIN_STEPS/macro.value") == 500000
    assert config.dropout_rate == 0.1
    if is_padir:
      assert model.loss_config.num_stages == 2
    lr = gin.query_parameter("t5x.trainer.Trainer.learning_rate_fn")
    schedule = lr.scoped_configurable_fn()
    warmup = gin.query_parameter("WARMUP_STEPS/macro.value")
    assert warmup == 10000
    assert float(schedule(0)) == 0.0
    peak = float(schedule(warmup))
    assert peak == pytest.approx(gin.query_parameter("PEAK_LEARNING_RATE/macro.value"))
    assert float(schedule(warmup // 2)) == pytest.approx(peak / 2)
    middle = float(schedule((warmup + 500000) // 2))
    assert middle == pytest.approx(
        (peak + gin.query_parameter("FINAL_LEARNING_RATE/macro.value")) / 2, rel=1e-3
    )
    assert float(schedule(500000)) == pytest.approx(
        gin.query_parameter("FINAL_LEARNING_RATE/macro.value")
    )
  _toy_init(model)


# A smoke run: `python -m t5x.train --gin_file=gin/experiments/X.gin --gin.TRAIN_STEPS=20`, shorter
# than every recipe's warm-up (100 or 10000 steps).
SMOKE_STEPS = 20


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_schedule_fits_a_smoke_run(name, caplog):
  """The resolved learning-rate schedule of a 20-step run: warm-up clamped, rates finite."""
  _parse(
      [GIN / "experiments" / name],
      ["MODEL_DIR = '/tmp/unused'", f"TRAIN_STEPS = {SMOKE_STEPS}"],
      capture=(),
  )
  lr = gin.query_parameter("t5x.trainer.Trainer.learning_rate_fn").scoped_configurable_fn()
  assert f"warm-up clamped to {SMOKE_STEPS - 1} steps" in caplog.text
  rates = [float(lr(step)) for step in range(SMOKE_STEPS + 1)]
  assert all(math.isfinite(rate) for rate in rates)
  # Step 0 is the warm-up's start (init_value 0.0); every step after it trains.
  assert rates[0] == 0.0 and min(rates[1:]) > 0.0
  assert rates[SMOKE_STEPS - 1] == pytest.approx(
      gin.query_parameter("PEAK_LEARNING_RATE/macro.value")
  )


@pytest.mark.parametrize("kind", ["padir", "ar"])
def test_wmt_eval_and_infer_commands_parse(kind):
  """The eval command written in the WMT experiment headers (and its infer analogue)."""
  for mode, output in (("eval", "EVAL_OUTPUT_DIR"), ("infer", "INFER_OUTPUT_DIR")):
    gin.clear_config()
    captured = _parse(
        [
            GIN / "experiments" / "recipe" / f"wmt_{kind}.gin",
            GIN / "experiments" / "recipe" / f"{mode}.gin",
            GIN / "partitioning" / "data_parallel.gin",
        ],
        [
            "VOCAB_PAIR = 'ro_en'",
            "MIXTURE_OR_TASK_NAME = 'padir_wmt16_en_ro'",
            "CHECKPOINT_PATH = '/tmp/unused'",
            f"{output} = '/tmp/unused'",
        ]
        + TINY_NETWORK,
    )
    model = captured["model"]
    assert isinstance(model, models.PadirModel) == (kind == "padir")
    cfg = gin.query_parameter("t5x.utils.DatasetConfig.pack")
    assert cfg is False
    assert model.module.config.dropout_rate == 0.0


def _run(args, log_path, timeout=900):
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  return t5x_subprocess.run_module(args, log_path, env, timeout)


@pytest.mark.slow
def test_quickstart_train_eval_infer(tmp_path):
  """20 t5x training steps on the quickstart, then t5x.eval and t5x.infer on the checkpoint."""
  model_dir = tmp_path / "model"
  log = _run(
      [
          "t5x.train",
          "--gin_file=gin/experiments/quickstart.gin",
          f"--gin.MODEL_DIR='{model_dir}'",
          "--gin.QUICKSTART_STEPS=20",
          "--gin.WARMUP_STEPS=5",
          "--gin.EVALUATOR_NUM_EXAMPLES=100",
          "--alsologtostderr",
      ],
      tmp_path / "train.log",
  )
  assert re.search(r"padir_quickstart_de_en/bleu at step 20: [0-9.]+", log)
  assert "stage2/accuracy" in log and "length_accuracy" in log
  checkpoint = model_dir / "checkpoint_20"
  assert checkpoint.is_dir()

  eval_dir = tmp_path / "eval"
  log = _run(
      [
          "t5x.eval",
          "--gin_file=gin/experiments/quickstart_eval.gin",
          f"--gin.CHECKPOINT_PATH='{checkpoint}'",
          f"--gin.EVAL_OUTPUT_DIR='{eval_dir}'",
          "--gin.seqio.Evaluator.num_examples=100",
          "--alsologtostderr",
      ],
      tmp_path / "eval.log",
  )
  assert re.search(r"padir_quickstart_de_en/bleu at step 20: [0-9.]+", log)
  metrics_files = list(eval_dir.rglob("*-metrics.jsonl"))
  assert metrics_files
  record = json.loads(metrics_files[0].read_text().splitlines()[-1])
  assert "bleu" in record and 0.0 <= float(record["bleu"]) <= 100.0

  infer_dir = tmp_path / "infer"
  _run(
      [
          "t5x.infer",
          "--gin_file=gin/experiments/quickstart_infer.gin",
          f"--gin.CHECKPOINT_PATH='{checkpoint}'",
          f"--gin.INFER_OUTPUT_DIR='{infer_dir}'",
          "--gin.INFER_SPLIT='validation'",
          "--alsologtostderr",
      ],
      tmp_path / "infer.log",
  )
  outputs = [
      p
      for p in infer_dir.glob("padir_quickstart_de_en-predict.jsonl-*-of-*")
      if not p.name.endswith(".COMPLETED")
  ]
  assert outputs, sorted(p.name for p in infer_dir.iterdir())
  lines = [json.loads(line) for p in outputs for line in p.read_text().splitlines()]
  assert len(lines) == 500
  assert all(isinstance(line["prediction"], str) for line in lines)
  assert all(line["inputs"]["inputs_pretokenized"] for line in lines)


# The experiments whose data can be here (the WMT ones need TFDS downloads: parse-only above).
# Measured on a shared 2-core CPU: quickstart 98 s, quickstart_ar 35 s, shared_de_en 150 s,
# shared_de_en_ar 69 s.
SMOKE_TRAINED = {
    "quickstart.gin": "padir_quickstart_de_en",
    "quickstart_ar.gin": "padir_quickstart_de_en",
    "shared_de_en.gin": "padir_shared_de_en",
    "shared_de_en_ar.gin": "padir_shared_de_en",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKE_TRAINED))
def test_experiment_trains_a_smoke_run(name, tmp_path):
  """The 20-step smoke run of issue 15 (it crashed inside optax): trains, evaluates, checkpoints."""
  if name.startswith("shared_de_en") and shared_data.find_data_dir() is None:
    pytest.skip("needs the shared data ($PADIR_DATA_DIR or ../shared/data)")
  model_dir = tmp_path / "model"
  log = _run(
      [
          "t5x.train",
          f"--gin_file=gin/experiments/{name}",
          f"--gin.MODEL_DIR='{model_dir}'",
          f"--gin.TRAIN_STEPS={SMOKE_STEPS}",
          "--gin.EVALUATOR_NUM_EXAMPLES=100",  # the final inference eval, kept short
          "--alsologtostderr",
      ],
      tmp_path / "train.log",
  )
  assert f"warm-up clamped to {SMOKE_STEPS - 1} steps" in log
  assert re.search(rf"{SMOKE_TRAINED[name]}/bleu at step {SMOKE_STEPS}: [0-9.]+", log)
  assert (model_dir / f"checkpoint_{SMOKE_STEPS}").is_dir()
