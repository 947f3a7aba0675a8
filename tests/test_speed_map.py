"""benchmarks/speed_map.py: every row of a tiny run, the table and crossover computed from rows,
bad flags refused up front, a run without ctranslate2 and the optional packages, and the
CTranslate2 model built from random params decoding as the JAX greedy decoder does."""

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import speed_map
from benchmarks import speed_map_rows
from benchmarks import speed_map_summary
from benchmarks.accelerator import random_params
from padir_t5x import EOS_ID
from padir_t5x.decoders import decoders
from padir_t5x import export
from padir_t5x.core import network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--sizes", "tiny", "--reps", "2", "--target_length", "8", "--source_length", "8"]


def _has_ctranslate2() -> bool:
  return speed_map_rows.ctranslate2_unavailable() is None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """(report, stdout, plot path) of a tiny run: every system, batches 1 and 2, float32.

  (bfloat16 runs in test_runs_without_ctranslate2_and_the_optional_packages; intra_threads 1
  because CTranslate2's spinning threads crawl on a CPU the rest of the suite keeps busy.)"""
  root = tmp_path_factory.mktemp("speed_map")
  out, png = root / "map.json", root / "map.png"
  argv = TINY + ["--batch_sizes", "1,2", "--dtypes", "float32", "--ct2_intra_threads", "1"]
  argv += ["--out", str(out), "--plot", str(png)]
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    report = speed_map.main(argv)
  assert json.loads(out.read_text()) == json.loads(json.dumps(report))
  return report, printed.getvalue(), png


def test_tiny_run_has_every_row_with_sane_fields(tiny_run):
  report, log, _ = tiny_run
  rows = report["results"]
  keys = sorted((r["name"], r["dtype"], r["batch"]) for r in rows)
  padir = ("padir_l1", "padir_l3", "padir_l5", "padir_l5_k1", "padir_l5_k2")
  expected = [(n, "float32", b) for n in padir for b in (1, 2)]
  expected += [(n, "float32", b) for n in ("jax_greedy", "jax_beam5") for b in (1, 2)]
  expected += [
      (n, c, b) for n in ("ct2_greedy", "ct2_beam5") for c in ("float32", "int8") for b in (1, 2)
  ]
  assert keys == sorted(expected)
  for row in rows:
    assert row["size"] == "tiny" and row["vocab_size"] == 4096 and row["vocab_high"] == 4000
    assert row["model"]["emb_dim"] == 128 and row["model"]["num_encoder_layers"] == 2
    assert row["source_length"] == row["target_length"] == 8
    if "skipped" in row:
      assert not _has_ctranslate2() and row["runtime"] == "ctranslate2"
      continue
    lat = row["latency_ms"]
    assert 0 < lat["median"] <= lat["p90"] <= lat["p99"]
    assert row["throughput_sent_per_s"] == pytest.approx(row["batch"] / lat["median"] * 1e3, 0.01)
    assert isinstance(row["compile_s"], float)
    assert len(row["load_average_before"]) == len(row["load_average_after"]) == 3
    # Fixed work: PaDIR runs all 4 passes, every AR system all 8 steps.
    assert row["fixed_work"] is True
    assert row["decoder_passes_per_sentence"] == (4 if row["system"] == "padir" else 8)
    if row["runtime"] == "ctranslate2":
      assert row["threads"] == {"intra_threads": 1, "inter_threads": 1}
      assert row["params"]["min_decoding_length"] == row["params"]["max_decoding_length"] == 8
    else:
      assert row["runtime"] == "jax" and row.get("fallback") is None
    if row["name"].startswith("padir_l5_k"):
      k = int(row["name"][-1])
      assert row["params"]["refine_top_k"] == k and row["setting"] == f"T=4,l=5,k={k}"
  assert report["environment"]["devices"] and report["environment"]["cpu_count"]
  if _has_ctranslate2():
    assert report["environment"]["ctranslate2"]
  assert "tiny              jax         T=4,l=5" in log
  assert "| tiny | 2 |" in log and "Crossover (smallest size at which" in log


def test_table_and_crossover_are_computed_from_the_rows(tiny_run):
  report, _, _ = tiny_run
  rows = [r for r in report["results"] if "skipped" not in r]
  entries = speed_map_summary.summary(report["results"])
  assert [(e["size"], e["batch"]) for e in entries] == [("tiny", 1), ("tiny", 2)]
  for e in entries:
    mine = [r for r in rows if r["batch"] == e["batch"]]
    greedy = min(r["latency_ms"]["median"] for r in mine if r["setting"] == "greedy")
    l1 = min(r["latency_ms"]["median"] for r in mine if r["setting"] == "T=4,l=1")
    assert e["ar_greedy/padir_l1"] == pytest.approx(greedy / l1)
    beam = min(r["latency_ms"]["median"] for r in mine if r["setting"] == "beam=5")
    k1 = min(r["latency_ms"]["median"] for r in mine if r["setting"] == "T=4,l=5,k=1")
    assert e["ar_beam5/padir_l5_k1"] == pytest.approx(beam / k1)
    assert (e["size"] if greedy / l1 > 1 else None) == speed_map_summary.crossover(entries)[
        e["batch"]
    ]
  table = speed_map_summary.markdown_table(entries)
  assert table.count("\n| tiny |") == 2
  assert f"{entries[0]['ar_greedy/padir_l1']:.2f}x" in table


def test_plot_is_written(tiny_run):
  _, _, png = tiny_run
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _row(size, batch, runtime, setting, dtype, median, num_params, system=None):
  return {
      "system": system or ("padir" if setting.startswith("T=") else "ar"),
      "setting": setting,
      "runtime": runtime,
      "dtype": dtype,
      "size": size,
      "batch": batch,
      "num_params": num_params,
      "latency_ms": {"median": median, "p90": median, "p99": median},
  }


def test_summary_and_crossover_on_hand_made_rows():
  rows = []
  # Sizes listed out of order: the summary sorts them by parameter count.
  for size, params, padir_ms, greedy_ms in (
      ("base", 300, 10.0, 50.0),
      ("tiny", 100, 4.0, 2.0),
      ("small", 200, 6.0, 12.0),
  ):
    for batch, scale in ((1, 1.0), (8, 4.0)):
      rows += [
          _row(size, batch, "jax", "T=4,l=1", "float32", padir_ms * scale, params),
          _row(size, batch, "jax", "T=4,l=1", "bfloat16", padir_ms * scale * 2, params),
          _row(size, batch, "jax", "T=4,l=5", "float32", padir_ms * scale * 3, params),
          _row(size, batch, "jax", "greedy", "float32", greedy_ms * 2, params),
          _row(size, batch, "ctranslate2", "greedy", "int8", greedy_ms, params),
          _row(size, batch, "ctranslate2", "greedy", "float32", greedy_ms * 1.5, params),
          _row(size, batch, "ctranslate2", "beam=5", "int8", greedy_ms * 3, params),
          {**_row(size, batch, "ctranslate2", "greedy", "int16", 0.0, params), "skipped": "x"},
      ]
  # At batch 8 the AR greedy gets 8x faster on small: the crossover moves to base.
  for row in rows:
    if row["size"] == "small" and row["batch"] == 8 and row["setting"] == "greedy":
      row["latency_ms"] = {k: v / 8 for k, v in row["latency_ms"].items()}
  entries = speed_map_summary.summary(rows)
  assert [(e["size"], e["batch"]) for e in entries] == [
      (s, b) for s in ("tiny", "small", "base") for b in (1, 8)
  ]
  small1 = entries[2]
  assert small1["ar_greedy"]["dtype"] == "int8" and small1["padir_l1"]["dtype"] == "float32"
  assert small1["ar_greedy/padir_l1"] == pytest.approx(12.0 / 6.0)
  assert small1["ar_greedy/padir_l5"] == pytest.approx(12.0 / 18.0)
  assert small1["ar_beam5/padir_l5"] == pytest.approx(36.0 / 18.0)
  assert entries[0]["ar_greedy/padir_l1"] == pytest.approx(0.5)
  assert speed_map_summary.crossover(entries) == {1: "small", 8: "base"}
  table = speed_map_summary.markdown_table(entries)
  assert "| small | 1 | 6.00 (jax float32) | 18.00 (jax float32) | 12.00 (ct2 int8) |" in table
  assert "| 2.00x | 0.67x | 2.00x |" in table
  line = speed_map_summary.crossover_line(entries)
  assert line.endswith("batch 1: from small; batch 8: from base")
  # No AR row at all: the ratios are n/a, and no crossover.
  padir_only = [r for r in rows if r["system"] == "padir" and r["size"] == "tiny"]
  entries = speed_map_summary.summary(padir_only)
  assert entries[0]["ar_greedy/padir_l1"] is None and "n/a" in speed_map_summary.markdown_table(
      entries
  )
  assert speed_map_summary.crossover(entries) == {1: None, 8: None}
  assert "batch 1: none up to tiny" in speed_map_summary.crossover_line(entries)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sizes", "tiny,huge"], "--sizes: 'huge' is not one of tiny, small, base"),
        (["--systems", "padir_l1,fairseq"], "--systems: 'fairseq' is not one of padir_l1"),
        (["--dtypes", "float16"], "--dtypes: 'float16' is not one of float32, bfloat16"),
        (["--ct2_compute_types", "int4"], "--ct2_compute_types: 'int4' is not one of"),
        (["--batch_sizes", "1,0"], "--batch_sizes: each item must be an integer >= 1"),
        (["--reps", "0"], "--reps: must be an integer >= 1, got 0"),
        (["--target_length", "5"], "--target_length: PaDIR l=5 needs >= 6, got 5"),
        (["--out", "/no/such/dir/a.json"], "--out: directory of /no/such/dir/a.json does not"),
        (["--plot", "/no/such/dir/a.png"], "--plot: directory of /no/such/dir/a.png does not"),
    ],
)
def test_bad_flags_exit_2_before_any_work(argv, message, capsys, monkeypatch):
  monkeypatch.setattr(speed_map, "run", lambda *a, **k: pytest.fail("work started"))
  with pytest.raises(SystemExit) as exit_info:
    speed_map.main(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert message in err[-1]


def test_unwritable_out_and_plot_directories_are_refused(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(speed_map, "run", lambda *a, **k: pytest.fail("work started"))
  # Root may write anywhere, so the refusal is exercised through os.access.
  monkeypatch.setattr(os, "access", lambda path, mode: path != str(tmp_path))
  for flag in ("--out", "--plot"):
    with pytest.raises(SystemExit) as exit_info:
      speed_map.main([flag, str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert f"{flag}: directory of {tmp_path / 'x'} is not writable" in capsys.readouterr().err


def test_greedy_that_stops_early_is_retimed_as_beam_1_without_early_stopping(monkeypatch):
  """Fixed work: a greedy batch that ended before t steps (every row hit EOS) is re-timed with
  ArBeamDecoder(beam_size=1, early_stopping=False), and the row says so."""

  class EndsAtOnce:

    def __init__(self, *args, **kwargs):
      del args, kwargs

    def decode(self, tokens, rng):
      del rng
      b = tokens.shape[0]
      return decoders.Hypotheses(
          jnp.ones((b, 1, 8), jnp.int32), None, jnp.ones((b, 1), jnp.int32), jnp.ones((b,))
      )

  monkeypatch.setattr(decoders, "ArGreedyDecoder", EndsAtOnce)
  argv = TINY + ["--batch_sizes", "1", "--reps", "1", "--dtypes", "float32"]
  args = speed_map.parse_args(argv + ["--systems", "jax_greedy"])
  (row,) = speed_map_rows.run(args, log=lambda line: None)["results"]
  assert row["fallback"].startswith("ArBeamDecoder(beam_size=1, early_stopping=False)")
  assert row["setting"] == "greedy" and row["fixed_work"] is True
  assert row["decoder_passes_per_sentence"] == 8


BLOCKED = ("ctranslate2", "sentencepiece", "tensorflow", "tensorflow_text", "sacrebleu", "seqio")
BLOCKED += ("t5x", "gin", "matplotlib")


def test_runs_without_ctranslate2_and_the_optional_packages(tmp_path):
  """A bare accelerator machine: jax only. The CTranslate2 rows are skipped with the reason."""
  out = tmp_path / "bare.json"
  argv = TINY + ["--batch_sizes", "1", "--reps", "1", "--dtypes", "bfloat16"]
  argv += ["--systems", "padir_l1,ct2_greedy", "--out", str(out)]
  script = (
      "import sys\n"
      f"for name in {BLOCKED!r}:\n"
      "  sys.modules[name] = None  # importing it raises ImportError\n"
      "from benchmarks import speed_map\n"
      f"speed_map.main({argv!r})\n"
      f"assert all(sys.modules[name] is None for name in {BLOCKED!r})\n"
  )
  env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  done = subprocess.run(
      [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True
  )
  assert done.returncode == 0, done.stderr[-3000:]
  assert "CTranslate2 rows skipped: ctranslate2 does not import" in done.stdout
  rows = json.loads(out.read_text())["results"]
  assert [(r["name"], r["dtype"]) for r in rows] == [
      ("padir_l1", "bfloat16"),
      ("ct2_greedy", "float32"),
      ("ct2_greedy", "int8"),
  ]
  assert rows[0]["latency_ms"]["median"] > 0
  for row in rows[1:]:
    assert "ctranslate2 does not import" in row["skipped"] and "latency_ms" not in row
  assert "| tiny | 1 |" in done.stdout and "n/a" in done.stdout


def test_ctranslate2_model_from_random_params_decodes_as_jax_greedy(tmp_path):
  """The CT2 rows time the network the JAX rows time: same greedy tokens (no forced length),
  same first-step logits."""
  pytest.importorskip("ctranslate2")
  make_config, vocab_high = speed_map_rows.SIZES["tiny"]
  config = make_config(9, 8)
  ar_config = dataclasses.replace(config, decoder_mode="autoregressive")
  params = random_params(ar_config)
  out = export.export_ctranslate2_params(
      params, ar_config, export.synthetic_tokens(vocab_high), str(tmp_path / "ct2")
  )
  assert sorted(os.listdir(out)) == [
      "config.json",
      "model.bin",
      export.SIDECAR_FILE,
      "shared_vocabulary.json",
  ]
  assert export.read_sidecar(out)["source_checkpoint"] is None
  module = network.Transformer(ar_config)
  ids = speed_map_rows.sources_for(3, 6, 8, vocab_high)
  ours = decoders.ArGreedyDecoder(module, params, max_decode_length=8, vocab_high=vocab_high)
  ours = np.asarray(ours.decode(speed_map_rows.with_eos(ids), None).best)
  translator = export.ctranslate2_translator(out, intra_threads=1)
  tokens = [[f"t{i}" for i in row] for row in ids.tolist()]
  results = translator.translate_batch(tokens, return_end_token=True, **export.greedy_options(out))
  for row, result in zip(ours.tolist(), results):
    expected = row[: row.index(EOS_ID) + 1] if EOS_ID in row else row
    assert [int(t[1:]) for t in result.hypotheses[0]] == expected
  assert len({tuple(r) for r in ours.tolist()}) > 1  # the sources lead to different outputs
  first = translator.translate_batch(
      tokens, return_logits_vocab=True, **export.greedy_options(out, max_decoding_length=1)
  )
  theirs = np.stack([np.asarray(r.logits[0][0]) for r in first])
  start = jnp.zeros((len(ids), 1), jnp.int32)
  logits = module.apply({"params": params}, speed_map_rows.with_eos(ids), start, start + 1)
  logits = np.array(logits)[:, 0, :vocab_high]
  logits[:, list(export.NEVER_EMITTED)] += export.DISALLOWED_BIAS
  np.testing.assert_allclose(theirs, logits, rtol=1e-4, atol=1e-3)


def test_extend_refuses_a_file_that_is_not_a_map_before_any_work(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr(speed_map, "run", lambda *a, **k: pytest.fail("work started"))
  bad = tmp_path / "bad.json"
  bad.write_text('{"results": [{"size": "tiny"}]}')
  for path in (bad, tmp_path / "missing.json"):
    with pytest.raises(SystemExit) as exit_info:
      speed_map.main(["--extend", str(path)])
    assert exit_info.value.code == 2
    assert f"--extend: {path}: not a speed map's JSON" in capsys.readouterr().err


def test_extend_keeps_earlier_rows_this_run_does_not_retime(tmp_path, monkeypatch):
  """A map built batch by batch: --extend with --out the same file adds this run's rows; a row
  timed again (same size, name, dtype, batch) is replaced, every other earlier row kept."""

  def row(name, batch, median):
    setting = "greedy" if name == "jax_greedy" else "T=4,l=1"
    return {
        "size": "tiny",
        "name": name,
        "dtype": "float32",
        "batch": batch,
        "setting": setting,
        "system": "ar" if name == "jax_greedy" else "padir",
        "runtime": "jax",
        "latency_ms": {"median": median, "p90": median, "p99": median},
    }

  path = tmp_path / "map.json"
  earlier = {
      "results": [row("padir_l1", 1, 5.0), row("jax_greedy", 1, 10.0)],
      "environment": {"devices": ["cpu"], "run": 1},
  }
  path.write_text(json.dumps(earlier))
  fresh = {
      "results": [row("padir_l1", 1, 4.0), row("padir_l1", 8, 7.0)],
      "environment": {"devices": ["cpu"], "run": 2},
  }
  monkeypatch.setattr(speed_map, "run", lambda *a, **k: fresh)
  report = speed_map.main(["--sizes", "tiny", "--extend", str(path), "--out", str(path)])
  assert json.loads(path.read_text()) == report
  medians = {(r["name"], r["batch"]): r["latency_ms"]["median"] for r in report["results"]}
  assert medians == {("jax_greedy", 1): 10.0, ("padir_l1", 1): 4.0, ("padir_l1", 8): 7.0}
  assert report["environment"]["run"] == 2
  assert [e["run"] for e in report["earlier_environments"]] == [1]
