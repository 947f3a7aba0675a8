"""The core E-step: PaDIR's score of a given target (core.scoring) and benchmarks.em_round."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import em_round
from padir_t5x import EOS_ID, FIRST_ORDINARY_ID, MASK_ID, PAD_ID
from padir_t5x.core import network, network_config, scoring
from padir_t5x.core.modes import FillMode

VOCAB = 60  # real vocabulary; the embedding table has 64 rows
MAX_LEN = 16
TARGETS = np.array(
    [[10, 11, 12, 1, 0, 0, 0, 0], [20, 21, 22, 23, 24, 1, 0, 0], [30, 1, 0, 0, 0, 0, 0, 0]],
    np.int32,
)
INPUTS = np.array(
    [
        [5, 6, 7, 8, 1, 0, 0, 0, 0, 0],
        [9, 8, 7, 6, 5, 4, 1, 0, 0, 0],
        [40, 41, 1, 0, 0, 0, 0, 0, 0, 0],
    ],
    np.int32,
)


@pytest.fixture(scope="module")
def net():
  module = network.Transformer(
      network_config.tiny_config(vocab_size=64, max_input_length=MAX_LEN, max_target_length=MAX_LEN)
  )
  x = jnp.ones((1, MAX_LEN), jnp.int32)
  params = module.init(jax.random.PRNGKey(0), x, x, x, enable_dropout=False)["params"]
  return module, params


def _inputs(targets, fill):
  return scoring.score_decoder_inputs(
      jnp.asarray(targets),
      fill=fill,
      seed=0,
      table_length=MAX_LEN,
      vocab_low=FIRST_ORDINARY_ID,
      vocab_high=VOCAB,
      mask_id=MASK_ID,
  )


@pytest.mark.parametrize("fill", [FillMode.MASK, FillMode.RANDOM])
def test_score_is_length_plus_content_token_log_probs(net, fill):
  module, params = net
  decoder_inputs = np.asarray(_inputs(TARGETS, fill))
  content = (TARGETS > 0) & (TARGETS != EOS_ID)
  np.testing.assert_array_equal(decoder_inputs[TARGETS == EOS_ID], EOS_ID)
  np.testing.assert_array_equal(decoder_inputs[TARGETS == 0], PAD_ID)
  if fill is FillMode.MASK:
    assert np.all(decoder_inputs[content] == MASK_ID)
  else:
    assert np.all(
        (decoder_inputs[content] >= FIRST_ORDINARY_ID) & (decoder_inputs[content] < VOCAB)
    )
    np.testing.assert_array_equal(decoder_inputs[0, :3], decoder_inputs[1, :3])  # one fixed row
  scores = scoring.score_targets(module, params, INPUTS, TARGETS, decoder_inputs)

  variables = {"params": params}
  encoded = module.apply(variables, INPUTS, enable_dropout=False, method="encode")
  length_lp = np.asarray(
      jax.nn.log_softmax(module.apply(variables, encoded, INPUTS, method="predict_length"))
  )
  logits = module.apply(
      variables, encoded, INPUTS, decoder_inputs, TARGETS, enable_dropout=False, method="decode"
  )
  lp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  expected = []
  for i, row in enumerate(TARGETS):
    length = int(np.sum(row > 0))
    expected.append(length_lp[i, length - 1] + sum(lp[i, j, row[j]] for j in range(length - 1)))
  np.testing.assert_allclose(scores.sequence, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(
      np.sum(scores.tokens, axis=-1) + scores.length, scores.sequence, rtol=1e-5, atol=1e-5
  )
  assert np.all(np.asarray(scores.tokens)[~content] == 0)


def test_score_does_not_depend_on_row_or_padding(net):
  module, params = net
  scores = np.asarray(
      scoring.score_targets(module, params, INPUTS, TARGETS, _inputs(TARGETS, FillMode.RANDOM))[0]
  )
  order = np.array([2, 0, 1])
  wider = np.pad(TARGETS[order], ((0, 0), (0, 4)))
  inputs = np.pad(INPUTS[order], ((0, 0), (0, 3)))
  again = scoring.score_targets(module, params, inputs, wider, _inputs(wider, FillMode.RANDOM))[0]
  np.testing.assert_allclose(np.asarray(again), scores[order], rtol=1e-4, atol=1e-4)


def test_check_settings_refuses_another_run(tmp_path):
  settings = {"teacher": "/a", "beam_size": 5, "chunk": 8}
  em_round.check_settings(str(tmp_path), settings)
  em_round.check_settings(str(tmp_path), dict(settings))  # the same flags continue the run
  with pytest.raises(ValueError, match=r"settings.json: this run was started with beam_size=5"):
    em_round.check_settings(str(tmp_path), {**settings, "beam_size": 3})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_vocab_path):
  """Tiny random AR and PaDIR checkpoints, 10 training pairs, and a finished `nbest`."""
  import sentencepiece as spm
  from padir_t5x import corpus
  from tests.test_benchmarks import save_tiny_checkpoints

  root = tmp_path_factory.mktemp("em_round")
  processor = spm.SentencePieceProcessor(model_file=tiny_vocab_path)
  save_tiny_checkpoints(root, tiny_vocab_path, processor.get_piece_size())
  data_dir = root / "data"
  (data_dir / "de-en").mkdir(parents=True)
  pairs = corpus.generate_pairs(10, seed=7)
  (data_dir / "de-en" / "train.de").write_text("".join(p[0] + "\n" for p in pairs))
  (data_dir / "de-en" / "train.en").write_text("".join(p[1] + "\n" for p in pairs))
  argv = ["nbest", "--teacher", str(root / "ar"), "--data_dir", str(data_dir), "--beam_size", "3"]
  argv += ["--chunk", "4", "--batch_size", "4", "--out", str(root / "nbest")]
  assert em_round.main(argv) == 0
  return root, data_dir, argv, [p[0] for p in pairs]


def test_nbest_keeps_every_ended_hypothesis_best_first(tiny_run):
  from padir_t5x import translate
  from padir_t5x.t5x_adapter import jobs

  root, _, _, sources = tiny_run
  record = json.loads((root / "nbest" / "nbest.json").read_text())
  assert record["source_lines"] == 10 and record["beam_size"] == 3
  assert len(list((root / "nbest" / "parts").iterdir())) == 3  # chunks of 4, 4 and 2 lines
  candidates = jobs.read_candidates(str(root / "nbest"))
  assert len(candidates) == record["candidates"]
  teacher = translate.Translator.from_checkpoint(
      str(root / "ar"), beam_size=3, batch_size=4, keep_candidates=True
  )
  expected = []
  for source, translation in zip(sources, teacher.translate(sources, details=True)):
    texts = [text for text, _ in translation.candidates if text.strip()]
    if texts:
      expected.extend((source, rank, text) for rank, text in enumerate(texts))
  assert [(c.source, c.rank, c.target) for c in candidates] == expected
  assert record["sources_with_candidates"] == len({c.source_index for c in candidates})


def test_nbest_resumes_from_its_parts_and_refuses_other_flags(tiny_run, capsys):
  root, _, argv, _ = tiny_run
  out = root / "nbest"
  before = (out / "candidates.meta.jsonl").read_text()
  # A stopped run: the last part is missing. Rerunning decodes only that chunk.
  (out / "parts" / "part-00002.jsonl").unlink()
  assert em_round.main(argv) == 0
  record = json.loads((out / "nbest.json").read_text())
  assert record["lines_decoded_by_this_run"] == 2
  assert (out / "candidates.meta.jsonl").read_text() == before
  with pytest.raises(SystemExit) as error:
    em_round.main([*argv[:-2], "--chunk", "5", "--out", str(out)])
  assert error.value.code == 2
  assert "this run was started with chunk=4, not 5" in capsys.readouterr().err


def test_select_keeps_each_sources_best_by_padir_score(tiny_run):
  from padir_t5x import em_actions
  from padir_t5x.core import loading
  from padir_t5x.t5x_adapter import jobs

  root, _, _, _ = tiny_run
  out = root / "selected"
  argv = ["select", "--student", str(root / "padir"), "--candidates", str(root / "nbest")]
  assert em_round.main([*argv, "--out", str(out), "--batch_size", "8"]) == 0
  candidates = jobs.read_candidates(str(root / "nbest"))
  loaded = loading.load(str(root / "padir"), kind="padir")
  # Batch size and padding do not change a score: one candidate at a time gives the same.
  one_by_one = np.concatenate(
      [
          em_round.score_candidates(loaded, [c], batch_size=1, log=lambda m: None)[0]
          for c in candidates
      ]
  )
  chosen = em_actions.select_best(
      candidates, one_by_one.tolist(), len({c.source_index for c in candidates})
  )
  lines = (out / "de-en" / "train.en").read_text().splitlines()
  assert lines == [c.target for c, _ in chosen]
  assert (out / "de-en" / "train.de").read_text().splitlines() == [c.source for c, _ in chosen]
  selection = [json.loads(line) for line in (out / "selection.jsonl").read_text().splitlines()]
  assert [s["rank"] for s in selection] == [c.rank for c, _ in chosen]
  np.testing.assert_allclose([s["nar_score"] for s in selection], [s for _, s in chosen], rtol=1e-4)
  record = json.loads((out / "select.json").read_text())
  assert record["not_top_beam"] == sum(c.rank != 0 for c, _ in chosen)


def test_select_errors_name_the_flag_before_scoring(tiny_run, tmp_path, capsys):
  root, _, _, _ = tiny_run
  base = ["select", "--out", str(tmp_path / "o")]
  with pytest.raises(SystemExit):
    em_round.main([*base, "--student", str(root / "padir"), "--candidates", str(tmp_path)])
  err = capsys.readouterr().err
  assert f"--candidates: {tmp_path} has no nbest.json" in err
  with pytest.raises(SystemExit):
    em_round.main([*base, "--student", str(root / "ar"), "--candidates", str(root / "nbest")])
  assert "--student: " in capsys.readouterr().err
  assert not (tmp_path / "o").exists()


def _data_dir(root, pairs):
  pair_dir = root / "de-en"
  pair_dir.mkdir(parents=True)
  (pair_dir / "train.de").write_text("".join(s + "\n" for s, _ in pairs))
  (pair_dir / "train.en").write_text("".join(t + "\n" for _, t in pairs))
  return root


REFERENCES = [(f"quelle {i}", f"a small dog runs on the grass number {i}") for i in range(12)]


def test_compare_targets_scores_the_shared_sources_of_one_seeded_sample():
  references = em_round.first_target_per_source(REFERENCES + [("quelle 0", "a later reference")])
  assert references["quelle 0"] == REFERENCES[0][1]  # a repeated source keeps its first target
  exact = dict(references)
  other = {s: "a cat sleeps" for s in list(references)[:8]}  # holds only 8 sources
  report = em_round.compare_targets(references, {"exact": exact, "other": other}, 5, seed=0)
  assert report["shared_sources"] == 8 and report["scored_sources"] == 5
  assert report["sets"]["exact"]["bleu"] == 100.0
  assert report["sets"]["other"]["bleu"] < 5 and report["sets"]["other"]["words"] == 3.0
  assert report["same_target"] == {"exact|other": 0.0}
  assert report == em_round.compare_targets(references, {"exact": exact, "other": other}, 5, 0)
  half = {s: (t if i % 2 else "x") for i, (s, t) in enumerate(exact.items())}
  same = em_round.compare_targets(references, {"exact": exact, "half": half}, 100, 1)
  assert same["scored_sources"] == 12 and same["same_target"] == {"exact|half": 0.5}


def test_targets_command_writes_its_report_and_names_bad_flags(tmp_path, capsys):
  data = _data_dir(tmp_path / "data", REFERENCES)
  round1 = _data_dir(tmp_path / "round1", [(s, t.replace("dog", "cat")) for s, t in REFERENCES])
  out = tmp_path / "report" / "targets.json"
  argv = ["targets", "--data_dir", str(data), "--targets", f"ref={data}"]
  assert em_round.main([*argv, "--targets", f"round1={round1}", "--out", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["sets"]["ref"]["bleu"] == 100.0 and report["sets"]["round1"]["bleu"] < 100
  assert report["same_target"] == {"ref|round1": 0.0}
  assert "round1" in capsys.readouterr().out
  for bad, message in [
      (["--targets", str(round1)], "--targets: expected NAME=DIR"),
      (["--targets", f"ref={round1}"], "the name 'ref' is given twice"),
  ]:
    with pytest.raises(SystemExit):
      em_round.main([*argv, *bad])
    assert message in capsys.readouterr().err
  (round1 / "de-en" / "train.en").write_text("one line\n")
  with pytest.raises(SystemExit):
    em_round.main([*argv, "--targets", f"round1={round1}"])
  err = capsys.readouterr().err
  assert "--targets round1: " in err and "line counts differ" in err
