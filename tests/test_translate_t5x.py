"""`python -m padir_t5x.translate` on a real T5X checkpoint (t5x.train, 3 steps). Needs t5x."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("t5x")

from padir_t5x.translate import Translator  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINES = ["du willst achtundvierzig große hunde kaufen.", "", "wir können drei autos zählen."]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("t5x_quickstart")
  subprocess.run(
      [
          sys.executable,
          "-m",
          "t5x.train",
          "--gin_file=gin/experiments/quickstart.gin",
          f"--gin.MODEL_DIR='{model_dir}'",
          "--gin.QUICKSTART_STEPS=3",
          "--gin.WARMUP_STEPS=1",
          "--gin.EVAL_STEPS=1",
          "--gin.INFER_EVAL_BATCH_SIZE=8",
      ],
      cwd=REPO,
      check=True,
      capture_output=True,
  )
  return model_dir


@pytest.mark.slow
def test_t5x_checkpoint_translates_like_the_api(model_dir, tmp_path):
  source = tmp_path / "in.de"
  source.write_text("".join(line + "\n" for line in LINES), encoding="utf-8")
  out = tmp_path / "out.en"
  run = subprocess.run(
      [
          sys.executable,
          "-m",
          "padir_t5x.translate",
          "--checkpoint",
          str(model_dir),  # the model directory: its latest checkpoint_N
          "--input",
          str(source),
          "--output",
          str(out),
          "--init",
          "mask",
          "--no_progress",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
  )
  assert run.returncode == 0, run.stderr[-2000:]
  got = out.read_text(encoding="utf-8").split("\n")[:-1]
  assert len(got) == len(LINES) and got[1] == "" and got[0] and got[2]
  assert "translated 3 sentences (1 empty" in run.stderr

  translator = Translator.from_checkpoint(str(model_dir / "checkpoint_3"), init="mask")
  assert translator.kind == "padir"
  # The quickstart gin's decoding setting (l=5, T=4), with the flag's init.
  assert (translator.decoding_config.length_beam, translator.decoding_config.max_passes) == (5, 4)
  assert translator.translate(LINES) == got


@pytest.mark.slow
def test_t5x_checkpoint_rejects_ar_flags_and_a_missing_gin(model_dir, tmp_path):
  with pytest.raises(ValueError, match="beam_size"):
    Translator.from_checkpoint(str(model_dir), beam_size=3)
  with pytest.raises(ValueError, match="gin config not found"):
    Translator.from_checkpoint(str(model_dir), gin_file=str(tmp_path / "none.gin"))
