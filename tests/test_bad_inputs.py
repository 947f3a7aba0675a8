"""Bad inputs, refused up front: one line naming the flag or file, no work done, nothing written.

Each case of issue 31's sweep runs through the command's `main([...])` in-process (a subprocess
only where the process itself must start without standard input) and checks the exit status,
the last line on stderr, the time (short enough that no model was trained or sentence decoded)
and that no file under the test's directory was created or changed.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import pytest

from padir_t5x.core import checkpoints
from padir_t5x import cli
from padir_t5x import corpus
from padir_t5x.core import network
from padir_t5x.core import network_config
from padir_t5x import quickstart
from padir_t5x import translate

TRANSLATE = "python -m padir_t5x.translate: error: "
SECONDS = 5.0  # in-process refusals: far less than loading and decoding, let alone training


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny_vocab_path):
  """A tiny random PaDIR core checkpoint (with its vocabulary's vocab_sha256)."""
  cfg = network_config.tiny_config(
      vocab_size=256,
      emb_dim=32,
      num_heads=2,
      head_dim=16,
      mlp_dim=32,
      num_encoder_layers=1,
      num_decoder_layers=1,
      max_input_length=12,
      max_target_length=12,
      dropout_rate=0.0,
  )
  x = jnp.ones((1, 12), jnp.int32)
  params = network.Transformer(cfg).init(jax.random.PRNGKey(0), x, x, x, enable_dropout=False)
  directory = str(tmp_path_factory.mktemp("bad_inputs") / "padir")
  checkpoints.save_checkpoint(
      directory, params["params"], cfg, "padir", vocab_model=tiny_vocab_path, vocab_high=200
  )
  return directory


@pytest.fixture(scope="module")
def other_vocab_path(tmp_path_factory):
  """Another 200-piece SentencePiece model (other text): the checkpoint's size, not its pieces."""
  from padir_t5x import vocab

  pairs = corpus.generate_pairs(1500, seed=7)
  prefix = str(tmp_path_factory.mktemp("other_vocab") / "other")
  return vocab.train_sentencepiece(
      [s.upper() for pair in pairs for s in pair], prefix, vocab_size=200, seed=0, num_threads=1
  )


def _snapshot(root) -> dict:
  """{relative path: bytes} of every file under `root`, and each directory as None."""
  found = {}
  for directory, dirs, files in os.walk(root):
    for name in dirs:
      found[os.path.relpath(os.path.join(directory, name), root)] = None
    for name in files:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        found[os.path.relpath(path, root)] = f.read()
  return found


def _refused(main, argv, root, capsys, status=2):
  """Runs main(argv); asserts the exit `status`, a quick end and `root` unchanged; returns the
  last line on stderr."""
  before = _snapshot(root)
  start = time.perf_counter()
  with pytest.raises(SystemExit) as exit_info:
    code = main(argv)
    raise SystemExit(code)  # commands that report an error by returning its status
  seconds = time.perf_counter() - start
  assert exit_info.value.code == status, capsys.readouterr().err
  assert seconds < SECONDS, f"{seconds:.1f} s: work was done before the refusal"
  assert _snapshot(root) == before, "a file was written or changed"
  return capsys.readouterr().err.strip().splitlines()[-1]


def _source(tmp_path, name="in.de"):
  path = tmp_path / name
  path.write_text("ich zähle sieben äpfel.\ndu kannst fünf katzen malen.\n", encoding="utf-8")
  return str(path)


def _deny_writing(monkeypatch, directory):
  """os.access says `directory` cannot be written (root writes anywhere; the check is os.access)."""
  real_access = os.access

  def access(path, mode, *args, **kwargs):
    if os.path.abspath(path) == os.path.abspath(directory) and mode & os.W_OK:
      return False
    return real_access(path, mode, *args, **kwargs)

  monkeypatch.setattr(os, "access", access)


def _damaged_copy(ckpt, tmp_path, damage):
  copy = tmp_path / "damaged"
  shutil.copytree(ckpt, copy)
  damage(copy)
  return str(copy)


# ---------------------------------------------------------------------------------------------
# translate --output.
def test_translate_output_same_as_input_is_refused(ckpt, tmp_path, capsys):
  source = _source(tmp_path)
  argv = ["--checkpoint", ckpt, "--input", source, "--output", source]
  line = _refused(translate.main, argv, tmp_path, capsys)
  assert line == (
      f"{TRANSLATE}argument --output: {source} is the same file as --input {source}: it would "
      "be written over"
  )
  # The same file under another name: a hard link, a symbolic link, a relative path.
  os.link(source, tmp_path / "hard.de")
  os.symlink(source, tmp_path / "soft.de")
  for other in (tmp_path / "hard.de", tmp_path / "soft.de", tmp_path / "." / "in.de"):
    line = _refused(translate.main, [*argv[:-1], str(other)], tmp_path, capsys)
    assert f"argument --output: {other} is the same file as --input {source}" in line


def test_translate_output_in_an_unwritable_directory_is_refused(
    ckpt, tmp_path, capsys, monkeypatch
):
  source = _source(tmp_path)
  (tmp_path / "out").mkdir()
  _deny_writing(monkeypatch, tmp_path / "out")
  output = str(tmp_path / "out" / "out.en")
  line = _refused(
      translate.main,
      ["--checkpoint", ckpt, "--input", source, "--output", output],
      tmp_path,
      capsys,
  )
  assert line == f"{TRANSLATE}argument --output: directory of {output} is not writable"
  # Under a regular file: no directory at all.
  output = os.path.join(source, "out.en")
  line = _refused(
      translate.main,
      ["--checkpoint", ckpt, "--input", source, "--output", output],
      tmp_path,
      capsys,
  )
  assert line == (
      f"{TRANSLATE}argument --output: directory of {output} does not exist ({source} is not a "
      "directory)"
  )


def test_translate_input_directory_missing_checkpoint_and_closed_stdin(
    ckpt, tmp_path, capsys, monkeypatch
):
  line = _refused(
      translate.main, ["--checkpoint", ckpt, "--input", str(tmp_path)], tmp_path, capsys
  )
  assert line == f"{TRANSLATE}argument --input: {tmp_path} is a directory, not a file"
  missing = str(tmp_path / "no_such_checkpoint")
  line = _refused(translate.main, ["--checkpoint", missing], tmp_path, capsys)
  assert line == f"{TRANSLATE}argument --checkpoint: directory not found: {missing}"
  monkeypatch.setattr(sys, "stdin", None)
  line = _refused(translate.main, ["--checkpoint", ckpt], tmp_path, capsys)
  assert line == f"{TRANSLATE}standard input is closed: pass --input FILE"


def test_translate_with_stdin_closed_in_a_real_process(ckpt, tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  before = _snapshot(tmp_path)
  start = time.perf_counter()
  result = subprocess.run(
      [
          "bash",
          "-c",
          'exec "$0" -m padir_t5x.translate --checkpoint "$1" <&-',
          sys.executable,
          ckpt,
      ],
      capture_output=True,
      cwd=tmp_path,
      env={**os.environ, "PYTHONPATH": repo},
      timeout=120,
      check=False,
  )
  assert result.returncode == 2, result.stderr.decode()
  assert result.stderr.decode().strip().splitlines()[-1] == (
      f"{TRANSLATE}standard input is closed: pass --input FILE"
  )
  assert result.stdout == b"" and _snapshot(tmp_path) == before
  assert time.perf_counter() - start < 60  # a Python start and imports; no model is loaded


# ---------------------------------------------------------------------------------------------
# quickstart --output_dir: refused before the corpus is built or a step trained.
def test_quickstart_output_dir_refused_before_training(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(quickstart, "run", lambda *a, **k: pytest.fail("training started"))
  existing = tmp_path / "a_file"
  existing.write_text("mine\n")
  line = _refused(quickstart.main, ["--output_dir", str(existing)], tmp_path, capsys)
  assert line == (
      f"python -m padir_t5x.quickstart: error: argument --output_dir: {existing} exists and is "
      "not a directory"
  )
  (tmp_path / "runs").mkdir()
  _deny_writing(monkeypatch, tmp_path / "runs")
  for output_dir, message in (
      (tmp_path / "runs" / "quickstart", "is not writable"),
      (tmp_path / "runs" / "a" / "b", f"cannot be created: {tmp_path / 'runs'} is not writable"),
  ):
    line = _refused(quickstart.main, ["--output_dir", str(output_dir)], tmp_path, capsys)
    assert line == (
        f"python -m padir_t5x.quickstart: error: argument --output_dir: directory of "
        f"{output_dir} {message}"
    )


# ---------------------------------------------------------------------------------------------
# benchmarks.quality --out.
def test_quality_out_in_an_unwritable_directory_is_refused(ckpt, tmp_path, capsys, monkeypatch):
  from benchmarks import quality

  source, reference = _source(tmp_path), _source(tmp_path, "ref.en")
  (tmp_path / "results").mkdir()
  _deny_writing(monkeypatch, tmp_path / "results")
  out = str(tmp_path / "results" / "quality.json")
  argv = ["--padir", ckpt, "--source", source, "--reference", reference, "--out", out]
  line = _refused(quality.main, argv, tmp_path, capsys)
  assert line.endswith(f"error: argument --out: directory of {out} is not writable")


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints: one line naming the file (and the field).
def _truncate(directory):
  path = directory / checkpoints.PARAMS_FILE
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(directory):
  (directory / checkpoints.PARAMS_FILE).write_bytes(b"")


def _not_a_zip(directory):
  (directory / checkpoints.PARAMS_FILE).write_bytes(b"PK\x03\x04 not really a zip archive" * 40)


def _drop_an_array(directory):
  import numpy as np

  path = directory / checkpoints.PARAMS_FILE
  with np.load(path) as data:
    arrays = {k: data[k] for k in data.files}
  arrays.pop(sorted(arrays)[0])
  np.savez(path, **arrays)


@pytest.mark.parametrize(
    "damage, message",
    [
        (_truncate, "is not a readable .npz file (truncated or damaged: BadZipFile: "),
        (_empty, "is not a readable .npz file (it is empty)"),
        (_not_a_zip, "is not a readable .npz file (truncated or damaged: BadZipFile: "),
        (_drop_an_array, "does not match the network of config.json: missing ["),
    ],
)
def test_damaged_params_name_the_file(ckpt, tmp_path, capsys, damage, message):
  from benchmarks import quality

  damaged = _damaged_copy(ckpt, tmp_path, damage)
  params = os.path.join(damaged, checkpoints.PARAMS_FILE)
  source = _source(tmp_path)
  output = str(tmp_path / "out.en")
  argv = ["--checkpoint", damaged, "--input", source, "--output", output]
  line = _refused(translate.main, argv, tmp_path, capsys, status=1)
  assert line.startswith(f"translate: error: {params} {message}")
  argv = ["--padir", damaged, "--source", source, "--reference", source, "--out", output]
  line = _refused(quality.main, argv, tmp_path, capsys)
  assert f"error: --padir: {params} {message}" in line


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("emb_dim", "sixty-four", "transformer field 'emb_dim' is 'sixty-four', not an integer"),
        ("emb_dim", True, "transformer field 'emb_dim' is True, not an integer"),
        ("dropout_rate", "none", "transformer field 'dropout_rate' is 'none', not a number"),
        (
            "logits_via_embedding",
            "yes",
            "transformer field 'logits_via_embedding' is 'yes', not true or false",
        ),
        (
            "length_hidden_dim",
            1.5,
            "transformer field 'length_hidden_dim' is 1.5, not an integer or null",
        ),
        (
            "decoder_mode",
            "sideways",
            "transformer field 'decoder_mode' is 'sideways', not one of 'padir', ",
        ),
        ("dtype", 32, "transformer field 'dtype' is 32, not a string"),
        ("no_such_field", 1, "unknown transformer field 'no_such_field' (TransformerConfig has "),
    ],
)
def test_config_field_of_the_wrong_type_names_the_file_and_field(
    ckpt, tmp_path, field, value, message
):
  def edit(directory):
    path = directory / checkpoints.CONFIG_FILE
    meta = json.loads(path.read_text())
    meta["transformer"][field] = value
    path.write_text(json.dumps(meta))

  damaged = _damaged_copy(ckpt, tmp_path, edit)
  config = os.path.join(damaged, checkpoints.CONFIG_FILE)
  with pytest.raises(checkpoints.CheckpointError) as error:
    checkpoints.read_config(damaged)
  assert str(error.value).startswith(f"{config}: {message}")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"kind": "diffusion"}, "kind 'diffusion' is not one of ('padir', 'ar')"),
        ({"kind": ["padir"]}, "kind ['padir'] is not one of ('padir', 'ar')"),
        ({"vocab_high": "200"}, "field 'vocab_high' is '200', not an integer or null"),
        ({"vocab_sha256": 5}, "field 'vocab_sha256' is 5, not a string"),
        ({"transformer": []}, "field 'transformer' is not a JSON object"),
    ],
)
def test_config_other_fields_name_the_file(ckpt, tmp_path, change, message):
  def edit(directory):
    path = directory / checkpoints.CONFIG_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))

  damaged = _damaged_copy(ckpt, tmp_path, edit)
  with pytest.raises(checkpoints.CheckpointError) as error:
    checkpoints.read_config(damaged)
  assert str(error.value) == f"{os.path.join(damaged, checkpoints.CONFIG_FILE)}: {message}"


def test_translate_config_field_of_the_wrong_type_is_one_line(ckpt, tmp_path, capsys):
  def edit(directory):
    path = directory / checkpoints.CONFIG_FILE
    meta = json.loads(path.read_text())
    meta["transformer"]["emb_dim"] = "sixty-four"
    path.write_text(json.dumps(meta))

  damaged = _damaged_copy(ckpt, tmp_path, edit)
  argv = ["--checkpoint", damaged, "--input", _source(tmp_path)]
  line = _refused(translate.main, argv, tmp_path, capsys, status=1)
  assert line == (
      f"translate: error: {os.path.join(damaged, checkpoints.CONFIG_FILE)}: transformer field "
      "'emb_dim' is 'sixty-four', not an integer"
  )


# ---------------------------------------------------------------------------------------------
# Vocabulary identity.
def test_another_vocabulary_of_the_same_size_is_refused(
    ckpt, tmp_path, capsys, other_vocab_path, tiny_vocab_path
):
  import sentencepiece as spm

  meta = checkpoints.read_config(ckpt)
  other = spm.SentencePieceProcessor(model_file=other_vocab_path)
  assert other.get_piece_size() == meta["vocab_high"] == 200  # the size check cannot tell
  assert meta["vocab_sha256"] == checkpoints.vocabulary_sha256(
      spm.SentencePieceProcessor(model_file=tiny_vocab_path)
  )
  config = os.path.join(ckpt, checkpoints.CONFIG_FILE)
  output = str(tmp_path / "out.en")
  argv = ["--checkpoint", ckpt, "--input", _source(tmp_path), "--vocab", other_vocab_path]
  line = _refused(translate.main, [*argv, "--output", output], tmp_path, capsys, status=1)
  assert line.startswith(
      f"translate: error: {other_vocab_path} is not the vocabulary the checkpoint was trained "
      "with: its sha256 is "
  )
  assert f", {config} records {meta['vocab_sha256'][:16]}... (of {meta['vocab_model']})" in line
  with pytest.raises(checkpoints.CheckpointError, match="is not the vocabulary"):
    translate.Translator.from_checkpoint(ckpt, vocab_path=other_vocab_path)
  # The same vocabulary under another name is accepted, without a warning.
  copy = shutil.copyfile(tiny_vocab_path, tmp_path / "copy.model")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    checkpoints.load_vocabulary(str(copy), meta, 256, config_path=config)


def test_a_checkpoint_without_the_fingerprint_warns_about_another_vocabulary_file(
    ckpt, tmp_path, other_vocab_path
):
  meta = checkpoints.read_config(ckpt)
  del meta["vocab_sha256"]  # as older checkpoints (the committed ones) are
  with pytest.warns(UserWarning, match="records no vocab_sha256 .an older checkpoint.: .*other"):
    checkpoints.load_vocabulary(other_vocab_path, meta, 256, config_path="old/config.json")
  with warnings.catch_warnings():  # its own vocabulary: nothing to warn about
    warnings.simplefilter("error")
    checkpoints.load_vocabulary(meta["vocab_model"], meta, 256)


# ---------------------------------------------------------------------------------------------
# python -m padir_t5x.corpus: more pairs than the generator can produce.
@pytest.mark.parametrize(
    "flags, named",
    [
        (["--num_train", "100000000"], "--num_train"),
        (["--num_train", "45000000", "--num_test", "300000"], "--num_train"),
        (["--num_test", "45269281"], "--num_test"),
    ],
)
def test_corpus_beyond_the_generator_is_refused(tmp_path, capsys, flags, named):
  out = tmp_path / "corpus"
  line = _refused(corpus.main, ["--output_dir", str(out), *flags], tmp_path, capsys)
  assert line.startswith(
      f"python -m padir_t5x.corpus: error: argument {named}: the generator produces at most "
      f"{corpus.max_distinct_pairs()} distinct pairs, and --num_train + --num_validation + "
      "--num_test is "
  )
  assert corpus.max_distinct_pairs() == 45_269_280
  with pytest.raises(ValueError, match="exceeds the 45269280 distinct pairs"):
    corpus.generate_pairs(corpus.max_distinct_pairs() + 1)


# ---------------------------------------------------------------------------------------------
# Every command's output flags go through cli.check_output_path: under a regular file, each one
# is refused before any work, naming the flag.
def _commands(ckpt, tmp_path, blocked):
  from benchmarks import accelerator
  from benchmarks import attention_analysis
  from benchmarks import decoding_profile
  from benchmarks import distill_budget
  from benchmarks import draft_verify
  from benchmarks import latency
  from benchmarks import length_oracle
  from benchmarks import quality
  from benchmarks import release
  from benchmarks import speed_map
  from benchmarks import train_budget
  from padir_t5x import export
  from padir_t5x import vocab

  source = _source(tmp_path)
  data = str(tmp_path)
  return [
      (translate.main, ["--checkpoint", ckpt, "--input", source, "--output", blocked], "--output"),
      (quickstart.main, ["--output_dir", blocked], "--output_dir"),
      (corpus.main, ["--output_dir", blocked], "--output_dir"),
      (vocab.main, ["--files", source, "--output_prefix", blocked], "--output_prefix"),
      (export.main, ["--ctranslate2", "--checkpoint", ckpt, "--out", blocked], "--out"),
      (quality.main, ["--padir", ckpt, "--out", blocked], "--out"),
      (length_oracle.main, ["--padir", ckpt, "--out", blocked], "--out"),
      (train_budget.main, ["--model", "ar", "--out", blocked, "--data_dir", data], "--out"),
      (distill_budget.main, ["--teacher", ckpt, "--out", blocked, "--data_dir", data], "--out"),
      (latency.main, ["--data_dir", data, "--out_dir", blocked], "--out_dir"),
      (accelerator.main, ["--out", blocked], "--out"),
      (speed_map.main, ["--out", blocked], "--out"),
      (speed_map.main, ["--plot", blocked], "--plot"),
      (decoding_profile.main, ["--out", blocked], "--out"),
      (attention_analysis.main, ["--padir_checkpoint", ckpt, "--out", blocked], "--out"),
      (
          draft_verify.main,
          ["--ar_checkpoint", ckpt, "--padir_checkpoint", ckpt, "--data_dir", data]
          + ["--out", blocked],
          "--out",
      ),
      (
          release.main,
          ["--checkpoint", ckpt, "--name", "x", "--description", "d", "--quality", source]
          + ["--system", "s", "--models_dir", blocked],
          "--name",
      ),
  ]


def test_every_output_flag_is_checked_before_any_work(ckpt, tmp_path, capsys):
  a_file = tmp_path / "a_file"
  a_file.write_text("mine\n")
  blocked = str(a_file / "out")
  for main, argv, flag in _commands(ckpt, tmp_path, blocked):
    line = _refused(main, argv, tmp_path, capsys)
    assert f"error: argument {flag}: directory of {blocked}" in line, (main.__module__, line)
    assert f"does not exist ({a_file} is not a directory)" in line, (main.__module__, line)


# ---------------------------------------------------------------------------------------------
# The helper itself.
def _check(tmp_path, *args, **kwargs):
  parser = cli.ArgumentParser(prog="cmd")
  try:
    cli.check_output_path(parser, *args, **kwargs)
  except SystemExit as error:
    assert error.code == 2
    return "refused"
  return "ok"


def test_check_output_path(tmp_path, capsys):
  (tmp_path / "dir").mkdir()
  (tmp_path / "dir" / "inside.txt").write_text("x")
  (tmp_path / "file.txt").write_text("x")
  assert _check(tmp_path, "--out", None) == "ok"
  assert _check(tmp_path, "--out", str(tmp_path / "new.txt")) == "ok"
  assert _check(tmp_path, "--out", str(tmp_path / "file.txt")) == "ok"  # replaced: allowed
  assert _check(tmp_path, "--out", str(tmp_path / "dir")) == "refused"
  assert (
      "--out: " + str(tmp_path / "dir") + " is a directory, not a file" in capsys.readouterr().err
  )
  assert _check(tmp_path, "--out", str(tmp_path / "dir"), kind="dir") == "ok"
  assert _check(tmp_path, "--out", str(tmp_path / "file.txt"), kind="dir") == "refused"
  assert _check(tmp_path, "--out", str(tmp_path / "a" / "b.txt")) == "refused"
  assert "directory of" in capsys.readouterr().err
  assert _check(tmp_path, "--out", str(tmp_path / "a" / "b.txt"), make_parents=True) == "ok"
  inputs = {"--input": str(tmp_path / "file.txt")}
  assert _check(tmp_path, "--out", str(tmp_path / "file.txt"), inputs=inputs) == "refused"
  assert _check(tmp_path, "--out", str(tmp_path / "other.txt"), inputs=inputs) == "ok"
  inputs = {"--files": [str(tmp_path / "x"), str(tmp_path / "dir" / "inside.txt")]}
  out = str(tmp_path / "dir" / ".." / "dir" / "inside.txt")
  assert _check(tmp_path, "--out", out, inputs=inputs) == "refused"
  assert "is the same file as --files" in capsys.readouterr().err
  # A directory the command replaces may not hold an input.
  inputs = {"--checkpoint": str(tmp_path / "dir" / "inside.txt")}
  assert _check(tmp_path, "--out", str(tmp_path / "dir"), inputs=inputs, kind="dir") == "ok"
  assert (
      _check(tmp_path, "--out", str(tmp_path / "dir"), inputs=inputs, kind="dir", replaces=True)
      == "refused"
  )
  assert "which this command replaces" in capsys.readouterr().err


def test_stdin_is_closed(monkeypatch):
  import io

  monkeypatch.setattr(sys, "stdin", None)
  assert cli.stdin_is_closed()
  monkeypatch.setattr(sys, "stdin", io.StringIO("a\n"))
  assert not cli.stdin_is_closed()  # no descriptor, still readable
  closed = io.StringIO("")
  closed.close()
  monkeypatch.setattr(sys, "stdin", closed)
  assert cli.stdin_is_closed()
  read_end, write_end = os.pipe()
  os.close(write_end)
  stream = os.fdopen(read_end, "r")
  monkeypatch.setattr(sys, "stdin", stream)
  assert not cli.stdin_is_closed()
  os.close(read_end)  # the descriptor is gone under the stream
  assert cli.stdin_is_closed()
  monkeypatch.undo()
  try:
    stream.close()
  except OSError:
    pass
