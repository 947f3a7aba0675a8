"""`python -m padir_t5x.translate` and `Translator`, end to end on tiny random-weight checkpoints.

The checkpoints are written by the fixture (random weights: the translations are gibberish, but
they differ from sentence to sentence, which is what the order tests need). --init mask makes a
sentence's translation independent of its batch, so the batched, length-sorted command can be
compared with one-sentence-at-a-time decoding.
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from padir_t5x.core import checkpoints
from padir_t5x import corpus
from padir_t5x.core import network
from padir_t5x.core import network_config
from padir_t5x import translate
from padir_t5x import translator as translator_lib
from padir_t5x.translate import Translator

REPO = pathlib.Path(__file__).resolve().parents[1]
MAX_LENGTH = 12  # input and target length of the tiny models: one decode bucket, one width

SENTENCES = [s for s, _ in corpus.generate_pairs(40, seed=5)]
# 8 to 10 pieces each with the tiny vocabulary (conftest.py), so they fit the 11 content tokens.
SHORT = [
    "ich zähle sieben äpfel.",
    "er zählt achtundfünfzig blumen.",
    "du kannst fünf katzen malen.",
    "sie bestellt neununddreißig äpfel.",
    "du willst vier hunde zählen.",
]
# Mixed lengths in an order that length sorting changes, two empty lines and a long one.
LONG = " ".join(s for s in SENTENCES[10:20] if s not in SHORT)
LINES = [SHORT[0], "", LONG, SHORT[1], "   ", SHORT[2], SHORT[4], SHORT[3]]


def _write_checkpoint(directory, kind, vocab_path, vocab_high):
  cfg = network_config.tiny_config(
      vocab_size=256,
      emb_dim=64,
      num_heads=2,
      head_dim=16,
      mlp_dim=64,
      num_encoder_layers=1,
      num_decoder_layers=1,
      max_input_length=MAX_LENGTH,
      max_target_length=MAX_LENGTH,
      decoder_mode="padir" if kind == "padir" else "autoregressive",
      dropout_rate=0.0,
  )
  module = network.Transformer(cfg)
  x = jnp.ones((1, MAX_LENGTH), jnp.int32)
  params = module.init(jax.random.PRNGKey(0), x, x, x, enable_dropout=False)["params"]
  checkpoints.save_checkpoint(
      str(directory),
      params,
      cfg,
      kind,
      vocab_model=vocab_path,
      vocab_high=vocab_high,
      decoding={"length_beam": 2, "max_passes": 3, "init": "mask"} if kind == "padir" else None,
  )
  return str(directory)


@pytest.fixture(scope="session")
def ckpts(tmp_path_factory, tiny_vocab_path):
  import sentencepiece as spm

  size = spm.SentencePieceProcessor(model_file=tiny_vocab_path).get_piece_size()
  root = tmp_path_factory.mktemp("translate_ckpts")
  return {
      kind: _write_checkpoint(root / kind, kind, tiny_vocab_path, size) for kind in ("padir", "ar")
  }


def _run(*args, stdin=b"", cwd=None, env=None):
  """The command in a fresh process; `env`: variables to set (None: to unset)."""
  env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
  env = {k: v for k, v in env.items() if v is not None}
  return subprocess.run(
      [sys.executable, "-m", "padir_t5x.translate", *args],
      input=stdin,
      capture_output=True,
      cwd=cwd,
      env=env,
      timeout=300,
      check=False,
  )


def _write_lines(path, lines):
  path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))
  return str(path)


# -------------------------------------------------------------------------------------------------
# The command end to end.
@pytest.fixture(scope="session")
def file_run(ckpts, tmp_path_factory):
  """One run over LINES with --input/--output, batch 3: (completed process, output lines)."""
  tmp = tmp_path_factory.mktemp("file_run")
  source = _write_lines(tmp / "in.de", LINES)
  output = tmp / "out.en"
  result = _run("--checkpoint", ckpts["padir"], "--input", source, "--output", str(output),
                "--batch_size", "3")  # fmt: skip
  assert result.returncode == 0, result.stderr.decode()
  return result, output.read_bytes().decode("utf-8").split("\n")


def test_file_run_keeps_line_count_and_empty_lines(file_run):
  result, out = file_run
  assert result.stdout == b""  # everything went to --output
  assert out[-1] == "" and len(out) == len(LINES) + 1  # one line per input line, '\n'-ended
  out = out[:-1]
  assert [i for i, t in enumerate(out) if t == ""] == [1, 4]  # exactly the empty inputs
  assert len(set(out[i] for i in (0, 2, 3, 5, 6, 7))) >= 5  # the model says different things


def test_file_run_preserves_order_under_length_sorting(file_run, ckpts):
  _, out = file_run
  # One sentence at a time: no sorting, no batching. The command sorted by length into batches
  # of 3; its i-th line must be the i-th sentence's own translation.
  single = Translator.from_checkpoint(ckpts["padir"], batch_size=1)
  with pytest.warns(UserWarning, match="truncated"):
    expected = single.translate(LINES)
  assert out[:-1] == expected
  assert len(set(expected)) >= 4


def test_file_run_warns_about_truncation_and_reports(file_run):
  result, _ = file_run
  stderr = result.stderr.decode()
  warning = [line for line in stderr.splitlines() if "warning" in line]
  assert len(warning) == 1 and "1 line(s)" in warning[0] and "line(s) 3 " in warning[0]
  report = stderr.strip().splitlines()[-1]
  assert report.startswith("translate: translated 8 sentences (2 empty, 1 truncated)")
  assert "sentences/s" in report and "mean passes" in report and " s (compile " in report
  passes = float(report.split("mean passes ")[1].split()[0])
  assert 1.0 <= passes <= 3.0  # the checkpoint's recorded max_passes
  assert "6/6" in stderr  # the progress bar counted the six non-empty sentences


def test_stdin_to_stdout_equals_file_run_and_api(file_run, ckpts):
  _, out = file_run
  stdin = "".join(line + "\n" for line in LINES).encode("utf-8")
  result = _run("--checkpoint", ckpts["padir"], "--batch_size", "3", stdin=stdin)
  assert result.returncode == 0, result.stderr.decode()
  assert result.stdout.decode("utf-8").split("\n") == out
  assert "translate:  " not in result.stderr.decode()  # no progress bar for stdin
  api = Translator.from_checkpoint(ckpts["padir"], batch_size=3)
  with pytest.warns(UserWarning, match="truncated"):
    assert api.translate(LINES) == out[:-1]


def _compile_seconds(result) -> float:
  """The compile seconds of a run's closing report line."""
  assert result.returncode == 0, result.stderr.decode()
  report = result.stderr.decode().strip().splitlines()[-1]
  return float(re.search(r"\(compile ([0-9.]+) s\)", report).group(1))


def test_second_run_reads_the_compilation_cache(ckpts, tmp_path):
  """The command keeps its compiled programs in $PADIR_CACHE_DIR/jax_cache (or
  --compilation_cache DIR) and its exported (traced) ones in DIR/exported, where a second run
  in a fresh process finds them: it reports fewer compile seconds, and the same translations.
  --compilation_cache '' writes none."""
  source = _write_lines(tmp_path / "in.de", SHORT)
  output = tmp_path / "out.en"
  run = ("--checkpoint", ckpts["padir"], "--input", source, "--output", str(output))
  cache_dir = tmp_path / "cache"
  # The default, $PADIR_COMPILATION_CACHE unset (conftest.py sets it to '': the cache off).
  env = {"PADIR_CACHE_DIR": str(cache_dir), "PADIR_COMPILATION_CACHE": None}
  assert _compile_seconds(_run(*run, "--compilation_cache", "", env=env)) > 0
  assert not cache_dir.exists()
  uncached = output.read_text()
  first = _compile_seconds(_run(*run, env=env))
  assert [p for p in (cache_dir / "jax_cache").rglob("*") if p.is_file()], "no cache written"
  assert list((cache_dir / "jax_cache" / "exported").glob("*.jaxexport")), "no program exported"
  assert output.read_text() == uncached
  second = _compile_seconds(_run(*run, "--compilation_cache", str(cache_dir / "jax_cache")))
  assert second < first
  assert output.read_text() == uncached


def test_batches_are_padded_to_few_row_counts(ckpts, monkeypatch):
  """A batch has batch_size rows, a last small one 1 or 8 (SMALL_BATCH_ROWS)."""
  from padir_t5x.decoders import decoders

  shapes = []
  decode = decoders.PadirDecoder.decode

  def recording(self, tokens, rng):
    shapes.append(tokens.shape)
    return decode(self, tokens, rng)

  monkeypatch.setattr(decoders.PadirDecoder, "decode", recording)
  translator = Translator.from_checkpoint(ckpts["padir"], batch_size=16, init="mask")
  lines = (SHORT * 4)[:19]
  out = translator.translate(lines)
  assert shapes == [(16, MAX_LENGTH), (8, MAX_LENGTH)]  # 16 + 3 sentences
  for count, rows in ((1, 1), (2, 8), (8, 8), (9, 16)):
    shapes.clear()
    assert translator.translate(lines[:count]) == out[:count]  # --init mask: batch-independent
    assert shapes == [(rows, MAX_LENGTH)]


def test_details_match_api(ckpts):
  translator = Translator.from_checkpoint(ckpts["padir"], batch_size=4)
  details = translator.translate(SHORT + [""], details=True)
  assert [d.text for d in details] == translator.translate(SHORT + [""])
  assert details[-1] == translate.Translation("", None, 0, 0)
  for d in details[:-1]:
    assert 2 <= d.length <= MAX_LENGTH and 1 <= d.passes <= 3 and d.score < 0 and not d.truncated


@pytest.mark.parametrize("kind,options", [("ar", {"beam_size": 3}), ("padir", {"length_beam": 2})])
def test_keep_candidates_lists_every_hypothesis_best_first(ckpts, kind, options):
  plain = Translator.from_checkpoint(ckpts[kind], batch_size=4, **options)
  keeping = Translator.from_checkpoint(ckpts[kind], batch_size=4, keep_candidates=True, **options)
  assert all(d.candidates == () for d in plain.translate(SHORT[:3], details=True))
  details = keeping.translate(SHORT[:3] + [""], details=True)
  assert [d.text for d in details] == plain.translate(SHORT[:3] + [""])
  assert details[-1].candidates == ()
  most = 3 if kind == "ar" else keeping.decoding_config.num_candidates
  for d in details[:-1]:
    texts = [text for text, _ in d.candidates]
    scores = [score for _, score in d.candidates]
    assert 1 <= len(d.candidates) <= most
    assert texts[0] == d.text and scores[0] == pytest.approx(d.score)
    assert scores == sorted(scores, reverse=True)  # best first
  with pytest.raises(ValueError, match="no candidates to keep"):
    Translator(
        keeping.module,
        keeping.params,
        keeping.processor,
        "ar",
        keeping.vocab_high,
        keep_candidates=True,
        drafter=translator_lib.Drafter(plain.module, plain.params, None),
    )
  with pytest.raises(ValueError, match="no candidates to keep"):
    Translator.draft_verify_from_checkpoints(ckpts["ar"], ckpts["padir"], keep_candidates=True)


@pytest.mark.parametrize("kind", ["padir", "ar"])
def test_bfloat16_decoding_from_a_float32_checkpoint(ckpts, kind):
  float32 = Translator.from_checkpoint(ckpts[kind], batch_size=4)
  bfloat16 = Translator.from_checkpoint(ckpts[kind], batch_size=4, dtype="bfloat16")
  assert bfloat16.module.config.dtype == "bfloat16" and float32.module.config.dtype == "float32"
  assert bfloat16.params is float32.params or jax.tree.all(
      jax.tree.map(lambda a, b: a.dtype == b.dtype, bfloat16.params, float32.params)
  )
  out = bfloat16.translate(SHORT[:3])
  assert len(out) == 3 and all(isinstance(line, str) for line in out)
  result = _run("--checkpoint", ckpts[kind], "--dtype", "float16", stdin=b"a\n")
  assert result.returncode == 2 and "--dtype: invalid choice" in result.stderr.decode()


def test_ar_checkpoint_beam_search(ckpts):
  stdin = "".join(line + "\n" for line in SHORT[:2] + [""]).encode("utf-8")
  result = _run("--checkpoint", ckpts["ar"], "--beam_size", "2", "--details", stdin=stdin)
  assert result.returncode == 0, result.stderr.decode()
  rows = result.stdout.decode("utf-8").split("\n")
  assert len(rows) == 4 and rows[2] == "\t\t0\t0" and rows[3] == ""
  api = Translator.from_checkpoint(ckpts["ar"], beam_size=2)
  assert [row.split("\t")[0] for row in rows[:3]] == api.translate(SHORT[:2] + [""])
  assert "mean decoder steps" in result.stderr.decode()


# -------------------------------------------------------------------------------------------------
# Bad input, and nothing written unless the whole run succeeds.
def test_invalid_utf8_fails_with_line_number_and_writes_nothing(ckpts, tmp_path):
  source = tmp_path / "in.de"
  source.write_bytes(b"gut\n\nschlecht \xff\n")
  output = tmp_path / "out.en"
  result = _run("--checkpoint", ckpts["padir"], "--input", str(source), "--output", str(output))
  assert result.returncode == 1
  assert result.stderr.decode().strip() == (
      f"translate: error: {source}: line 3 is not valid UTF-8 (byte 9: invalid start byte)"
  )
  assert not output.exists() and os.listdir(tmp_path) == ["in.de"]  # no temporary file left


def test_strict_fails_on_long_line_and_leaves_existing_output_untouched(ckpts, tmp_path):
  source = _write_lines(tmp_path / "in.de", [SHORT[0], LONG])
  output = tmp_path / "out.en"
  output.write_text("previous translations\n")
  result = _run("--checkpoint", ckpts["padir"], "--input", source, "--output", str(output),
                "--strict")  # fmt: skip
  assert result.returncode == 1
  message = result.stderr.decode().strip()
  assert message.startswith(f"translate: error: {source}: line 2 has ") and "(--strict)" in message
  assert output.read_text() == "previous translations\n"
  assert sorted(os.listdir(tmp_path)) == ["in.de", "out.en"]


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--length_beam", "0"], "--length_beam"),
        (["--init", "zeros"], "--init"),
        (["--length_offsets", "-1"], "--length_offsets"),
        (["--batch_size", "x"], "--batch_size"),
        (["--input", "/nonexistent/in.de"], "--input"),
    ],
)
def test_flag_errors_exit_2_before_loading(flags, named, tmp_path):
  # The checkpoint does not exist: a flag error must be reported before anything is loaded.
  result = _run("--checkpoint", str(tmp_path / "missing"), *flags)
  assert result.returncode == 2
  lines = result.stderr.decode().strip().splitlines()
  assert lines[-1].startswith("python -m padir_t5x.translate: error: argument " + named)
  assert "checkpoint" not in lines[-1]


def test_decoder_flag_of_the_other_kind_exits_2(ckpts):
  result = _run("--checkpoint", ckpts["ar"], "--length_beam", "3")
  assert result.returncode == 2
  last = result.stderr.decode().strip().splitlines()[-1]
  assert "argument --length_beam: does not apply to an AR model" in last and "config.json" in last


def test_stutter_unit_comes_from_flag_then_checkpoint_then_default(ckpts, tmp_path, capsys):
  import json
  import shutil

  import numpy as np
  import sentencepiece as spm

  from padir_t5x import vocab

  config = Translator.from_checkpoint(ckpts["padir"]).decoding_config
  processor = spm.SentencePieceProcessor(
      model_file=checkpoints.read_config(ckpts["padir"])["vocab_model"]
  )
  assert config.stutter_unit == "word"  # the library default: nothing recorded
  np.testing.assert_array_equal(config.word_starts.table, vocab.word_start_table(processor))
  recorded = shutil.copytree(ckpts["padir"], tmp_path / "piece")
  meta = json.loads((recorded / checkpoints.CONFIG_FILE).read_text())
  meta["decoding"]["stutter_unit"] = "piece"
  (recorded / checkpoints.CONFIG_FILE).write_text(json.dumps(meta))
  assert Translator.from_checkpoint(str(recorded)).decoding_config.stutter_unit == "piece"
  flagged = Translator.from_checkpoint(str(recorded), stutter_unit="word").decoding_config
  assert flagged.stutter_unit == "word" and flagged.word_starts == config.word_starts
  # The flag is a PaDIR decoding flag: an AR checkpoint rejects it before loading weights.
  source = _write_lines(tmp_path / "in.de", SHORT[:1])
  with pytest.raises(SystemExit) as exit_info:
    translate.main(["--checkpoint", ckpts["ar"], "--input", source, "--stutter_unit", "piece"])
  assert exit_info.value.code == 2
  assert "argument --stutter_unit: does not apply to an AR model" in capsys.readouterr().err


def test_decoding_option_flags(ckpts, tmp_path, capsys):
  source = _write_lines(tmp_path / "in.de", SHORT[:2])
  output = tmp_path / "out.en"
  flags = ["--checkpoint", ckpts["padir"], "--input", source, "--output", str(output),
           "--no_progress", "--details", "--init", "random"]  # fmt: skip
  options = ["--remask", "low_confidence", "--prediction", "summed", "--inits_per_length", "2",
             "--length_offsets", "1", "--score", "sum", "--refine_top_k", "3"]  # fmt: skip
  assert translate.main(flags + options) == 0
  rows = [row.split("\t") for row in output.read_text().splitlines()]
  assert len(rows) == 2 and [row[3] for row in rows] == ["3", "3"]  # mask-predict: all T passes
  # A PaDIR-only flag with an AR model: exit 2 before loading, naming the flag.
  with pytest.raises(SystemExit) as exit_info:
    translate.main(["--checkpoint", ckpts["ar"], "--input", source, "--prediction", "summed"])
  assert exit_info.value.code == 2
  assert "argument --prediction: does not apply to an AR model" in capsys.readouterr().err
  with pytest.raises(SystemExit) as exit_info:
    translate.main(["--checkpoint", ckpts["ar"], "--input", source, "--score", "sum"])
  assert exit_info.value.code == 2
  assert "argument --score: does not apply to an AR model" in capsys.readouterr().err
  # The options reach the decoding config; too many lengths for the model is an error.
  options = dict(inits_per_length=2, length_offsets=1, prediction="summed", init="random")
  config = Translator.from_checkpoint(ckpts["padir"], score="sum", **options).decoding_config
  assert (config.num_lengths, config.num_candidates, config.prediction) == (6, 12, "summed")
  assert config.score == "sum"
  with pytest.raises(ValueError, match="length_offsets 3 .14 lengths. exceeds the 11"):
    Translator.from_checkpoint(ckpts["padir"], length_offsets=3)
  # --refine_top_k reaches the config; more than the candidates is an error naming the field.
  config = Translator.from_checkpoint(ckpts["padir"], refine_top_k=1).decoding_config
  assert config.refine_top_k == 1
  with pytest.raises(SystemExit):
    translate.main(flags + ["--refine_top_k", "0"])
  assert "argument --refine_top_k" in capsys.readouterr().err
  assert translate.main(flags + ["--refine_top_k", "3"]) == 1  # the checkpoint's l = 2
  assert "refine_top_k must be in 1..num_candidates (2" in capsys.readouterr().err


def test_missing_checkpoint_is_one_line(tmp_path):
  result = _run("--checkpoint", str(tmp_path / "nope"), stdin=b"hallo\n")
  assert result.returncode == 2
  assert result.stderr.decode().strip().splitlines()[-1] == (
      "python -m padir_t5x.translate: error: argument --checkpoint: directory not found: "
      f"{tmp_path / 'nope'}"
  )


def test_checkpoint_errors_name_the_file(ckpts, tmp_path, tiny_vocab_path):
  from padir_t5x import vocab

  with pytest.raises(checkpoints.CheckpointError, match=r"ar[/\\]config.json: holds an AR model"):
    Translator.from_checkpoint(ckpts["ar"], kind="padir")
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoints.CheckpointError, match="empty[/\\\\]config.json not found"):
    Translator.from_checkpoint(str(tmp_path / "empty"))
  t5x_dir = tmp_path / "checkpoint_800"
  t5x_dir.mkdir()
  (t5x_dir / "checkpoint").write_bytes(b"")
  # Without t5x: it is needed; with t5x: this one lacks the run's config.gin.
  with pytest.raises(
      checkpoints.CheckpointError,
      match="checkpoint_800( is a T5X checkpoint, which needs t5x|: gin config not found)",
  ):
    Translator.from_checkpoint(str(t5x_dir))
  # A vocabulary of another size than the embedding was trained with.
  pairs = corpus.generate_pairs(500, seed=2)
  other = vocab.train_sentencepiece(
      [s for p in pairs for s in p], str(tmp_path / "other"), vocab_size=150, num_threads=1
  )
  with pytest.raises(checkpoints.CheckpointError, match=r"other.model has 150 pieces"):
    Translator.from_checkpoint(ckpts["padir"], vocab_path=other)
  # params.npz of another network.
  wrong = tmp_path / "wrong"
  _write_checkpoint(wrong, "padir", tiny_vocab_path, 200)
  import shutil

  shutil.copyfile(os.path.join(ckpts["ar"], "params.npz"), wrong / "params.npz")
  with pytest.raises(checkpoints.CheckpointError, match="params.npz does not match"):
    Translator.from_checkpoint(str(wrong))


# -------------------------------------------------------------------------------------------------
# The quickstart's closing command.
def test_quickstart_translate_command_quotes_its_arguments():
  from padir_t5x import quickstart

  command = quickstart.translate_command("runs/my run", "er sagt, dass's regnet.")
  assert shlex.split(command) == [
      "echo",
      "er sagt, dass's regnet.",
      "|",
      "python",
      "-m",
      "padir_t5x.translate",
      "--checkpoint",
      "runs/my run",
  ]
  assert quickstart.QuickstartConfig().output_dir == "runs/quickstart"
