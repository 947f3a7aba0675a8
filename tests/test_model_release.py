"""Released models: parameters stored in bfloat16 (restored as float32) and the model card."""

import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from padir_t5x.core import checkpoints
from padir_t5x.core import network
from padir_t5x.core import network_config

CARD = {
    "name": "test",
    "description": "short captions",
    "data": "synthetic",
    "languages": "de-en",
    "num_params": 10,
    "size": "d=16",
    "steps": 3,
    "train_minutes": 0.5,
    "machine": "2-core CPU",
    "dev_scores": {"dev-multi30k": {"bleu": 1.5, "chrf": 20.0, "setting": "beam 5"}},
}


def _tiny():
  config = network_config.tiny_config(vocab_size=64, decoder_mode="autoregressive")
  module = network.Transformer(config)
  x = jnp.ones((1, 4), jnp.int32)
  params = module.init(jax.random.PRNGKey(0), x, x, x, enable_dropout=False)["params"]
  return module, params


def test_bfloat16_checkpoint_round_trip_restores_float32(tmp_path):
  module, params = _tiny()
  checkpoints.save_checkpoint(
      str(tmp_path / "bf16"), params, module.config, "ar", param_dtype="bfloat16", model_card=CARD
  )
  checkpoints.save_checkpoint(str(tmp_path / "f32"), params, module.config, "ar")
  small = os.path.getsize(tmp_path / "bf16" / checkpoints.PARAMS_FILE)
  large = os.path.getsize(tmp_path / "f32" / checkpoints.PARAMS_FILE)
  assert small < 0.6 * large
  _, loaded, meta = checkpoints.load_checkpoint(str(tmp_path / "bf16"))
  assert meta["param_dtype"] == "bfloat16" and meta["model_card"] == CARD
  flat, want = checkpoints._flatten(loaded), checkpoints._flatten(params)
  assert flat.keys() == want.keys()
  for key, value in want.items():
    assert flat[key].dtype == np.float32
    rounded = np.asarray(value, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(flat[key], rounded)
    # bfloat16 keeps 8 bits of mantissa: within 2**-8 relative of the float32 value.
    np.testing.assert_allclose(flat[key], value, rtol=2**-8, atol=1e-30)
  # The float32 default is unchanged: no param_dtype field, exact values.
  _, exact, meta32 = checkpoints.load_checkpoint(str(tmp_path / "f32"))
  assert "param_dtype" not in meta32
  for key, value in checkpoints._flatten(exact).items():
    np.testing.assert_array_equal(value, want[key])


def test_bfloat16_checkpoint_errors_name_the_file(tmp_path):
  module, params = _tiny()
  with pytest.raises(ValueError, match="param_dtype must be one of"):
    checkpoints.save_checkpoint(
        str(tmp_path / "x"), params, module.config, "ar", param_dtype="int8"
    )
  directory = tmp_path / "bf16"
  checkpoints.save_checkpoint(str(directory), params, module.config, "ar", param_dtype="bfloat16")
  config_path = directory / checkpoints.CONFIG_FILE
  meta = json.loads(config_path.read_text())
  config_path.write_text(json.dumps({**meta, "param_dtype": "float8"}))
  with pytest.raises(checkpoints.CheckpointError, match="param_dtype 'float8'"):
    checkpoints.load_checkpoint(str(directory))
  # float32 arrays where bfloat16 bits are declared
  checkpoints.save_checkpoint(str(tmp_path / "f32"), params, module.config, "ar")
  config_path.write_text(json.dumps(meta))
  os.replace(tmp_path / "f32" / checkpoints.PARAMS_FILE, directory / checkpoints.PARAMS_FILE)
  with pytest.raises(checkpoints.CheckpointError, match="is float32, a bfloat16 checkpoint"):
    checkpoints.load_checkpoint(str(directory))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"steps": "many"}, "'steps' is 'many', not int"),
        ({"steps": True}, "'steps' is True, not int"),
        ({"dev_scores": {"dev": {"bleu": 3.0}}}, "dev_scores\\['dev'\\] has no numeric 'chrf'"),
        ({"name": None}, "'name' is None, not str"),
    ],
)
def test_model_card_schema(tmp_path, change, message):
  checkpoints.check_model_card(CARD, "card")
  with pytest.raises(checkpoints.CheckpointError, match=message):
    checkpoints.check_model_card({**CARD, **change}, "card")
  missing = {k: v for k, v in CARD.items() if k != "data"}
  with pytest.raises(checkpoints.CheckpointError, match="has no 'data' field"):
    checkpoints.check_model_card(missing, "card")
  # read_config checks a card it finds, naming the file
  module, params = _tiny()
  checkpoints.save_checkpoint(str(tmp_path), params, module.config, "ar")
  path = tmp_path / checkpoints.CONFIG_FILE
  path.write_text(json.dumps({**json.loads(path.read_text()), "model_card": {**CARD, **change}}))
  with pytest.raises(checkpoints.CheckpointError, match="config.json: model_card"):
    checkpoints.read_config(str(tmp_path))


def test_release_writes_bfloat16_with_a_card_and_the_table(tmp_path, tiny_vocab_path):
  from benchmarks import release

  module, params = _tiny()
  run = tmp_path / "run"
  checkpoints.save_checkpoint(
      str(run),
      params,
      module.config,
      "ar",
      vocab_model=tiny_vocab_path,
      vocab_high=200,
      train_record={"steps": 30, "seconds": 90.0, "num_params": 1234, "train_data_dir": "/d"},
  )
  quality = tmp_path / "quality.json"
  rows = [
      {"system": "tiny", "setting": "beam=1", "bleu": 1.0, "chrf": 10.0},
      {"system": "tiny", "setting": "beam=5", "bleu": 2.5, "chrf": 12.0},
      {"system": "other", "setting": "beam=5", "bleu": 9.0, "chrf": 30.0},
  ]
  quality.write_text(json.dumps({"split": "dev-multi30k", "results": rows}))
  models = tmp_path / "models"
  models.mkdir()
  (models / "README.md").write_text(f"x\n{release.TABLE_START}\nold\n{release.TABLE_END}\ny\n")
  argv = ["--checkpoint", str(run), "--name", "tiny_ar", "--description", "toy", "--system"]
  argv += ["tiny", "--quality", str(quality), "--models_dir", str(models)]
  release.main(argv)
  meta = checkpoints.read_config(str(models / "tiny_ar"))
  card = meta["model_card"]
  assert meta["param_dtype"] == "bfloat16"
  assert card["dev_scores"] == {"dev-multi30k": {"bleu": 2.5, "chrf": 12.0, "setting": "beam=5"}}
  assert (card["steps"], card["train_minutes"], card["num_params"]) == (30, 1.5, 1234)
  table = (models / "README.md").read_text()
  assert "old" not in table and table.startswith("x\n") and table.endswith("y\n")
  assert "| [tiny_ar](tiny_ar/) | ar |" in table and "| 2.50 / 12.00 | - | beam=5 |" in table
  # Released again without --force: refused, naming the flag; nothing changed.
  with pytest.raises(SystemExit) as exit_info:
    release.main(argv)
  assert exit_info.value.code == 2
  with pytest.raises(SystemExit):
    release.main([*argv[:-2], "--models_dir", str(tmp_path / "nowhere")])


REPO_MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
RELEASED = sorted(
    name
    for name in (os.listdir(REPO_MODELS) if os.path.isdir(REPO_MODELS) else [])
    if checkpoints.is_core_checkpoint(os.path.join(REPO_MODELS, name))
)


@pytest.mark.parametrize("name", RELEASED)
def test_released_models_load_and_translate_captions_in_order(name):
  """Every model in models/: its card is valid, it loads in float32 from bfloat16, and it
  translates everyday captions, each output in its input's place (repeats give repeats)."""
  from padir_t5x.translate import Translator

  directory = os.path.join(REPO_MODELS, name)
  meta = checkpoints.read_config(directory)
  assert meta["param_dtype"] == "bfloat16" and "model_card" in meta
  translator = Translator.from_checkpoint(directory, batch_size=4)
  sources = [
      "Ein Mann fährt Fahrrad.",
      "Ein Hund läuft über den Strand.",
      "",
      "Ein Mann fährt Fahrrad.",
  ]
  out = translator.translate(sources)
  assert out[0] == out[3] and out[2] == ""
  # A caption translator that gets these wrong is not the released model.
  assert "man" in out[0].lower() and ("bike" in out[0].lower() or "bicycle" in out[0].lower())
  assert "dog" in out[1].lower() and "beach" in out[1].lower()
