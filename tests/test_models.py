"""PadirModel (the t5x adapter) and the AR twin on a tiny network. Needs t5x (skipped without).

Run in an environment with t5x installed (t5x is not on PyPI; see setup.cfg's 't5x' extra).
"""

import functools

import pytest

t5x = pytest.importorskip("t5x")

import clu.metrics as clu_metrics  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import seqio  # noqa: E402
from flax import traverse_util as flax_traverse_util  # noqa: E402
from t5x import adafactor  # noqa: E402
from t5x import decoding as t5x_decoding  # noqa: E402
from t5x import models as t5x_models  # noqa: E402

from padir_t5x import EOS_ID, FIRST_ORDINARY_ID, MASK_ID, PAD_ID  # noqa: E402
from padir_t5x.decoders import decoding  # noqa: E402
from padir_t5x import models  # noqa: E402
from padir_t5x.core import losses, network, network_config  # noqa: E402

VOCAB = 60  # real vocabulary; the embedding table has 64 rows
MAX_LEN = 16
# PassThroughVocabulary ids have no words: stutter is by piece.
DECODING = {"length_beam": 2, "max_passes": 3, "stutter_unit": "piece"}


def _module(**overrides):
  return network.Transformer(
      network_config.tiny_config(
          vocab_size=64,
          max_input_length=MAX_LEN,
          max_target_length=MAX_LEN,
          dropout_rate=0.1,
          **overrides,
      )
  )


def _model(**kwargs):
  kwargs.setdefault("decoding_config", DECODING)
  return models.PadirModel(
      _module(),
      seqio.PassThroughVocabulary(VOCAB),
      seqio.PassThroughVocabulary(VOCAB),
      adafactor.Adafactor(),
      **kwargs,
  )


def _batch():
  targets = np.array(
      [[10, 11, 12, 1, 0, 0, 0, 0], [20, 21, 22, 23, 24, 1, 0, 0], [30, 1, 0, 0, 0, 0, 0, 0]],
      np.int32,
  )
  inputs = np.array(
      [
          [5, 6, 7, 8, 1, 0, 0, 0, 0, 0],
          [9, 8, 7, 6, 5, 4, 1, 0, 0, 0],
          [40, 41, 1, 0, 0, 0, 0, 0, 0, 0],
      ],
      np.int32,
  )
  return {
      "encoder_input_tokens": jnp.asarray(inputs),
      "decoder_target_tokens": jnp.asarray(targets),
      "decoder_input_tokens": jnp.asarray(np.pad(targets[:, :-1], ((0, 0), (1, 0)))),
      "decoder_loss_weights": jnp.asarray((targets > 0).astype(np.int32)),
  }


@pytest.fixture(scope="module")
def model():
  return _model()


@pytest.fixture(scope="module")
def params(model):
  # t5x's default input shapes (no types given: t5x would pass float32, the model uses int32).
  variables = model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 8)}
  )
  return variables["params"]


def test_get_initial_variables_has_length_classifier_and_axes(model):
  variables = model.get_initial_variables(
      jax.random.PRNGKey(0),
      {"encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4)},
      {"encoder_input_tokens": jnp.int32, "decoder_input_tokens": jnp.int32},
  )
  assert set(variables) == {"params", "params_axes"}
  assert "length_predictor" in variables["params"]
  assert variables["params"]["length_predictor"]["logits"]["kernel"].shape[-1] == MAX_LEN


def test_vocab_high_comes_from_output_vocabulary(model):
  assert model.vocab_high == VOCAB
  assert model.loss_config.vocab_high == VOCAB
  assert model.decoding_config.vocab_high == VOCAB
  assert model.decoding_config.length_beam == 2


def test_vocabulary_larger_than_embedding_table_raises():
  model = models.PadirModel(
      _module(),
      seqio.PassThroughVocabulary(100),
      seqio.PassThroughVocabulary(100),
      adafactor.Adafactor(),
  )
  with pytest.raises(ValueError, match="embedding"):
    _ = model.vocab_high


def test_constructor_validates_arguments():
  with pytest.raises(ValueError, match="corruption"):
    _model(loss_config={"corruption": "shuffle"})
  with pytest.raises(ValueError, match="num_stages"):
    _model(loss_config={"num_stages": 0})
  with pytest.raises(ValueError, match="unknown DecodingConfig"):
    _model(decoding_config={"beam": 3})
  with pytest.raises(ValueError, match="decoder_mode='padir'"):
    models.PadirModel(
        network.Transformer(network_config.tiny_config(decoder_mode="autoregressive")),
        seqio.PassThroughVocabulary(VOCAB),
        seqio.PassThroughVocabulary(VOCAB),
        adafactor.Adafactor(),
    )


def test_loss_fn_is_the_core_multi_stage_loss(model, params):
  batch = _batch()
  rng = jax.random.PRNGKey(3)
  loss, metrics = jax.jit(model.loss_fn)(params, batch, rng)
  expected, core = losses.multi_stage_loss(
      model.module, params, batch, rng, model.loss_config, enable_dropout=True
  )
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  for name in ("loss", "z_loss", "length_loss", "stage1/loss", "stage2/loss"):
    assert isinstance(metrics[name], t5x.metrics.AveragePerStep), name
  for name in ("accuracy", "length_accuracy", "stage1/accuracy", "stage2/accuracy"):
    assert isinstance(metrics[name], clu_metrics.Average), name
  np.testing.assert_allclose(metrics["loss"].compute(), expected, rtol=1e-5)
  np.testing.assert_allclose(metrics["stage1/loss"].compute(), core["stage1_loss"], rtol=1e-5)
  np.testing.assert_allclose(
      metrics["stage2/accuracy"].compute(), core["stage2_accuracy"], rtol=1e-5
  )
  np.testing.assert_allclose(metrics["accuracy"].compute(), core["stage2_accuracy"], rtol=1e-5)
  np.testing.assert_allclose(
      metrics["length_accuracy"].compute(), core["length_accuracy"], rtol=1e-5
  )


def test_loss_fn_runs_the_training_options_through_the_core_loss(params):
  # Same params as `model` (same module, vocabularies); only the loss config differs.
  options = {
      "unmasking_rate_mode": "glancing",
      "glancing_ratio": 0.5,
      "corruption_mix": (0.1, 0.1, 0.8),
      "loss_positions": "corrupted",
  }
  model = _model(loss_config=options)
  batch = _batch()
  rng = jax.random.PRNGKey(3)
  loss, metrics = jax.jit(model.loss_fn)(params, batch, rng)
  expected, core = losses.multi_stage_loss(model.module, params, batch, rng, model.loss_config)
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  names = losses.option_metric_names(model.loss_config)
  assert {"unmasking_rate", "glancing_revealed_fraction", "stage2_loss_tokens"} <= set(names)
  for name in names:
    assert isinstance(metrics[name], t5x.metrics.AveragePerStep), name
    np.testing.assert_allclose(metrics[name].compute(), core[name], rtol=1e-5)
  with pytest.raises(ValueError, match="glancing_anneal_steps"):
    _model(loss_config={**options, "glancing_ratio_end": 0.3, "glancing_anneal_steps": 100})


def test_loss_fn_draws_corruption_and_dropout_from_the_rng(model, params):
  batch = _batch()
  a, _ = model.loss_fn(params, batch, jax.random.PRNGKey(1))
  b, _ = model.loss_fn(params, batch, jax.random.PRNGKey(1))
  c, _ = model.loss_fn(params, batch, jax.random.PRNGKey(2))
  assert float(a) == float(b)
  assert float(a) != float(c)


def test_loss_fn_gradient_is_finite(model, params):
  grads = jax.grad(lambda p: model.loss_fn(p, _batch(), jax.random.PRNGKey(0))[0])(params)
  leaves = jax.tree_util.tree_leaves(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


def test_eval_fn_is_deterministic_without_dropout(model, params):
  batch = _batch()
  a, metrics = model.eval_fn(params, batch)
  b, _ = model.eval_fn(params, batch)
  expected, _ = losses.multi_stage_loss(
      model.module, params, batch, jax.random.PRNGKey(0), model.loss_config, enable_dropout=False
  )
  assert float(a) == float(b)
  np.testing.assert_allclose(a, expected, rtol=1e-5)
  assert "stage2/accuracy" in metrics


@pytest.mark.parametrize(
    "extra", ["encoder_segment_ids", "decoder_segment_ids", "decoder_positions"]
)
def test_packed_batches_raise(model, params, extra):
  batch = dict(_batch())
  batch[extra] = jnp.ones_like(batch["decoder_target_tokens"])
  with pytest.raises(ValueError, match="packed"):
    model.loss_fn(params, batch, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="packed"):
    model.predict_batch_with_aux(params, batch)
  with pytest.raises(ValueError, match="packed"):
    model.score_batch(params, batch)


def test_missing_features_raise(model, params):
  batch = dict(_batch())
  del batch["decoder_target_tokens"]
  with pytest.raises(ValueError, match="decoder_target_tokens"):
    model.loss_fn(params, batch, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="encoder_input_tokens"):
    model.predict_batch_with_aux(params, {"decoder_input_tokens": _batch()["decoder_input_tokens"]})


def test_predict_batch_returns_the_best_hypothesis(model, params):
  batch = _batch()
  rng = jax.random.PRNGKey(5)
  tokens, aux = model.predict_batch_with_aux(params, batch, rng=rng)
  assert tokens.shape == batch["decoder_input_tokens"].shape
  assert set(aux) == {"scores", "lengths", "passes"}
  assert aux["scores"].shape == aux["lengths"].shape == aux["passes"].shape == (3,)
  expected = decoding.decode_with_network(
      model.module, params, batch["encoder_input_tokens"], rng, model.decoding_config, 8
  )
  np.testing.assert_array_equal(tokens, expected.sequences[:, -1])
  np.testing.assert_array_equal(aux["scores"], expected.scores[:, -1])
  # Layout: ordinary tokens, one EOS, PAD after it.
  for row in np.asarray(tokens):
    eos = int(np.argmax(row == EOS_ID))
    assert row[eos] == EOS_ID
    assert np.all(row[:eos] >= FIRST_ORDINARY_ID) and np.all(row[:eos] < VOCAB)
    assert np.all(row[eos + 1 :] == PAD_ID)
  # predict_batch (t5x's entry point) gives the same tokens.
  np.testing.assert_array_equal(model.predict_batch(params, batch, rng), tokens)


def test_predict_without_rng_is_deterministic(model, params):
  a, _ = model.predict_batch_with_aux(params, _batch())
  b, _ = model.predict_batch_with_aux(params, _batch())
  np.testing.assert_array_equal(a, b)


def test_num_decodes_is_the_length_beam_and_return_all_decodes(model, params):
  batch = _batch()
  tokens, aux = model.predict_batch_with_aux(
      params, batch, rng=jax.random.PRNGKey(1), num_decodes=3, return_all_decodes=True
  )
  assert tokens.shape == (3, 3, 8)
  assert aux["scores"].shape == aux["lengths"].shape == (3, 3)
  scores = np.asarray(aux["scores"])
  assert np.all(np.diff(scores, axis=1) >= 0)  # best last, as t5x
  # Three different length candidates per example.
  assert all(len(set(row)) == 3 for row in np.asarray(aux["lengths"]))
  best, best_aux = model.predict_batch_with_aux(
      params, batch, rng=jax.random.PRNGKey(1), num_decodes=3
  )
  np.testing.assert_array_equal(best, tokens[:, -1])
  np.testing.assert_array_equal(best_aux["scores"], scores[:, -1])


def test_default_num_decodes_must_agree_with_the_length_beam():
  # t5x's default (1) and the length beam itself are accepted; anything else is a second,
  # contradicting source of the length beam.
  for num_decodes in (1, DECODING["length_beam"]):
    _model(default_decoder_params=t5x_models.DecoderParams(num_decodes=num_decodes))
  with pytest.raises(ValueError, match="num_decodes=3 contradicts"):
    _model(default_decoder_params=t5x_models.DecoderParams(num_decodes=3))


def test_num_decodes_counts_every_candidate(model):
  # With 2 initialisations per length, 4 decodes are a length beam of 2.
  config = model.resolve_decoding_config({"inits_per_length": 2}, num_decodes=4)
  assert (config.length_beam, config.num_candidates) == (2, 4)
  with pytest.raises(ValueError, match="num_decodes=3 is not a multiple of the 2 candidates"):
    model.resolve_decoding_config({"inits_per_length": 2}, num_decodes=3)


def test_decode_fn_is_injectable(params):
  calls = []

  def decode_fn(module, params, encoder_input_tokens, rng, config, max_decode_length):
    calls.append((config.length_beam, max_decode_length))
    return decoding.decode_with_network(
        module, params, encoder_input_tokens, rng, config, max_decode_length
    )

  model = _model(decode_fn=decode_fn)
  tokens, _ = model.predict_batch_with_aux(params, _batch(), num_decodes=3)
  assert calls == [(3, 8)]
  expected, _ = _model().predict_batch_with_aux(params, _batch(), num_decodes=3)
  np.testing.assert_array_equal(tokens, expected)


def test_decoder_params_override_decoding_config(model, params):
  batch = _batch()
  _, aux = model.predict_batch_with_aux(params, batch, decoder_params={"max_passes": 1})
  np.testing.assert_array_equal(aux["passes"], 1)
  tokens, aux = model.predict_batch_with_aux(
      params, batch, return_all_decodes=True, decoder_params={"length_beam": 4, "init": "mask"}
  )
  assert tokens.shape == (3, 4, 8)
  config = model.resolve_decoding_config({"max_passes": 10, "length_beam": 3, "dedup": "none"})
  assert (config.max_passes, config.length_beam, config.dedup) == (10, 3, "none")
  assert config.vocab_high == VOCAB
  # The model's defaults are untouched by per-call overrides.
  assert model.decoding_config.max_passes == DECODING["max_passes"]
  with pytest.raises(ValueError, match="unknown decoder_params"):
    model.predict_batch_with_aux(params, batch, decoder_params={"beam_size": 2})
  with pytest.raises(ValueError, match="num_decodes"):
    model.predict_batch_with_aux(params, batch, num_decodes=2, decoder_params={"length_beam": 3})
  with pytest.raises(ValueError, match="decode_rng"):
    model.predict_batch_with_aux(
        params,
        batch,
        rng=jax.random.PRNGKey(0),
        decoder_params={"decode_rng": jax.random.PRNGKey(1)},
    )
  with pytest.raises(ValueError, match="prompt_with_targets"):
    model.predict_batch_with_aux(params, batch, prompt_with_targets=True)


def test_decode_rng_from_decoder_params_equals_rng_argument(model, params):
  batch = _batch()
  a, _ = model.predict_batch_with_aux(params, batch, rng=jax.random.PRNGKey(9))
  b, _ = model.predict_batch_with_aux(
      params, batch, decoder_params={"decode_rng": jax.random.PRNGKey(9)}
  )
  np.testing.assert_array_equal(a, b)


def test_predict_pads_past_the_network_max_target_length(model, params):
  batch = dict(_batch())
  batch["decoder_input_tokens"] = jnp.zeros((3, MAX_LEN + 4), jnp.int32)
  tokens, _ = model.predict_batch_with_aux(params, batch)
  assert tokens.shape == (3, MAX_LEN + 4)
  assert np.all(np.asarray(tokens)[:, MAX_LEN:] == PAD_ID)


def test_predict_batch_with_aux_under_jit(model, params):
  fn = jax.jit(
      functools.partial(model.predict_batch_with_aux, num_decodes=2, return_all_decodes=True)
  )
  tokens, aux = fn(params, _batch(), jax.random.PRNGKey(0))
  eager, _ = model.predict_batch_with_aux(
      params, _batch(), rng=jax.random.PRNGKey(0), num_decodes=2, return_all_decodes=True
  )
  np.testing.assert_array_equal(tokens, eager)


def _manual_scores(model, params, batch, decoder_inputs):
  module_cls = type(model.module)
  variables = {"params": params}
  inputs, targets = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
  encoded = model.module.apply(variables, inputs, enable_dropout=False, method=module_cls.encode)
  length_logits = model.module.apply(variables, encoded, inputs, method=module_cls.predict_length)
  logits = model.module.apply(
      variables,
      encoded,
      inputs,
      decoder_inputs,
      targets,
      enable_dropout=False,
      method=module_cls.decode,
  )
  length_lp = np.asarray(jax.nn.log_softmax(length_logits, axis=-1))
  lp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  scores = []
  for i, row in enumerate(np.asarray(targets)):
    length = int(np.sum(row > 0))
    score = length_lp[i, length - 1]
    score += sum(lp[i, j, row[j]] for j in range(length - 1))  # content only, EOS excluded
    scores.append(score)
  return np.array(scores)


@pytest.mark.parametrize("mode", ["mask", "random"])
def test_score_batch_is_length_plus_token_log_probs(params, mode):
  model = _model(score_decoder_input=mode)
  batch = _batch()
  decoder_inputs = np.asarray(model.score_decoder_inputs(batch["decoder_target_tokens"]))
  targets = np.asarray(batch["decoder_target_tokens"])
  content = (targets > 0) & (targets != EOS_ID)
  np.testing.assert_array_equal(decoder_inputs[targets == EOS_ID], EOS_ID)
  np.testing.assert_array_equal(decoder_inputs[targets == 0], PAD_ID)
  if mode == "mask":
    assert np.all(decoder_inputs[content] == MASK_ID)
  else:
    assert np.all(
        (decoder_inputs[content] >= FIRST_ORDINARY_ID) & (decoder_inputs[content] < VOCAB)
    )
    # Independent of the target content: one fixed row of tokens shared by every example.
    np.testing.assert_array_equal(decoder_inputs[0, :3], decoder_inputs[1, :3])
    assert decoder_inputs[2, 0] == decoder_inputs[0, 0]
  scores = model.score_batch(params, batch)
  np.testing.assert_allclose(
      scores, _manual_scores(model, params, batch, decoder_inputs), rtol=1e-4, atol=1e-4
  )
  assert np.all(np.asarray(scores) < 0)
  scores2, inter = model.score_batch(params, batch, return_intermediates=True)
  np.testing.assert_allclose(scores2, scores, rtol=1e-6)
  recombined = (
      np.sum(inter["decoder"]["token_scores"][0], axis=-1) + inter["decoder"]["length_scores"][0]
  )
  np.testing.assert_allclose(recombined, scores, rtol=1e-5, atol=1e-5)


def test_score_batch_does_not_depend_on_row_or_padding(params):
  """The documented property: an example's score depends on the example only."""
  model = _model(score_decoder_input="random")
  batch = _batch()
  scores = np.asarray(model.score_batch(params, batch))
  order = np.array([2, 0, 1])
  wider = {k: jnp.pad(v[order], ((0, 0), (0, 4))) for k, v in batch.items()}
  np.testing.assert_allclose(
      np.asarray(model.score_batch(params, wider)), scores[order], rtol=1e-4, atol=1e-4
  )


def test_score_batch_ranks_the_trained_target_first():
  """After a few steps on one pair, its score beats a corrupted version's."""
  model = _model(
      score_decoder_input="mask",
      loss_config={"corruption": "mask"},
      decoding_config={"init": "mask", "length_beam": 2, "stutter_unit": "piece"},
  )
  batch = {k: v[:1] for k, v in _batch().items()}
  params = model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 10), "decoder_input_tokens": (1, 8)}
  )["params"]
  import optax

  optimizer = optax.adam(3e-3)
  state = optimizer.init(params)

  @jax.jit
  def step(params, state, rng):
    grads = jax.grad(lambda p: model.loss_fn(p, batch, rng)[0])(params)
    updates, state = optimizer.update(grads, state)
    return optax.apply_updates(params, updates), state

  for i in range(60):
    params, state = step(params, state, jax.random.PRNGKey(i))
  wrong = dict(batch)
  wrong["decoder_target_tokens"] = jnp.array([[10, 13, 12, 1, 0, 0, 0, 0]], jnp.int32)
  assert float(model.score_batch(params, batch)[0]) > float(model.score_batch(params, wrong)[0])
  tokens, _ = model.predict_batch_with_aux(params, batch)
  np.testing.assert_array_equal(tokens, batch["decoder_target_tokens"])


def test_adafactor_factors_every_large_matrix_without_fallback(caplog):
  """The gin files' Adafactor (no logical rules) factors Base as intended, silently.

  Every parameter of the network has rank <= 2, for which t5x ignores logical factor rules
  (logging a fallback per parameter); its heuristic factors a matrix whose two dimensions are
  both >= 128 and keeps a full second moment for anything smaller.
  """
  module = network.Transformer(network_config.base_config())
  shapes = {"encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4)}
  model = models.PadirModel(
      module,
      seqio.PassThroughVocabulary(VOCAB),
      seqio.PassThroughVocabulary(VOCAB),
      adafactor.Adafactor(decay_rate=0.8, step_offset=0, logical_factor_rules=None),
  )
  variables = jax.eval_shape(lambda: model.get_initial_variables(jax.random.PRNGKey(0), shapes))
  optimizer = model.optimizer_def
  optimizer.set_param_axes(variables["params_axes"])  # as t5x's train state does
  with caplog.at_level("WARNING"):
    state = jax.eval_shape(optimizer.init_state, variables["params"])
  assert "falls back to heuristics" not in caplog.text
  params = flax_traverse_util.flatten_dict(variables["params"], sep="/")
  states = flax_traverse_util.flatten_dict(
      state.param_states,
      sep="/",
      is_leaf=lambda _, x: isinstance(x, adafactor._AdafactorParamState),
  )
  factored = 0
  for path, param in params.items():
    assert param.ndim <= 2, path
    if param.ndim == 2 and min(param.shape) >= 128:
      factored += 1
      assert states[path].v.shape == (1,), path
      assert states[path].v_row.size + states[path].v_col.size == sum(param.shape)
    else:
      assert states[path].v.shape == param.shape, path
  # Token embedding, 2 position tables, 2 length-predictor kernels; per encoder layer 4
  # attention + 2 MLP kernels, per decoder layer 3 x 4 attention (self, positional, cross) + 2.
  assert factored == 1 + 2 + 2 + 6 * 6 + 6 * 14


def test_ar_twin_with_t5x_encoder_decoder_model():
  """The AR twin needs no adapter: t5x's own model trains and beam-searches it."""
  module = network.Transformer(
      network_config.tiny_config(
          vocab_size=64,
          max_input_length=MAX_LEN,
          max_target_length=MAX_LEN,
          decoder_mode="autoregressive",
      )
  )
  model = t5x_models.EncoderDecoderModel(
      module,
      seqio.PassThroughVocabulary(VOCAB),
      seqio.PassThroughVocabulary(VOCAB),
      adafactor.Adafactor(),
      decode_fn=t5x_decoding.beam_search,
  )
  params = model.get_initial_variables(
      jax.random.PRNGKey(0),
      {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 8)},
      {"encoder_input_tokens": jnp.int32, "decoder_input_tokens": jnp.int32},
  )["params"]
  batch = _batch()
  loss, metrics = model.loss_fn(params, batch, jax.random.PRNGKey(0))
  assert np.isfinite(float(loss)) and "accuracy" in metrics
  tokens, aux = model.predict_batch_with_aux(params, batch, num_decodes=2, return_all_decodes=True)
  assert tokens.shape == (3, 2, 8) and aux["scores"].shape == (3, 2)
  assert model.score_batch(params, batch).shape == (3,)
