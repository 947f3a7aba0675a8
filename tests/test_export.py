"""padir_t5x.export: an AR core checkpoint as a CTranslate2 model decodes as ar_decoding does.

CTranslate2 greedy (beam 1) must give ar_decoding.greedy_search's tokens exactly, row for row,
on tiny random networks (several layers; tied and untied logits; head_dim * heads != emb_dim;
relu and gelu) and on the committed AR checkpoint with real German sentences; the first-step
logits and the teacher-forced token log-probs agree to float tolerance.
"""

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("ctranslate2")

from padir_t5x import EOS_ID  # noqa: E402
from padir_t5x import FIRST_ORDINARY_ID  # noqa: E402
from padir_t5x.decoders import ar_decoding  # noqa: E402
from padir_t5x.core import checkpoints  # noqa: E402
from padir_t5x import export  # noqa: E402
from padir_t5x.core import network  # noqa: E402
from padir_t5x.core import network_config  # noqa: E402
from padir_t5x import vocab  # noqa: E402
from padir_t5x.data.shared_data import find_data_dir  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_AR = os.path.join(REPO, "benchmarks", "checkpoints", "ar_dropout0")
REAL_PADIR = os.path.join(REPO, "benchmarks", "checkpoints", "padir_raw")
MAX_DECODE = 20  # both sides: random weights rarely end in EOS

VARIANTS = {
    # tied logits (scale_outputs), head_dim * num_heads == emb_dim, relu
    "tied_relu": dict(),
    # untied logits (logits_dense), head_dim * num_heads != emb_dim, gelu (tanh), another epsilon
    "untied_gelu": dict(
        logits_via_embedding=False, head_dim=24, mlp_activation="gelu", layer_norm_epsilon=1e-5
    ),
}


def _tiny_config(vocab_size: int, **overrides) -> network_config.TransformerConfig:
  fields = dict(
      vocab_size=vocab_size,
      decoder_mode="autoregressive",  # positional_attention stays True: AR layers have none
      num_encoder_layers=3,
      num_decoder_layers=3,
      dropout_rate=0.0,
      max_input_length=32,
      max_target_length=24,
  )
  return network_config.tiny_config(**{**fields, **overrides})


def _random_params(module, seed: int) -> dict:
  """Initial parameters with every leaf perturbed (LayerNorm scales and biases included), so
  that each parameter's mapping shows in the output."""
  x = jnp.ones((1, 4), jnp.int32)
  params = module.init(jax.random.PRNGKey(seed), x, x, x, enable_dropout=False)["params"]
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  leaves = [
      np.asarray(leaf + 0.3 * jax.random.normal(key, leaf.shape), np.float32)
      for leaf, key in zip(leaves, keys)
  ]
  return jax.tree_util.tree_unflatten(tree, leaves)


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def tiny_export(request, tiny_vocab_path, tmp_path_factory):
  """(module, params, processor, vocab_high, CTranslate2 model dir) of a random AR network."""
  processor = checkpoints.load_vocabulary(tiny_vocab_path, {}, 10**6)
  vocab_high = processor.get_piece_size()
  config = _tiny_config(vocab.padded_vocab_size(vocab_high), **VARIANTS[request.param])
  module = network.Transformer(config)
  params = _random_params(module, seed=len(request.param))
  root = tmp_path_factory.mktemp(f"export_{request.param}")
  checkpoint = str(root / "ar")
  checkpoints.save_checkpoint(checkpoint, params, config, "ar", tiny_vocab_path, vocab_high)
  out = str(root / "ct2")
  assert export.export_ctranslate2(checkpoint, out) == out
  return module, params, processor, vocab_high, out


def _sources(n: int, vocab_high: int, seed: int = 0) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [
      rng.integers(FIRST_ORDINARY_ID, vocab_high, size=int(rng.integers(1, 30))).tolist()
      for _ in range(n)
  ]


def _source_array(sources: list[list[int]]) -> np.ndarray:
  """[b, s] ids with EOS, PAD after (as padir_t5x.translate builds them)."""
  tokens = np.zeros((len(sources), max(len(s) for s in sources) + 1), np.int32)
  for row, ids in enumerate(sources):
    tokens[row, : len(ids)] = ids
    tokens[row, len(ids)] = EOS_ID
  return tokens


def _until_eos(row) -> list[int]:
  row = [int(t) for t in row]
  return row[: row.index(EOS_ID) + 1] if EOS_ID in row else row


def _compare_greedy(module, params, processor, vocab_high, out, sources, max_decode):
  """(rows, rows that agree exactly, rows that ended in EOS): CTranslate2 vs ar_decoding."""
  ours = ar_decoding.jit_greedy_search(
      module,
      params,
      jnp.asarray(_source_array(sources)),
      max_decode_length=max_decode,
      vocab_high=vocab_high,
  ).sequences
  translator = export.ctranslate2_translator(out, intra_threads=1)
  results = translator.translate_batch(
      [[processor.id_to_piece(i) for i in ids] for ids in sources],
      return_end_token=True,
      **export.greedy_options(out, max_decoding_length=max_decode),
  )
  agree = ended = 0
  for row, result in zip(np.asarray(ours), results):
    theirs = [processor.piece_to_id(p) for p in result.hypotheses[0]]
    expected = _until_eos(row)
    agree += theirs == expected
    ended += expected[-1] == EOS_ID
    if theirs != expected:
      print("differs:", expected, theirs)
  return len(sources), agree, ended


def test_greedy_agrees_token_for_token(tiny_export):
  module, params, processor, vocab_high, out = tiny_export
  sources = _sources(12, vocab_high)
  rows, agree, _ = _compare_greedy(module, params, processor, vocab_high, out, sources, MAX_DECODE)
  assert agree == rows


def test_first_step_logits_and_token_log_probs_agree(tiny_export):
  module, params, processor, vocab_high, out = tiny_export
  sources = _sources(6, vocab_high, seed=1)
  tokens = jnp.asarray(_source_array(sources))
  translator = export.ctranslate2_translator(out, intra_threads=1)
  pieces = [[processor.id_to_piece(i) for i in ids] for ids in sources]

  # First decoder step from the start token (PAD): CTranslate2's raw logits include the bias
  # that keeps PAD, UNK and [MASK] out.
  first = translator.translate_batch(
      pieces, return_logits_vocab=True, **export.greedy_options(out, max_decoding_length=1)
  )
  theirs = np.stack([np.asarray(r.logits[0][0]) for r in first])
  start = jnp.zeros((len(sources), 1), jnp.int32)
  ours = np.asarray(module.apply({"params": params}, tokens, start, start + 1))[:, 0, :vocab_high]
  bias = np.zeros(vocab_high, np.float32)
  bias[list(export.NEVER_EMITTED)] = export.DISALLOWED_BIAS
  np.testing.assert_allclose(theirs, ours + bias, rtol=1e-4, atol=1e-3)

  # Teacher-forced log-probs (restricted to the allowed ids, as ar_decoding's) of random targets.
  rng = np.random.default_rng(2)
  targets = [rng.integers(FIRST_ORDINARY_ID, vocab_high, size=8).tolist() for _ in sources]
  scored = translator.score_batch(pieces, [[processor.id_to_piece(i) for i in t] for t in targets])
  with_eos = np.asarray([t + [EOS_ID] for t in targets], np.int32)
  logits = np.asarray(
      module.apply(
          {"params": params},
          tokens,
          jnp.asarray(np.pad(with_eos[:, :-1], ((0, 0), (1, 0)))),
          jnp.asarray(with_eos),
      ),
      np.float64,
  )
  allowed = ar_decoding.allowed_token_mask(module.config.vocab_size, vocab_high)
  logits = np.where(allowed, logits, -np.inf)
  log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  expected = np.take_along_axis(log_probs, with_eos[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose([r.log_probs for r in scored], expected, rtol=1e-4, atol=1e-4)


def test_model_directory_holds_spec_vocabulary_and_options(tiny_export):
  module, _, processor, vocab_high, out = tiny_export
  names = set(os.listdir(out))
  assert {"model.bin", "config.json", export.VOCAB_FILE, export.SIDECAR_FILE} <= names
  assert not [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".ct2")]  # no temp
  options = export.greedy_options(out)
  assert options["beam_size"] == 1 and options["min_decoding_length"] == 0
  assert options["max_decoding_length"] == module.config.max_target_length
  assert options["max_input_length"] == module.config.max_input_length
  assert export.read_sidecar(out)["vocab_size"] == vocab_high == processor.get_piece_size()


# Written for this test (not from any corpus): real German, so that the committed model's
# translations end in EOS, as real ones do.
GERMAN = (
    "Ein Mann fährt mit dem Fahrrad die Straße entlang.",
    "Zwei Hunde spielen im Schnee.",
    "Eine Frau sitzt auf einer Bank und liest ein Buch.",
    "Kinder spielen auf dem Spielplatz.",
    "Ein Junge springt in einen See.",
    "Eine Gruppe von Menschen steht vor einem Gebäude.",
    "Ein Mann in einem roten Hemd klettert an einer Felswand.",
    "Ein kleines Mädchen isst ein Eis.",
)


@pytest.fixture(scope="module")
def real_export(tmp_path_factory):
  """(module, params, meta, processor, CTranslate2 dir) of benchmarks/checkpoints/ar_dropout0."""
  module, params, meta = checkpoints.load_checkpoint(REAL_AR)
  processor = checkpoints.load_vocabulary(meta["vocab_model"], meta, module.config.vocab_size)
  out = export.export_ctranslate2(REAL_AR, str(tmp_path_factory.mktemp("real") / "ct2"))
  return module, params, meta, processor, out


def _compare_real(real_export, lines):
  module, params, meta, processor, out = real_export
  sources = [processor.encode(line) for line in lines]
  return _compare_greedy(
      module, params, processor, meta["vocab_high"], out, sources, module.config.max_target_length
  )


def test_real_checkpoint_agrees_on_german_sentences(real_export):
  rows, agree, ended = _compare_real(real_export, GERMAN)
  assert ended == rows  # EOS stops CTranslate2 where it stops ar_decoding
  assert agree == rows


def test_real_checkpoint_agrees_on_real_dev_sentences(request):
  data = find_data_dir()
  source = None if data is None else os.path.join(data, "de-en", "dev-multi30k.de")
  if source is None or not os.path.isfile(source):
    pytest.skip("real data absent: no de-en/dev-multi30k.de under $PADIR_DATA_DIR or ../shared")
  with open(source, encoding="utf-8") as f:
    lines = [line.strip() for line in f.read().splitlines() if line.strip()][:20]
  rows, agree, ended = _compare_real(request.getfixturevalue("real_export"), lines)
  print(f"real checkpoint: {agree}/{rows} sentences agree exactly ({ended} ended in EOS)")
  assert ended > 0
  assert agree == rows, f"only {agree}/{rows} real sentences agree exactly"


# -------------------------------------------------------------------------------------------------
# The command's refusals: exit status 2, one line naming the flag, nothing written.
def _fails(capsys, argv, *expected):
  with pytest.raises(SystemExit) as exit_info:
    export.main(argv)
  assert exit_info.value.code == 2
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last.startswith("python -m padir_t5x.export: error: argument "), last
  for text in expected:
    assert text in last, last
  return last


def test_refuses_a_padir_checkpoint(tmp_path, capsys):
  out = tmp_path / "ct2"
  _fails(
      capsys,
      ["--ctranslate2", "--checkpoint", REAL_PADIR, "--out", str(out)],
      "--checkpoint",
      "is a PaDIR checkpoint: only AR checkpoints export to CTranslate2",
  )
  assert list(tmp_path.iterdir()) == []


def test_refuses_a_missing_checkpoint(tmp_path, capsys):
  _fails(
      capsys,
      ["--ctranslate2", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
      "--checkpoint",
      "not found",
  )
  assert list(tmp_path.iterdir()) == []


def test_refuses_an_activation_ctranslate2_lacks(tmp_path, capsys, tiny_vocab_path):
  config = _tiny_config(256, mlp_activation="elu", num_encoder_layers=1, num_decoder_layers=1)
  params = _random_params(network.Transformer(config), seed=0)
  checkpoint = str(tmp_path / "ar")
  checkpoints.save_checkpoint(checkpoint, params, config, "ar", tiny_vocab_path, 200)
  _fails(
      capsys,
      ["--ctranslate2", "--checkpoint", checkpoint, "--out", str(tmp_path / "o")],
      "--checkpoint",
      "mlp_activation 'elu'",
  )
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ar"]


def test_refuses_a_non_empty_out_unless_forced(tmp_path, capsys):
  out = tmp_path / "ct2"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  argv = ["--ctranslate2", "--checkpoint", REAL_AR, "--out", str(out)]
  _fails(capsys, argv, "--out", "not empty", "--force")
  assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
  assert export.main(argv + ["--force"]) == 0
  assert "model.bin" in os.listdir(out) and "keep.txt" not in os.listdir(out)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2"]  # no temporary directory left


def test_writes_into_an_empty_out(tmp_path):
  out = tmp_path / "ct2"
  out.mkdir()
  assert export.main(["--ctranslate2", "--checkpoint", REAL_AR, "--out", str(out)]) == 0
  assert "model.bin" in os.listdir(out)


def test_needs_a_format_flag(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    export.main(["--checkpoint", REAL_AR, "--out", str(tmp_path / "o")])
  assert exit_info.value.code == 2
  assert "--ctranslate2" in capsys.readouterr().err.strip().splitlines()[-1]


def test_without_ctranslate2_says_how_to_install(tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import raises ImportError
  _fails(
      capsys,
      ["--ctranslate2", "--checkpoint", REAL_AR, "--out", str(tmp_path / "o")],
      "--ctranslate2",
      "pip install 'padir-t5x[ctranslate2]'",
  )
  assert list(tmp_path.iterdir()) == []


def test_config_fields_an_ar_network_may_hold_are_exportable():
  """Every AR field either maps or is checked: positional_attention is PaDIR-only (AR decoder
  layers have no such sublayer), and the parameter check catches any leaf left unmapped."""
  meta = {"kind": "ar", "transformer": dataclasses.asdict(_tiny_config(256))}
  export.check_exportable(meta, "x")
  with pytest.raises(export.ExportError, match="num_decoder_layers"):
    export.check_exportable({"kind": "ar", "transformer": {"num_decoder_layers": 0}}, "x")
