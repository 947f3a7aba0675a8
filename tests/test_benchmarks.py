"""Tests of benchmarks/: AR beam search, checkpoints, the latency harness, budget training."""

import dataclasses
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import accelerator
from benchmarks import budget_config
from benchmarks import budget_data
from benchmarks import budget_training
from benchmarks import common
from benchmarks import latency
from benchmarks import train_budget
from padir_t5x.core import checkpoints
from padir_t5x.decoders import ar_decoding
from padir_t5x import EOS_ID
from padir_t5x.core import network
from padir_t5x.core import network_config
from padir_t5x import translate


def _ar_net(vocab_size, seed=0, max_length=8):
  cfg = network_config.tiny_config(
      vocab_size=vocab_size,
      emb_dim=32,
      num_heads=2,
      head_dim=16,
      mlp_dim=64,
      num_encoder_layers=1,
      num_decoder_layers=2,
      max_input_length=max_length,
      max_target_length=max_length,
      decoder_mode="autoregressive",
      dropout_rate=0.0,
  )
  module = network.Transformer(cfg)
  enc = jnp.array([[5, 6, 7, 1, 0], [4, 7, 1, 0, 0], [6, 1, 0, 0, 0]], jnp.int32)
  params = module.init(jax.random.PRNGKey(seed), enc, enc, enc, enable_dropout=False)["params"]
  return module, params, enc


# ------------------------------------------------------------------------------------------------
# Percentiles and the Pareto front.
def test_latency_summary_percentiles():
  summary = latency.latency_summary(np.arange(1, 101) / 1e3)  # 1..100 ms
  assert summary == pytest.approx({"median": 50.5, "p90": 90.1, "p99": 99.01, "mean": 50.5})
  with pytest.raises(ValueError):
    latency.latency_summary([])


def test_pareto_front():
  points = [(10.0, 20.0), (5.0, 15.0), (20.0, 19.0), (30.0, 25.0), (5.0, 10.0)]
  assert latency.pareto_front(points) == [1, 0, 3]


def test_output_length():
  assert latency.output_length(np.array([5, 6, EOS_ID, 0])) == 3
  assert latency.output_length(np.array([5, 6, 7, 8])) == 4


# ------------------------------------------------------------------------------------------------
# AR beam search.
def test_beam_one_is_greedy_reference():
  module, params, enc = _ar_net(vocab_size=128)
  out = ar_decoding.jit_beam_search(
      module, params, enc, beam_size=1, max_decode_length=8, alpha=0.0, vocab_high=100
  )
  expected = ar_decoding.greedy_reference(module, params, np.asarray(enc), 8, vocab_high=100)
  np.testing.assert_array_equal(np.asarray(out.sequences[:, -1]), expected)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_wide_beam_finds_the_brute_force_best(alpha):
  """Vocabulary {EOS, 4..7}, t = 3: beam 40 keeps every prefix, so the search is exact."""
  module, params, enc = _ar_net(vocab_size=8, seed=1)
  t, choices = 3, [EOS_ID, 4, 5, 6, 7]
  candidates = []
  for length in range(1, t + 1):
    for body in itertools.product(choices[1:], repeat=length - 1):
      candidates.append(list(body) + [EOS_ID] + [0] * (t - length))
  candidates = np.array(candidates, np.int32)
  out = ar_decoding.jit_beam_search(
      module, params, enc, beam_size=40, max_decode_length=t, alpha=alpha, vocab_high=8
  )
  for row in range(enc.shape[0]):
    tiled = np.repeat(np.asarray(enc[row : row + 1]), len(candidates), 0)
    log_probs = ar_decoding.sequence_log_prob(module, params, tiled, candidates, 8)
    lengths = np.argmax(candidates == EOS_ID, axis=1) + 1
    scores = log_probs / ((5.0 + lengths) / 6.0) ** alpha
    best = int(np.argmax(scores))
    np.testing.assert_array_equal(np.asarray(out.sequences[row, -1]), candidates[best])
    assert float(out.scores[row, -1]) == pytest.approx(scores[best], rel=1e-4, abs=1e-4)
    # Scores increase along the beam (best last, the t5x convention).
    assert np.all(np.diff(np.asarray(out.scores[row])) >= 0)


@pytest.mark.parametrize("beam", [1, 3])
def test_beam_search_without_early_stopping_runs_every_step_to_the_same_result(beam):
  module, params, enc = _ar_net(vocab_size=128)
  kwargs = dict(beam_size=beam, max_decode_length=8, vocab_high=100)
  stopping = ar_decoding.jit_beam_search(module, params, enc, **kwargs)
  fixed = ar_decoding.jit_beam_search(module, params, enc, early_stopping=False, **kwargs)
  assert int(fixed.steps) == 8
  np.testing.assert_array_equal(np.asarray(fixed.sequences), np.asarray(stopping.sequences))
  np.testing.assert_allclose(np.asarray(fixed.scores), np.asarray(stopping.scores), rtol=1e-6)


def test_accelerator_benchmark_runs_fixed_work_on_the_core_alone(tmp_path, capsys):
  out = tmp_path / "accelerator.json"
  argv = ["--size", "tiny", "--batch_sizes", "2", "--reps", "1", "--dtypes", "float32"]
  argv += ["--source_length", "6", "--target_length", "6", "--out", str(out)]
  accelerator.main(argv)
  report = json.loads(out.read_text())
  rows = {(r["system"], r["batch"]): r for r in report["results"]}
  assert sorted(rows) == [("ar", 2), ("padir", 2)]
  for (system, _), row in rows.items():
    # Fixed work: every PaDIR example runs all 4 passes, AR beam search all 6 steps.
    assert row["decoder_passes_per_sentence"] == (4 if system == "padir" else 6)
    assert row["latency_ms"]["median"] > 0 and row["throughput_sent_per_s"] > 0
  assert "| float32 | 2 |" in capsys.readouterr().out
  assert report["environment"]["devices"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch_sizes", "0"], "--batch_sizes: each item must be an integer >= 1"),
        (["--dtypes", "float16"], "--dtypes: expected float32 and/or bfloat16"),
        (["--reps", "-1"], "--reps: must be an integer >= 1, got -1"),
        (["--out", "/no/such/dir/a.json"], "--out: directory of /no/such/dir/a.json"),
    ],
)
def test_accelerator_benchmark_rejects_bad_flags_before_any_work(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    accelerator.main(argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_beam_search_rejects_padir_network():
  module = network.Transformer(network_config.tiny_config())
  with pytest.raises(ValueError, match="autoregressive"):
    ar_decoding.beam_search(module, {}, jnp.ones((1, 4), jnp.int32), 2, 4)


# ------------------------------------------------------------------------------------------------
# Checkpoints and training pieces.
def test_checkpoint_round_trip(tmp_path):
  module, params, _ = _ar_net(vocab_size=16)
  vocab_file = tmp_path / "v.model"
  vocab_file.write_bytes(b"not really a model")
  checkpoints.save_checkpoint(
      str(tmp_path / "ckpt"),
      params,
      module.config,
      "ar",
      vocab_model=str(vocab_file),
      vocab_high=12,
      train_record={"steps": 3},
  )
  vocab_file.unlink()  # the checkpoint holds its own copy
  loaded_module, loaded_params, meta = checkpoints.load_checkpoint(str(tmp_path / "ckpt"))
  assert loaded_module.config == module.config
  assert meta["kind"] == "ar" and meta["vocab_high"] == 12 and meta["train"] == {"steps": 3}
  assert meta["vocab_model"] == str(tmp_path / "ckpt" / "vocab.model")
  assert (tmp_path / "ckpt" / "vocab.model").read_bytes() == b"not really a model"
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, loaded_params)
  with pytest.raises(ValueError, match="decoder_mode"):
    checkpoints.save_checkpoint(str(tmp_path), params, module.config, "padir")


def test_ar_loss_is_teacher_forced_cross_entropy():
  module, params, enc = _ar_net(vocab_size=16)
  targets = jnp.array([[5, 6, 1, 0], [7, 1, 0, 0], [4, 4, 4, 1]], jnp.int32)
  loss, metrics = budget_training.ar_loss(
      module,
      params,
      {"encoder_input_tokens": enc, "decoder_target_tokens": targets},
      jax.random.PRNGKey(0),
      z_loss=0.0,
      enable_dropout=False,
  )
  # The training loss is over the unrestricted vocabulary (sequence_log_prob restricts it),
  # so the reference is computed directly.
  logits = module.apply(
      {"params": params}, enc, budget_training.shift_right(targets), targets, enable_dropout=False
  )
  picked = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
  expected = -jnp.sum(picked * (targets > 0)) / jnp.sum(targets > 0)
  assert float(loss) == pytest.approx(float(expected), rel=1e-5)
  assert float(metrics["num_tokens"]) == 9


def test_time_schedule_and_buckets():
  config = budget_config.BudgetConfig(
      peak_learning_rate=1.0, warmup_fraction=0.1, final_learning_rate_fraction=0.1
  )
  assert budget_training.time_schedule(config, 0.05) == pytest.approx(0.5)
  assert budget_training.time_schedule(config, 0.1) == pytest.approx(1.0)
  assert budget_training.time_schedule(config, 1.0) == pytest.approx(0.1)
  inputs = [[5] * n + [1] for n in (2, 3, 9, 10, 2, 3)]
  targets = [[6] * n + [1] for n in (3, 2, 2, 12, 3, 2)]
  batches = budget_data.bucket_batches(inputs, targets, buckets=((5, 2), (16, 2)), seed=0)
  for _ in range(6):
    batch = next(batches)
    shape = batch["encoder_input_tokens"].shape
    assert shape == batch["decoder_target_tokens"].shape and shape in ((2, 5), (2, 16))
    if shape == (2, 5):  # only pairs that fit 5 ids land in the short bucket
      assert np.all((batch["decoder_target_tokens"] > 0).sum(1) <= 5)


# ------------------------------------------------------------------------------------------------
# The latency harness end to end on tiny random-init checkpoints.
def save_tiny_checkpoints(directory, vocab_path: str, vocab_high: int) -> None:
  """Random-init tiny AR and PaDIR core checkpoints in directory/ar and directory/padir."""
  for kind in ("ar", "padir"):
    cfg = network_config.tiny_config(
        vocab_size=256,
        emb_dim=32,
        num_heads=2,
        head_dim=16,
        mlp_dim=64,
        num_encoder_layers=1,
        num_decoder_layers=1,
        max_input_length=40,
        max_target_length=40,
        decoder_mode="padir" if kind == "padir" else "autoregressive",
    )
    module = network.Transformer(cfg)
    x = jnp.ones((1, 40), jnp.int32)
    params = module.init(jax.random.PRNGKey(0), x, x, x, enable_dropout=False)["params"]
    checkpoints.save_checkpoint(
        str(directory / kind),
        params,
        cfg,
        kind,
        vocab_model=vocab_path,
        vocab_high=vocab_high,
        train_record={"budget": "steps", "steps": 7, "seconds": 90.0, "target_tokens_seen": 700},
    )


def test_harness_writes_json_markdown_and_png(tmp_path, tiny_vocab_path):
  import sentencepiece as spm
  from padir_t5x import corpus

  processor = spm.SentencePieceProcessor(model_file=tiny_vocab_path)
  vocab_high = processor.get_piece_size()
  data_dir = tmp_path / "data"
  (data_dir / "de-en").mkdir(parents=True)
  pairs = corpus.generate_pairs(6, seed=3)
  (data_dir / "de-en" / "dev.de").write_text("\n".join(p[0] for p in pairs) + "\n")
  (data_dir / "de-en" / "dev.en").write_text("\n".join(p[1] for p in pairs) + "\n")
  save_tiny_checkpoints(tmp_path, tiny_vocab_path, vocab_high)
  out_dir = tmp_path / "bench"
  report = latency.run_benchmark(
      str(tmp_path / "ar"),
      str(tmp_path / "padir"),
      str(data_dir),
      str(out_dir),
      num_sentences=3,
      warmup=1,
      ar_beams=(2,),
      passes=(1, 3),
      length_beams=(2,),
      throughput_batch=1,
      max_throughput_batch=1,
      log=lambda *_: None,
  )
  with open(out_dir / "results.json") as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(report))
  results = saved["results"]
  assert [(r["system"], r["setting"]) for r in results] == [
      ("ar", "beam=2"),
      ("padir", "T=1,l=2"),
      ("padir", "T=3,l=2"),
  ]
  for r in results:
    assert set(latency.RESULT_KEYS) <= set(r)
    assert set(latency.LATENCY_KEYS) == set(r["latency_ms"])
    lat = r["latency_ms"]
    assert 0 < lat["median"] <= lat["p90"] <= lat["p99"]
    assert r["num_sentences"] == 3 and r["throughput_batch"] == 1
    assert r["throughput_sent_per_s"] > 0
    assert 0.0 <= r["bleu"] <= 100.0 and 0.0 <= r["stutter_rate"] <= 1.0
  assert results[1]["decoder_passes_per_sentence"] == 1.0
  assert 1.0 <= results[2]["decoder_passes_per_sentence"] <= 3.0
  assert 1.0 <= results[0]["decoder_passes_per_sentence"] <= 40.0
  table = (out_dir / "results.md").read_text().strip().splitlines()
  assert len(table) == 2 + len(results) and "median ms" in table[0]
  assert (out_dir / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert [r["model"] for r in results] == ["ar", "padir", "padir"]  # unnamed: the kind

  # Several named models in one run: each row names its model; the same weights under two
  # names decode alike.
  again = latency.run_benchmark(
      [f"teacher={tmp_path / 'ar'}", f"student={tmp_path / 'ar'}"],
      None,
      str(data_dir),
      str(tmp_path / "bench2"),
      num_sentences=3,
      warmup=0,
      ar_beams=(1,),
      throughput_batch=1,
      max_throughput_batch=1,
      log=lambda *_: None,
  )
  rows = again["results"]
  assert [(r["model"], r["setting"]) for r in rows] == [
      ("teacher", "beam=1"),
      ("student", "beam=1"),
  ]
  assert rows[0]["bleu"] == rows[1]["bleu"]
  assert set(again["checkpoints"]) == {"teacher", "student"}
  with pytest.raises(ValueError, match="model names must differ"):
    latency.run_benchmark(
        [str(tmp_path / "ar")], [f"ar={tmp_path / 'padir'}"], str(data_dir), str(tmp_path / "b3")
    )


def test_read_lines_keeps_unicode_line_separators_inside_a_line(tmp_path):
  # str.splitlines() would split at U+0085 / U+2028 and shift every later line of one side of a
  # parallel corpus (../shared/data de-en train.de has such a line).
  path = tmp_path / "side.de"
  path.write_text("eins\u0085zwei\ndrei\u2028vier\nfünf\n", encoding="utf-8")
  assert common.read_lines(str(path)) == ["eins\u0085zwei", "drei\u2028vier", "fünf"]
  assert common.read_lines(str(path), limit=2) == ["eins\u0085zwei", "drei\u2028vier"]


class _FakeThroughputSystem:
  """decode() costs `overhead + per_row * B` seconds of fake time; OOM above `fits`."""

  def __init__(self, fits, overhead, per_row):
    self.fits, self.overhead, self.per_row = fits, overhead, per_row
    self.clock = 0.0
    self.precompile = None
    self.name, self.setting = "fake", "x"

  def decode(self, tokens):
    if tokens.shape[0] > self.fits:
      raise RuntimeError("RESOURCE_EXHAUSTED: out of memory")
    self.clock += self.overhead + self.per_row * tokens.shape[0]
    return tokens, np.ones(tokens.shape[0], np.int32)


@pytest.mark.parametrize(
    "fits,overhead,start,expected_batches",
    [
        (1000, 1.0, 8, [8, 16, 32, 64, 128]),  # per-call overhead dominates: grows to the cap
        (1000, 0.0, 8, [8, 16]),  # no gain from batching: stops after one doubling
        (20, 1.0, 64, [16]),  # 64 and 32 do not fit: halves to 16, not 32 again
    ],
)
def test_throughput_search(monkeypatch, fits, overhead, start, expected_batches):
  system = _FakeThroughputSystem(fits, overhead, 0.01)
  monkeypatch.setattr(latency.time, "perf_counter", lambda: system.clock)
  source_ids = np.ones((200, 4), np.int32)
  by_batch = latency.measure_throughput(system, source_ids, start, 128, log=lambda *_: None)
  assert list(by_batch) == expected_batches
  for batch, value in by_batch.items():
    calls = -(-200 // batch)
    assert value == pytest.approx(200 / (calls * (overhead + 0.01 * batch)), rel=1e-3)


# ------------------------------------------------------------------------------------------------
# Step budgets, distillation and the quality table (issue 17's benchmark).
def test_step_budget_schedule_follows_steps_not_time():
  steps = budget_config.BudgetConfig(max_steps=200, minutes=0)
  clock = budget_config.BudgetConfig(minutes=10)
  assert (steps.budget_kind, clock.budget_kind) == ("steps", "wall_clock")
  # Half the steps after 1 s of a 10-minute allowance: the step budget is half spent.
  assert budget_training.budget_fraction(steps, 100, elapsed_seconds=1.0) == pytest.approx(0.5)
  assert budget_training.budget_fraction(clock, 100, elapsed_seconds=300.0) == pytest.approx(0.5)
  assert budget_training.budget_fraction(clock, 5, elapsed_seconds=60.0) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "padir", "--minutes", "0"], "--minutes must be > 0 without --max_steps"),
        (["--model", "ar", "--loss", "unmasking_rate=0.5"], "the AR model has none"),
        (["--model", "padir", "--loss", "unmasking_rat=0.5"], "--loss: unknown field"),
        (["--model", "padir", "--loss", "unmasking_rate=2"], "unmasking_rate must lie in [0, 1]"),
        (["--model", "padir", "--network", "decoder_mode=x"], "--network: decoder_mode"),
        (
            ["--model", "padir", "--max_steps", "-1"],
            "argument --max_steps: must be an integer >= 0",
        ),
        (
            ["--model", "padir", "--init_from", "no/such/teacher"],
            "--init_from: checkpoint directory not found: no/such/teacher",
        ),
    ],
)
def test_train_budget_rejects_bad_flags_before_any_work(argv, message, capsys, tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    train_budget.main([*argv, "--out", str(tmp_path / "ckpt"), "--data_dir", str(tmp_path)])
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "ckpt").exists()


def test_train_budget_loss_and_network_overrides_reach_the_configs():
  config = budget_config.BudgetConfig(
      max_steps=5, loss=("unmasking_rate=0.5", "corruption=mask"), network=("num_heads=2",)
  )
  loss_config = budget_config.padir_loss_config(config, vocab_high=100)
  assert (loss_config.unmasking_rate, loss_config.corruption.value) == (0.5, "mask")
  assert budget_config.transformer_config(config, vocab_high=100).num_heads == 2


def test_train_budget_warm_starts_from_an_ar_checkpoint(tmp_path, tiny_vocab_path):
  """--init_from: the AR leaves start the PaDIR run (checked before the data is read)."""
  save_tiny_checkpoints(tmp_path, tiny_vocab_path, vocab_high=200)
  _, ar_params, ar_meta = checkpoints.load_checkpoint(str(tmp_path / "ar"))
  sizes = dict(emb_dim=32, num_heads=2, mlp_dim=64, num_layers=1, max_length=40, dropout_rate=0)
  config = budget_config.BudgetConfig(
      model="padir", max_steps=1, minutes=0, init_from=str(tmp_path / "ar"), **sizes
  )
  import sentencepiece as spm
  from padir_t5x import corpus
  from padir_t5x import vocab

  # The run's vocabulary (200 pieces, padded to the checkpoint's 256 embedding rows).
  processor = spm.SentencePieceProcessor(model_file=tiny_vocab_path)
  train_budget.check_warm_start(config, ar_params, ar_meta, processor)
  other_path = vocab.train_sentencepiece(
      [s for pair in corpus.generate_pairs(500, seed=2) for s in pair],
      str(tmp_path / "other"),
      vocab_size=150,
      seed=0,
      num_threads=1,
  )
  other = spm.SentencePieceProcessor(model_file=other_path)
  with pytest.raises(checkpoints.CheckpointError, match="is not this run's"):
    train_budget.check_warm_start(config, ar_params, ar_meta, other)
  wider = dataclasses.replace(config, mlp_dim=128)
  with pytest.raises(checkpoints.CheckpointError, match="cannot warm-start"):
    train_budget.check_warm_start(wider, ar_params, ar_meta, processor)
  no_vocab = {**ar_meta, "vocab_model": str(tmp_path / "gone.model")}
  with pytest.raises(checkpoints.CheckpointError, match="vocabulary not found"):
    train_budget.check_warm_start(config, ar_params, no_vocab, processor)

  rng = np.random.default_rng(0)
  inputs = [list(rng.integers(4, 200, 6)) + [EOS_ID] for _ in range(20)]
  targets = [list(rng.integers(4, 200, 5)) + [EOS_ID] for _ in range(20)]
  _, params, record, _ = budget_training.train(
      config,
      inputs,
      targets,
      vocab_high=200,
      log=lambda *_: None,
      init_params=ar_params,
      buckets=((8, 16),),
  )
  # One step at the warm-up's learning rate of 0 leaves every copied leaf as the checkpoint's.
  flat_ar, flat = checkpoints._flatten(ar_params), checkpoints._flatten(params)
  assert record["warm_start"]["copied_leaves"] == len(flat_ar)
  for key, value in flat_ar.items():
    np.testing.assert_array_equal(flat[key], value)
  assert record["warm_start"]["fresh"] == sorted(k for k in flat if k not in flat_ar)
  assert record["budget_config"]["init_from"] == str(tmp_path / "ar")
  # The quality table names the checkpoint a row was warm-started from.
  from benchmarks import quality

  checkpoints.save_checkpoint(
      str(tmp_path / "warm"),
      params,
      budget_config.transformer_config(config, 200),
      "padir",
      train_record=record,
  )
  assert quality.train_record(str(tmp_path / "warm"))["warm_start_from"] == str(tmp_path / "ar")
  assert "warm_start_from" not in quality.train_record(str(tmp_path / "ar"))


def test_closest_to_reference_picks_by_sentence_bleu():
  from benchmarks import distill_budget

  candidates = ["a man rides a horse .", "a man is riding a horse .", "a dog ."]
  assert distill_budget.closest_to_reference(candidates, "a man is riding a horse .") == 1
  assert distill_budget.closest_to_reference(candidates, "a dog runs .") == 2
  assert distill_budget.closest_to_reference(["x y", "x y"], "z") == 0  # ties: the teacher's best
  with pytest.raises(ValueError, match="no candidates"):
    distill_budget.closest_to_reference([], "z")
  done = [translate.Translation(c[0], -1.0, 3, 3, candidates=tuple((t, -1.0) for t in c)) for c in
          [candidates, candidates[::-1]]]  # fmt: skip
  teacher = distill_budget.select_targets(done, None, distill_budget.Selection.TEACHER)
  assert teacher == ([candidates[0], candidates[2]], 0)
  references = ["a dog .", "a dog ."]
  chosen = distill_budget.select_targets(done, references, distill_budget.Selection.REFERENCE)
  assert chosen == (["a dog .", "a dog ."], 1)
  with pytest.raises(ValueError, match="one reference per translation"):
    distill_budget.select_targets(done, references[:1], distill_budget.Selection.REFERENCE)


def test_distil_then_quality_on_tiny_checkpoints(tmp_path, tiny_vocab_path, capsys):
  import sentencepiece as spm
  from benchmarks import distill_budget
  from benchmarks import quality
  from padir_t5x import corpus

  processor = spm.SentencePieceProcessor(model_file=tiny_vocab_path)
  save_tiny_checkpoints(tmp_path, tiny_vocab_path, processor.get_piece_size())
  data_dir = tmp_path / "data"
  (data_dir / "de-en").mkdir(parents=True)
  pairs = corpus.generate_pairs(12, seed=5)
  for split in ("train", "dev-multi30k"):
    (data_dir / "de-en" / f"{split}.de").write_text("".join(p[0] + "\n" for p in pairs))
    (data_dir / "de-en" / f"{split}.en").write_text("".join(p[1] + "\n" for p in pairs))

  distilled = tmp_path / "distilled"
  assert (
      distill_budget.main(
          ["--teacher", str(tmp_path / "ar"), "--out", str(distilled), "--data_dir", str(data_dir)]
      )
      == 0
  )
  record = json.loads((distilled / "distill.json").read_text())
  sources = (distilled / "de-en" / "train.de").read_text().splitlines()
  targets = (distilled / "de-en" / "train.en").read_text().splitlines()
  assert len(sources) == len(targets) == record["kept_pairs"]
  assert record["kept_pairs"] + record["empty_translations_dropped"] == 12
  assert all(t.strip() for t in targets)  # empty translations are left out, with their source
  assert set(sources) <= {p[0] for p in pairs}

  assert record["selection"] == "teacher" and record["not_the_teachers_best"] == 0

  # --select reference: each target is one of the teacher's beam hypotheses, the closest to the
  # training reference by sentence BLEU.
  selected = tmp_path / "selected"
  argv = ["--teacher", str(tmp_path / "ar"), "--data_dir", str(data_dir), "--beam_size", "3"]
  assert distill_budget.main(argv + ["--out", str(selected), "--select", "reference"]) == 0
  record = json.loads((selected / "distill.json").read_text())
  assert record["selection"] == "reference" and record["beam_size"] == 3
  teacher = translate.Translator.from_checkpoint(
      str(tmp_path / "ar"), beam_size=3, batch_size=64, keep_candidates=True
  )
  by_source = dict(zip([p[0] for p in pairs], teacher.translate([p[0] for p in pairs], True)))
  reference_of = dict(pairs)
  chosen = (selected / "de-en" / "train.en").read_text().splitlines()
  changed = 0
  for source, target in zip((selected / "de-en" / "train.de").read_text().splitlines(), chosen):
    texts = [text for text, _ in by_source[source].candidates]
    assert target == texts[distill_budget.closest_to_reference(texts, reference_of[source])]
    changed += target != texts[0]
  assert record["not_the_teachers_best"] == changed
  greedy = argv[:-1] + ["1", "--out", str(tmp_path / "x"), "--select", "reference"]
  with pytest.raises(SystemExit):
    distill_budget.main(greedy)
  assert "needs --beam_size 2 or more" in capsys.readouterr().err
  (data_dir / "de-en" / "train.en").write_text("one line\n")
  with pytest.raises(SystemExit):
    distill_budget.main(argv + ["--out", str(tmp_path / "x"), "--select", "reference"])
  assert f"{data_dir / 'de-en' / 'train.en'} has 1 lines" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()
  (data_dir / "de-en" / "train.en").write_text("".join(p[1] + "\n" for p in pairs))

  out = tmp_path / "quality.json"
  argv = [
      "--ar", f"ar={tmp_path / 'ar'}",
      "--padir", f"padir_raw={tmp_path / 'padir'}",
      "--ar_beams", "1,2",
      "--setting", "T=4,l=5:max_passes=4;length_beam=5",
      "--setting", "T=2,l=1,mask:max_passes=2;length_beam=1;init=mask",
      "--data_dir", str(data_dir),
      "--out", str(out),
  ]  # fmt: skip
  assert quality.main(argv) == 0
  saved = json.loads(out.read_text())
  assert saved["num_sentences"] == 12
  rows = {(r["system"], r["setting"]): r for r in saved["results"]}
  assert list(rows) == [
      ("ar", "beam=1"),
      ("ar", "beam=2"),
      ("padir_raw", "T=4,l=5"),
      ("padir_raw", "T=2,l=1,mask"),
  ]
  for row in rows.values():
    assert {"bleu", "chrf", "stutter_rate", "decoder_passes_per_sentence", "train"} <= set(row)
    expected = {"steps": 7, "minutes": 1.5, "target_tokens": 700, "budget": "steps"}
    assert {k: row["train"][k] for k in expected} == expected  # read from the checkpoint
    assert 0.0 <= row["bleu"] <= 100.0
  assert 1.0 <= rows[("padir_raw", "T=4,l=5")]["decoder_passes_per_sentence"] <= 4.0
  assert rows[("padir_raw", "T=2,l=1,mask")]["decoder_passes_per_sentence"] <= 2.0
  assert 0.0 <= rows[("padir_raw", "T=4,l=5")]["length_accuracy"] <= 1.0
  assert "length_accuracy" not in rows[("ar", "beam=1")]


def test_quality_rejects_bad_settings_before_loading(tmp_path, capsys):
  from benchmarks import quality

  for argv, message in (
      (["--padir", str(tmp_path), "--setting", "nocolon"], "--setting: 'nocolon' is not NAME"),
      (["--padir", str(tmp_path), "--setting", "x:remask=foo"], "--setting: remask"),
      (["--padir", str(tmp_path)], "--padir: no core checkpoint"),
      (["--ar_beams", "1,0"], "--ar_beams"),
  ):
    with pytest.raises(SystemExit) as exit_info:
      quality.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_length_oracle_decodes_the_given_lengths(tmp_path, tiny_vocab_path):
  import sentencepiece as spm
  from benchmarks import length_oracle
  from padir_t5x import corpus
  from padir_t5x import translate

  np.testing.assert_array_equal(
      length_oracle.length_windows(np.array([3, 39]), 2, 40),
      [[2, 2, 3, 4, 5], [37, 38, 39, 40, 40]],
  )
  processor = spm.SentencePieceProcessor(model_file=tiny_vocab_path)
  save_tiny_checkpoints(tmp_path, tiny_vocab_path, processor.get_piece_size())
  pairs = corpus.generate_pairs(5, seed=3)
  translator = translate.Translator.from_checkpoint(str(tmp_path / "padir"), batch_size=4)
  encoded, _ = translator.encode([s for s, _ in pairs])
  wanted = np.array([[3], [9], [5], [12], [7]], np.int32)
  _, chosen = length_oracle.decode_rows(translator, encoded, wanted)  # two batches of 4
  np.testing.assert_array_equal(chosen, wanted[:, 0])
  _, chosen = length_oracle.decode_rows(translator, encoded, length_oracle.length_windows(
      wanted[:, 0], 1, 40))  # fmt: skip
  assert all(abs(c - w) <= 1 for c, w in zip(chosen, wanted[:, 0]))

  data_dir = tmp_path / "data"
  (data_dir / "de-en").mkdir(parents=True)
  (data_dir / "de-en" / "dev-multi30k.de").write_text("".join(p[0] + "\n" for p in pairs))
  (data_dir / "de-en" / "dev-multi30k.en").write_text("".join(p[1] + "\n" for p in pairs))
  out = tmp_path / "oracle.json"
  argv = ["--padir", str(tmp_path / "padir"), "--teacher", str(tmp_path / "ar"),
          "--radius", "1", "--data_dir", str(data_dir), "--out", str(out)]  # fmt: skip
  assert length_oracle.main(argv) == 0
  saved = json.loads(out.read_text())
  assert [r["lengths"] for r in saved["results"]] == [
      "predicted", "gold", "gold+-1", "teacher", "teacher+-1"
  ]  # fmt: skip
  gold_row = saved["results"][1]
  assert gold_row["chosen_length_is_gold"] == 1.0  # one length given: the reference's
  assert saved["num_sentences"] == 5


def test_length_oracle_rejects_bad_checkpoints_before_loading(tmp_path, tiny_vocab_path, capsys):
  from benchmarks import length_oracle

  save_tiny_checkpoints(tmp_path, tiny_vocab_path, 256)
  for argv, message in (
      (["--padir", str(tmp_path / "none")], "--padir: no core checkpoint"),
      (["--padir", str(tmp_path / "ar")], "of kind 'ar' (config.json), not 'padir'"),
      (["--padir", str(tmp_path / "padir"), "--teacher", str(tmp_path / "padir")], "--teacher"),
      (["--padir", str(tmp_path / "padir"), "--radius", "-1"], "--radius"),
  ):
    with pytest.raises(SystemExit) as exit_info:
      length_oracle.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
