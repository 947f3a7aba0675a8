"""Tests of padir_t5x.core.network: sizes, masks, (non-)causality, the AR cache, partitioning axes.

Tiny shapes, mostly un-jitted applies (a jit compile per shape would cost more than it saves).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from padir_t5x.core import layers
from padir_t5x.core import layout
from padir_t5x.core import network
from padir_t5x.core import network_config

TINY = network_config.tiny_config(dropout_rate=0.1)
AR_TINY = dataclasses.replace(TINY, decoder_mode="autoregressive")
BATCH, IN_LEN, OUT_LEN = 2, 7, 6

# Row 0 has 2 padded encoder and 2 padded target positions; row 1 is full.
ENC = jnp.array([[5, 6, 7, 8, 1, 0, 0], [9, 10, 11, 12, 13, 14, 1]], jnp.int32)
TGT = jnp.array([[20, 21, 22, 1, 0, 0], [23, 24, 25, 26, 27, 1]], jnp.int32)
# PaDIR decoder input: a corrupted target (3 is [MASK]); padded positions hold junk on purpose.
DEC_IN = jnp.array([[3, 21, 3, 1, 40, 41], [23, 3, 3, 26, 3, 1]], jnp.int32)
# AR decoder input: targets shifted right, BOS = 0.
AR_IN = jnp.concatenate([jnp.zeros((BATCH, 1), jnp.int32), TGT[:, :-1]], axis=1)


def _init(config, enc=ENC, dec=TGT):
  return network.Transformer(config).init(
      jax.random.PRNGKey(0), enc, dec, dec, enable_dropout=False
  )


def _flat(tree):
  return traverse_util.flatten_dict(tree, is_leaf=lambda _, x: not isinstance(x, dict))


def _num_params(params):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


@pytest.fixture(scope="module")
def padir_vars():
  return _init(TINY)


@pytest.fixture(scope="module")
def ar_vars():
  return _init(AR_TINY, dec=AR_IN)


def _padir_apply(variables, enc, dec_in, tgt, **kwargs):
  return network.Transformer(TINY).apply(
      variables, enc, dec_in, tgt, enable_dropout=False, return_length_logits=True, **kwargs
  )


def _ar_apply(variables, dec_in, tgt=TGT):
  return network.Transformer(AR_TINY).apply(variables, ENC, dec_in, tgt, enable_dropout=False)


def test_base_parameter_count():
  module = network.Transformer(network_config.BASE_CONFIG)
  tokens = jnp.ones((1, 8), jnp.int32)
  shapes = jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), tokens, tokens, tokens, enable_dropout=False)
  )
  count = _num_params(shapes["params"])
  print(f"Base PaDIR parameters: {count:,}")
  assert 60_000_000 <= count <= 75_000_000, count
  # The tied embedding (vocab x embed) is the only vocabulary-sized parameter.
  vocab_sized = [k for k, v in _flat(shapes["params"]).items() if 32128 in v.shape]
  assert vocab_sized == [("token_embedder", "embedding")]


def test_configs_and_presets():
  assert network_config.tiny_config(vocab_size=32).vocab_size == 32
  assert network_config.base_config(dtype="bfloat16").activation_dtype == jnp.bfloat16
  assert (
      network_config.BASE_CONFIG.num_encoder_layers
      == network_config.BASE_CONFIG.num_decoder_layers
      == 6
  )
  with pytest.raises(ValueError, match="decoder_mode"):
    network_config.tiny_config(decoder_mode="ctc")
  with pytest.raises(ValueError, match="dtype"):
    network_config.tiny_config(dtype="float16")


def test_padir_forward_shapes(padir_vars):
  logits, length_logits = _padir_apply(padir_vars, ENC, DEC_IN, TGT)
  assert logits.shape == (BATCH, OUT_LEN, TINY.vocab_size) and logits.dtype == jnp.float32
  assert length_logits.shape == (BATCH, TINY.max_target_length)
  assert length_logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits)) and np.all(np.isfinite(length_logits))
  # Methods used by the losses and decoding agree with __call__.
  module = network.Transformer(TINY)
  encoded = module.apply(padir_vars, ENC, enable_dropout=False, method=module.encode)
  assert encoded.shape == (BATCH, IN_LEN, TINY.emb_dim)
  np.testing.assert_allclose(
      module.apply(padir_vars, encoded, ENC, method=module.predict_length),
      length_logits,
      rtol=1e-6,
      atol=1e-6,
  )
  np.testing.assert_allclose(
      module.apply(
          padir_vars, encoded, ENC, DEC_IN, TGT, enable_dropout=False, method=module.decode
      ),
      logits,
      rtol=1e-6,
      atol=1e-6,
  )


def test_autoregressive_forward_shapes(ar_vars):
  logits = _ar_apply(ar_vars, AR_IN)
  assert logits.shape == (BATCH, OUT_LEN, TINY.vocab_size) and logits.dtype == jnp.float32
  names = {"/".join(k) for k in _flat(ar_vars["params"])}
  assert not any("length_predictor" in n or "positional_attention" in n for n in names)


def test_bfloat16_activations_keep_float32_logits():
  module = network.Transformer(network_config.tiny_config(dtype="bfloat16"))
  out = jax.eval_shape(
      lambda: module.init_with_output(
          jax.random.PRNGKey(0), ENC, DEC_IN, TGT, enable_dropout=False, return_length_logits=True
      )[0]
  )
  assert out[0].dtype == jnp.float32 and out[1].dtype == jnp.float32


def test_padded_decoder_position_does_not_leak(padir_vars):
  logits, length_logits = _padir_apply(padir_vars, ENC, DEC_IN, TGT)
  changed_in = DEC_IN.at[0, 4].set(77)  # row 0, position 4 is padding (TGT == 0)
  new_logits, new_length = _padir_apply(padir_vars, ENC, changed_in, TGT)
  np.testing.assert_allclose(new_logits[0, :4], logits[0, :4], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new_logits[1], logits[1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new_length, length_logits, rtol=1e-6, atol=1e-6)
  # The changed token does reach its own (ignored) position: the comparison above is not vacuous.
  assert not np.allclose(new_logits[0, 4], logits[0, 4], atol=1e-3)

  # Marking a valid position as padding, by contrast, must change the other positions.
  masked_tgt = TGT.at[0, 2].set(0)
  masked_logits, _ = _padir_apply(padir_vars, ENC, DEC_IN, masked_tgt)
  assert not np.allclose(masked_logits[0, 0], logits[0, 0], atol=1e-4)


def test_padded_encoder_positions_do_not_leak(padir_vars):
  module = network.Transformer(TINY)
  encoded = module.apply(padir_vars, ENC, enable_dropout=False, method=module.encode)
  # Any change of the encoder states at padded source positions (row 0, positions 5 and 6) is
  # invisible to the decoder's cross-attention and to the length classifier's pooling.
  junk = encoded.at[0, 5:].add(3.0 * jax.random.normal(jax.random.PRNGKey(1), (2, TINY.emb_dim)))
  decode = lambda e: module.apply(
      padir_vars, e, ENC, DEC_IN, TGT, enable_dropout=False, method=module.decode
  )
  predict = lambda e: module.apply(padir_vars, e, ENC, method=module.predict_length)
  # Compared at valid target positions: a padded target position has no valid key at all, so
  # its (ignored) query row is uniform over every source position.
  valid_target = np.asarray(TGT > 0)
  np.testing.assert_allclose(
      np.asarray(decode(junk))[valid_target],
      np.asarray(decode(encoded))[valid_target],
      rtol=1e-5,
      atol=1e-5,
  )
  np.testing.assert_allclose(predict(junk), predict(encoded), rtol=1e-5, atol=1e-5)
  # The same junk at a valid position does change both.
  junk_valid = encoded.at[0, 1].add(3.0)
  assert not np.allclose(decode(junk_valid)[0], decode(encoded)[0], atol=1e-4)
  assert not np.allclose(predict(junk_valid)[0], predict(encoded)[0], atol=1e-4)

  # Encoder self-attention: more trailing padding leaves every valid position's output unchanged.
  longer = jnp.pad(ENC, ((0, 0), (0, 3)))
  encoded_longer = module.apply(padir_vars, longer, enable_dropout=False, method=module.encode)
  valid = np.asarray(ENC > 0)
  np.testing.assert_allclose(
      np.asarray(encoded_longer[:, :IN_LEN])[valid],
      np.asarray(encoded)[valid],
      rtol=1e-5,
      atol=1e-5,
  )


def test_padir_decoder_is_bidirectional(padir_vars):
  logits, _ = _padir_apply(padir_vars, ENC, DEC_IN, TGT)
  later = DEC_IN.at[1, 4].set(50)  # a later valid position of row 1
  new_logits, _ = _padir_apply(padir_vars, ENC, later, TGT)
  assert not np.allclose(new_logits[1, 0], logits[1, 0], atol=1e-4)


def test_autoregressive_decoder_is_causal(ar_vars):
  logits = _ar_apply(ar_vars, AR_IN)
  later = AR_IN.at[1, 4].set(50)
  new_logits = _ar_apply(ar_vars, later)
  np.testing.assert_allclose(new_logits[1, :4], logits[1, :4], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new_logits[0], logits[0], rtol=1e-5, atol=1e-5)
  assert not np.allclose(new_logits[1, 4], logits[1, 4], atol=1e-4)


def test_autoregressive_cache_matches_teacher_forcing(ar_vars):
  """t5x's EncoderDecoderModel protocol: _compute_kv_cache then _compute_logits_from_slice."""
  module = network.Transformer(AR_TINY)
  params = {"params": ar_vars["params"]}
  full = jnp.ones_like(TGT)  # no target padding: every step is compared
  expected = _ar_apply(ar_vars, AR_IN, tgt=full)

  _, init_vars = module.apply(
      params,
      encoder_input_tokens=jnp.ones_like(ENC),
      decoder_input_tokens=jnp.ones_like(AR_IN),
      decoder_target_tokens=jnp.ones_like(AR_IN),
      mutable=["cache"],
      decode=True,
      enable_dropout=False,
  )
  cache = init_vars["cache"]
  assert int(cache["decoder"]["position_embedder"]["position_embedder_index"]) == 0
  assert cache["decoder"]["layers_0"]["self_attention"]["cached_key"].shape == (
      BATCH,
      AR_TINY.num_heads,
      AR_TINY.head_dim,
      OUT_LEN,
  )

  encoded = module.apply(params, ENC, enable_dropout=False, method=module.encode)

  @jax.jit
  def step(cache, token):
    logits, new_vars = module.apply(
        {**params, "cache": cache},
        encoded,
        ENC,
        token,
        token,
        enable_dropout=False,
        decode=True,
        max_decode_length=OUT_LEN,
        mutable=["cache"],
        method=module.decode,
    )
    return logits[:, 0], new_vars["cache"]

  stepped = []
  for t in range(OUT_LEN):
    logits, cache = step(cache, AR_IN[:, t : t + 1])
    stepped.append(logits)
  np.testing.assert_allclose(jnp.stack(stepped, axis=1), expected, rtol=1e-4, atol=1e-4)
  assert int(cache["decoder"]["position_embedder"]["position_embedder_index"]) == OUT_LEN


def test_positional_attention_can_be_disabled():
  with_pa = network.Transformer(TINY)
  without_pa = network.Transformer(network_config.tiny_config(positional_attention=False))
  shapes = lambda m: jax.eval_shape(
      lambda: m.init(jax.random.PRNGKey(0), ENC, TGT, TGT, enable_dropout=False)
  )["params"]
  names_with = {"/".join(k) for k in _flat(shapes(with_pa))}
  names_without = {"/".join(k) for k in _flat(shapes(without_pa))}
  assert any("positional_attention" in n for n in names_with)
  assert not any("positional_attention" in n for n in names_without)
  assert names_without < names_with
  per_layer = 4 * TINY.emb_dim * TINY.num_heads * TINY.head_dim + 2 * TINY.emb_dim  # q,k,v,o + LN
  assert (
      _num_params(shapes(with_pa)) - _num_params(shapes(without_pa))
      == TINY.num_decoder_layers * per_layer
  )


def test_params_axes_and_activation_axes_use_known_names(monkeypatch, padir_vars, ar_vars):
  for variables in (padir_vars, ar_vars):
    params, axes = _flat(variables["params"]), _flat(variables["params_axes"])
    # t5x's convention: one '<param>_axes' entry per parameter, of the parameter's rank.
    assert {k[:-1] + (k[-1] + "_axes",) for k in params} == set(axes)
    for key, value in params.items():
      names = axes[key[:-1] + (key[-1] + "_axes",)].names
      assert len(names) == value.ndim, key
      assert set(names) <= set(network.LOGICAL_AXIS_NAMES), (key, names)
  assert axes[("token_embedder", "embedding_axes")].names == ("vocab", "embed")

  used = []

  def record(x, logical_axes, *args, **kwargs):
    used.append(tuple(logical_axes))
    assert len(logical_axes) == x.ndim, (logical_axes, x.shape)
    return x

  monkeypatch.setattr(network, "with_sharding_constraint", record)
  monkeypatch.setattr(layers, "with_sharding_constraint", record)
  _padir_apply(padir_vars, ENC, DEC_IN, TGT)
  _ar_apply(ar_vars, AR_IN)
  activation_names = {name for names in used for name in names}
  assert "length_classes" in activation_names and "heads" in activation_names
  assert activation_names <= set(network.LOGICAL_AXIS_NAMES)


def test_dropout_uses_the_dropout_rng(padir_vars):
  module = network.Transformer(TINY)
  # The encoder alone (residual, FFN and attention-probability dropout) keeps this test cheap.
  run = lambda seed: module.apply(
      padir_vars,
      ENC,
      enable_dropout=True,
      method=module.encode,
      rngs={"dropout": jax.random.PRNGKey(seed)},
  )
  a, b, a_again = run(1), run(2), run(1)
  deterministic = module.apply(padir_vars, ENC, enable_dropout=False, method=module.encode)
  assert not np.allclose(a, deterministic, atol=1e-4)
  assert not np.allclose(a, b, atol=1e-4)
  np.testing.assert_array_equal(a, a_again)


def test_errors_are_clear(padir_vars):
  module = network.Transformer(TINY)
  too_long = jnp.ones((1, TINY.max_input_length + 1), jnp.int32)
  with pytest.raises(ValueError, match="position table"):
    jax.eval_shape(
        lambda: module.apply(padir_vars, too_long, enable_dropout=False, method=module.encode)
    )
  long_target = jnp.ones((1, TINY.max_target_length + 1), jnp.int32)
  with pytest.raises(ValueError, match="position table"):
    jax.eval_shape(
        lambda: module.apply(padir_vars, ENC[:1], long_target, long_target, enable_dropout=False)
    )
  with pytest.raises(ValueError, match="decode=True"):
    jax.eval_shape(
        lambda: module.apply(
            padir_vars, ENC, DEC_IN, TGT, decode=True, enable_dropout=False, mutable=["cache"]
        )
    )
  segments = jnp.ones_like(TGT)
  with pytest.raises(NotImplementedError, match="packed"):
    jax.eval_shape(
        lambda: module.apply(
            padir_vars, ENC, DEC_IN, TGT, decoder_segment_ids=segments, enable_dropout=False
        )
    )


def test_autoregressive_packing_keeps_segments_apart(ar_vars):
  """AR twin supports t5x packing: no attention across segment boundaries."""
  module = network.Transformer(AR_TINY)
  enc, dec_in, tgt = ENC[1:], AR_IN[1:], TGT[1:]
  packing = dict(
      encoder_segment_ids=jnp.array([[1, 1, 1, 1, 2, 2, 2]]),
      decoder_segment_ids=jnp.array([[1, 1, 1, 2, 2, 2]]),
      encoder_positions=jnp.array([[0, 1, 2, 3, 0, 1, 2]]),
      decoder_positions=jnp.array([[0, 1, 2, 0, 1, 2]]),
  )
  run = lambda e, d: module.apply(ar_vars, e, d, tgt, enable_dropout=False, **packing)
  logits = run(enc, dec_in)
  changed = run(enc.at[0, 1].set(60), dec_in.at[0, 2].set(60))  # both inside segment 1
  np.testing.assert_allclose(changed[0, 3:], logits[0, 3:], rtol=1e-5, atol=1e-5)
  assert not np.allclose(changed[0, 2], logits[0, 2], atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Length-predictor variants (TransformerConfig.length_pooling / length_target).
K = 3  # max_length_offset of the offset variants: every length of ENC's rows +- 3 fits the table
LENGTH_VARIANTS = [
    ("mean", "absolute"),
    ("mean", "offset"),
    ("token", "absolute"),
    ("token", "offset"),
]
SOURCE_LENGTHS = np.sum(np.asarray(ENC) > 0, axis=-1)  # [5, 7]


def _variant(pooling, target):
  # Smaller than TINY (1+1 layers, width 32): four variants are initialised and differentiated.
  return network_config.tiny_config(
      emb_dim=32,
      num_heads=2,
      head_dim=16,
      mlp_dim=64,
      num_encoder_layers=1,
      num_decoder_layers=1,
      dropout_rate=0.0,
      length_pooling=pooling,
      length_target=target,
      max_length_offset=K,
  )


@pytest.fixture(scope="module")
def variant_vars():
  return {v: _init(_variant(*v)) for v in LENGTH_VARIANTS}


def _class_logits(module, variables, encoded):
  """The predictor's own output (lengths or offsets), before predict_length converts it."""

  def run(m, e, tokens):
    return (
        m.length_predictor(e[:, 0]) if m.config.has_length_slot else m.length_predictor(e, tokens)
    )

  return module.apply(variables, encoded, ENC, method=run)


def test_length_config_fields_are_coerced_and_checked():
  cfg = network_config.tiny_config(
      length_pooling="token", length_target="offset", max_length_offset=5
  )
  assert cfg.length_pooling is network.LengthPooling.TOKEN
  assert cfg == network_config.tiny_config(
      length_pooling=network.LengthPooling.TOKEN,
      length_target=network.LengthTarget.OFFSET,
      max_length_offset=5,
  )
  assert cfg.num_length_classes == 11 and network_config.TINY_CONFIG.num_length_classes == 64
  assert network_config.TINY_CONFIG.length_pooling == "mean"  # today's predictor stays the default
  assert network_config.TINY_CONFIG.length_target == "absolute"
  for field, value in [("length_pooling", "cls"), ("length_target", "ratio")]:
    with pytest.raises(ValueError, match=field):
      network_config.tiny_config(**{field: value})
  for bad in (-1, 2.0, True):
    with pytest.raises(ValueError, match="max_length_offset"):
      network_config.tiny_config(max_length_offset=bad)


@pytest.mark.parametrize("variant", LENGTH_VARIANTS, ids="-".join)
def test_length_variants_give_logits_over_absolute_lengths(variant, variant_vars):
  cfg = _variant(*variant)
  module, variables = network.Transformer(cfg), variant_vars[variant]
  logits, length_logits = module.apply(
      variables, ENC, DEC_IN, TGT, enable_dropout=False, return_length_logits=True
  )
  assert logits.shape == (BATCH, OUT_LEN, cfg.vocab_size) and np.all(np.isfinite(logits))
  assert length_logits.shape == (BATCH, cfg.max_target_length)
  assert length_logits.dtype == jnp.float32 and np.all(np.isfinite(length_logits))
  encoded = module.apply(variables, ENC, enable_dropout=False, method=module.encode)
  assert encoded.shape == (BATCH, IN_LEN + (variant[0] == "token"), cfg.emb_dim)
  class_logits = np.asarray(_class_logits(module, variables, encoded))
  assert class_logits.shape == (BATCH, cfg.num_length_classes)
  length_logits = np.asarray(length_logits)
  if variant[1] == "absolute":
    np.testing.assert_allclose(length_logits, class_logits, rtol=1e-6)
    return
  # Offsets: exactly the lengths source +- K are allowed, each with its offset's logit.
  lengths = np.arange(1, cfg.max_target_length + 1)
  allowed = np.abs(lengths[None, :] - SOURCE_LENGTHS[:, None]) <= K
  assert np.all(length_logits[~allowed] == layout.DISALLOWED_LENGTH_LOGIT)
  np.testing.assert_allclose(length_logits[allowed], class_logits.reshape(-1), rtol=1e-6)
  np.testing.assert_array_equal(
      np.argmax(length_logits, -1) + 1, SOURCE_LENGTHS + np.argmax(class_logits, -1) - K
  )


@pytest.mark.parametrize("variant", LENGTH_VARIANTS, ids="-".join)
def test_a_length_loss_step_raises_the_true_length_log_prob(variant, variant_vars):
  module, params = network.Transformer(_variant(*variant)), variant_vars[variant]["params"]
  lengths = np.sum(np.asarray(TGT) > 0, axis=-1)  # [4, 6]: offsets -1 from the sources

  def log_prob(p):
    length_logits = network.encode_and_predict_length(module, p, ENC)[1]
    log_probs = layout.length_log_probs(length_logits)
    return jnp.mean(layout.lookup_length_log_probs(log_probs, jnp.asarray(lengths)))

  before, grads = jax.jit(jax.value_and_grad(log_prob))(params)
  after = log_prob(jax.tree.map(lambda p, g: p + 0.05 * g, params, grads))
  assert np.isfinite(before) and after > before + 1e-4, (before, after)


def test_length_token_slot_is_seen_by_the_length_predictor_only(variant_vars):
  variant = ("token", "absolute")
  cfg = _variant(*variant)
  module, variables = network.Transformer(cfg), variant_vars[variant]
  assert "length_token" in variables["params"]["encoder"]
  assert variables["params_axes"]["encoder"]["length_token_axes"].names == ("embed",)
  # The slot has its own vector, not a row of the encoder's position table (unchanged).
  assert variables["params"]["encoder"]["position_embedder"]["embedding"].shape == (
      cfg.max_input_length,
      cfg.emb_dim,
  )
  encoded = module.apply(variables, ENC, enable_dropout=False, method=module.encode)
  assert network.source_states(cfg, encoded).shape == (BATCH, IN_LEN, cfg.emb_dim)
  decode = lambda e: module.apply(
      variables, e, ENC, DEC_IN, TGT, enable_dropout=False, method=module.decode
  )
  predict = lambda e: module.apply(variables, e, ENC, method=module.predict_length)
  logits = decode(encoded)
  assert logits.shape == (BATCH, OUT_LEN, cfg.vocab_size)
  # The decoder does not see the slot's state (row 0); the length predictor reads only it.
  slot_changed = encoded.at[:, 0].add(3.0)
  np.testing.assert_allclose(decode(slot_changed), logits, rtol=1e-6, atol=1e-6)
  assert not np.allclose(predict(slot_changed), predict(encoded), atol=1e-4)
  source_changed = encoded.at[:, 1:].add(3.0)
  np.testing.assert_allclose(predict(source_changed), predict(encoded), rtol=1e-6, atol=1e-6)
  assert not np.allclose(decode(source_changed), logits, atol=1e-4)
  # The slot attends to the source tokens, never to padding: more trailing padding changes no
  # length logit and no valid source state, while a changed source token changes the length.
  longer = jnp.pad(ENC, ((0, 0), (0, 3)))
  encoded_longer = module.apply(variables, longer, enable_dropout=False, method=module.encode)
  np.testing.assert_allclose(
      module.apply(variables, encoded_longer, longer, method=module.predict_length),
      predict(encoded),
      rtol=1e-5,
      atol=1e-5,
  )
  other_source = module.apply(
      variables, ENC.at[:, 1].set(40), enable_dropout=False, method=module.encode
  )
  assert not np.allclose(predict(other_source), predict(encoded), atol=1e-4)
  # encode's output is what decode and predict_length take; the source states alone are not.
  with pytest.raises(ValueError, match="LENGTH"):
    decode(encoded[:, 1:])


def test_length_variant_parameters_use_known_axis_names(variant_vars):
  for variables in variant_vars.values():
    params, axes = _flat(variables["params"]), _flat(variables["params_axes"])
    assert {k[:-1] + (k[-1] + "_axes",) for k in params} == set(axes)
    for key, value in params.items():
      names = axes[key[:-1] + (key[-1] + "_axes",)].names
      assert len(names) == value.ndim and set(names) <= set(network.LOGICAL_AXIS_NAMES), key
  table_axes = variant_vars[("token", "offset")]["params_axes"]["length_predictor"]
  assert table_axes["length_embedding_axes"].names == ("length_classes", "embed")


def test_offset_length_logits_mask_exactly_the_unreachable_lengths():
  num_lengths, k = 6, 2
  offset_logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2 * k + 1)), jnp.float32)
  sources = np.array([1, 4, 7, 12])  # near length 1, inside, near the end, out of reach
  logits = np.asarray(layout.offset_length_logits(offset_logits, jnp.asarray(sources), num_lengths))
  assert logits.shape == (4, num_lengths) and logits.dtype == np.float32
  for row, source in enumerate(sources):
    for length in range(1, num_lengths + 1):
      offset = length - source
      expected = (
          offset_logits[row, offset + k] if abs(offset) <= k else layout.DISALLOWED_LENGTH_LOGIT
      )
      assert logits[row, length - 1] == pytest.approx(float(expected)), (row, length)
  # Safe downstream: no NaN even for the row with no reachable length (uniform), and the
  # reachable lengths carry all the probability.
  log_probs = np.asarray(layout.length_log_probs(jnp.asarray(logits)))
  assert np.all(np.isfinite(log_probs))
  np.testing.assert_allclose(np.exp(log_probs[3]), 1.0 / num_lengths, rtol=1e-6)
  reachable = logits > layout.DISALLOWED_LENGTH_LOGIT
  np.testing.assert_allclose(np.sum(np.exp(log_probs[:3]) * reachable[:3], -1), 1.0, rtol=1e-6)


def test_core_checkpoint_carries_the_length_fields(tmp_path, variant_vars):
  from padir_t5x.core import checkpoints  # pylint: disable=g-import-not-at-top

  variant = ("token", "offset")
  cfg = _variant(*variant)
  checkpoints.save_checkpoint(str(tmp_path / "new"), variant_vars[variant]["params"], cfg, "padir")
  meta = json.loads((tmp_path / "new" / "config.json").read_text())
  assert meta["transformer"]["length_pooling"] == "token"
  assert meta["transformer"]["length_target"] == "offset"
  assert meta["transformer"]["max_length_offset"] == K
  module, params, _ = checkpoints.load_checkpoint(str(tmp_path / "new"))
  assert module.config == cfg
  jax.tree.map(np.testing.assert_array_equal, variant_vars[variant]["params"], params)

  # A config.json written before the fields existed loads with today's predictor.
  old_cfg = _variant("mean", "absolute")
  checkpoints.save_checkpoint(str(tmp_path / "old"), _init(old_cfg)["params"], old_cfg, "padir")
  path = tmp_path / "old" / "config.json"
  meta = json.loads(path.read_text())
  for field in ("length_pooling", "length_target", "max_length_offset"):
    del meta["transformer"][field]
  path.write_text(json.dumps(meta))
  module, _, _ = checkpoints.load_checkpoint(str(tmp_path / "old"))
  assert module.config == dataclasses.replace(old_cfg, max_length_offset=32)
  assert module.config.length_pooling is network.LengthPooling.MEAN


def test_warm_start_copies_every_ar_leaf_and_keeps_padir_only_ones_fresh():
  from padir_t5x.core import checkpoints  # pylint: disable=g-import-not-at-top

  ar = _flat(_init(AR_TINY, dec=AR_IN)["params"])
  fresh = _init(dataclasses.replace(TINY, dropout_rate=0.0))["params"]
  shapes = checkpoints.abstract_params(
      network.Transformer(dataclasses.replace(TINY, dropout_rate=0.0))
  )
  warm = checkpoints.warm_start(fresh, traverse_util.unflatten_dict(ar), "teacher")
  # Every AR leaf is shared (the AR network is the PaDIR one less two parts) ...
  assert set(warm.copied) == {"/".join(k) for k in ar} and not warm.unused
  # ... and the PaDIR-only leaves are exactly the positional attention and the length predictor.
  assert warm.fresh and all(
      "positional_attention" in k or k.startswith("length_predictor") for k in warm.fresh
  )
  merged, before = _flat(warm.params), _flat(fresh)
  for key in merged:
    expected = ar[key] if "/".join(key) in warm.copied else before[key]
    np.testing.assert_array_equal(merged[key], expected)
  # A shape check on abstract leaves (what train_budget does before any data is read).
  abstract = checkpoints.warm_start(shapes, traverse_util.unflatten_dict(ar), "t")
  assert abstract.copied == warm.copied

  wider = _init(dataclasses.replace(AR_TINY, mlp_dim=2 * AR_TINY.mlp_dim), dec=AR_IN)["params"]
  with pytest.raises(checkpoints.CheckpointError, match=r"wider_ckpt cannot warm-start.*mlp/wi"):
    checkpoints.warm_start(fresh, wider, "wider_ckpt")
  with pytest.raises(checkpoints.CheckpointError, match="shares no parameter"):
    checkpoints.warm_start(fresh, {"other": {"kernel": np.zeros(3)}}, "odd")


# ------------------------------------------------------------------------------------------------
# Work done once per decode (network.decoder_invariants), rows grouped per source, fused attention.
def _decode(config, variables, encoded, enc, dec_in, tgt, **kwargs):
  return network.Transformer(config).apply(
      variables, encoded, enc, dec_in, tgt, enable_dropout=False, method="decode", **kwargs
  )


@pytest.mark.parametrize(
    "overrides",
    [{}, {"positional_attention": False}, {"length_pooling": "token"}, {"dtype": "bfloat16"}],
    ids=["default", "no-positional", "length-slot", "bfloat16"],
)
def test_invariants_and_grouped_rows_give_the_plain_decoder_logits(overrides):
  config = network_config.tiny_config(**overrides)
  variables = _init(config)
  module = network.Transformer(config)
  encoded = module.apply(variables, ENC, enable_dropout=False, method="encode")
  plain = _decode(config, variables, encoded, ENC, DEC_IN, TGT)  # [2, 6, V]
  valid = np.asarray(TGT > 0)  # PAD target positions attend differently when grouped; unread
  tol = dict(rtol=2e-2, atol=2e-2) if config.dtype == "bfloat16" else dict(rtol=1e-5, atol=1e-5)

  invariants = network.decoder_invariants(config, variables["params"], encoded)
  assert len(invariants) == config.num_decoder_layers
  assert invariants[0].cross_key.shape == (BATCH, IN_LEN, config.num_heads, config.head_dim)
  if config.positional_attention:
    assert invariants[0].positional_logits.shape == (
        (config.num_heads,) + (config.max_target_length,) * 2
    )
  cached = _decode(config, variables, encoded, ENC, DEC_IN, TGT, invariants=invariants)
  np.testing.assert_allclose(np.asarray(cached)[valid], np.asarray(plain)[valid], **tol)

  # Three hypothesis rows per source (flat_batch_beam_expand order) against 2 encoder rows.
  c = 3
  expand = lambda x: jnp.repeat(x, c, axis=0)
  expanded = _decode(config, variables, expand(encoded), expand(ENC), expand(DEC_IN), expand(TGT))
  for kwargs in ({}, {"invariants": invariants}):
    grouped = _decode(config, variables, encoded, ENC, expand(DEC_IN), expand(TGT), **kwargs)
    assert grouped.shape == expanded.shape
    np.testing.assert_allclose(
        np.asarray(grouped)[expand(valid)], np.asarray(expanded)[expand(valid)], **tol
    )


def test_invariants_cover_a_shorter_decode_and_refuse_a_longer_one(padir_vars):
  module = network.Transformer(TINY)
  encoded = module.apply(padir_vars, ENC, enable_dropout=False, method="encode")
  short = network.decoder_invariants(TINY, padir_vars["params"], encoded, target_length=OUT_LEN)
  full = network.decoder_invariants(TINY, padir_vars["params"], encoded)
  a = _decode(TINY, padir_vars, encoded, ENC, DEC_IN, TGT, invariants=short)
  b = _decode(TINY, padir_vars, encoded, ENC, DEC_IN, TGT, invariants=full)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
  too_short = network.decoder_invariants(TINY, padir_vars["params"], encoded, target_length=4)
  with pytest.raises(ValueError, match="cover 4 positions, the decoder input has 6"):
    _decode(TINY, padir_vars, encoded, ENC, DEC_IN, TGT, invariants=too_short)
  with pytest.raises(ValueError, match="default positions"):
    positions = jnp.broadcast_to(jnp.arange(OUT_LEN), (BATCH, OUT_LEN))
    _decode(
        TINY, padir_vars, encoded, ENC, DEC_IN, TGT, invariants=full, decoder_positions=positions
    )


def test_grouped_rows_must_divide_evenly(padir_vars):
  module = network.Transformer(TINY)
  encoded = module.apply(padir_vars, ENC, enable_dropout=False, method="encode")
  three = jnp.concatenate([DEC_IN, DEC_IN[:1]])  # 3 decoder rows over 2 sources
  with pytest.raises(ValueError, match="3 query rows cannot be grouped over 2 key rows"):
    _decode(TINY, padir_vars, encoded, ENC, three, jnp.concatenate([TGT, TGT[:1]]))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fused_attention_equals_the_spelled_out_softmax(dtype):
  """layers.dot_product_attention: jax.nn.dot_product_attention (no dropout) against the explicit
  path it keeps for training with dropout (here an identity 'dropout'), masked rows included."""
  keys = jax.random.split(jax.random.PRNGKey(3), 3)
  query = jax.random.normal(keys[0], (2, 5, 3, 8)).astype(dtype)
  key = jax.random.normal(keys[1], (2, 7, 3, 8)).astype(dtype)
  value = jax.random.normal(keys[2], (2, 7, 3, 8)).astype(dtype)
  mask = (jnp.arange(7)[None, None, None, :] < jnp.array([4, 7])[:, None, None, None]) & (
      jnp.arange(5)[None, None, :, None] < 4
  )  # [2, 1, 5, 7]: padded keys in row 0, a padded query in both
  fused = layers.dot_product_attention(query, key, value, mask, jnp.dtype(dtype))
  explicit = layers.dot_product_attention(
      query, key, value, mask, jnp.dtype(dtype), dropout=lambda p: p
  )
  assert fused.dtype == explicit.dtype == jnp.dtype(dtype)
  tol = 2e-2 if dtype == "bfloat16" else 1e-5
  np.testing.assert_allclose(
      np.asarray(fused, np.float32)[:, :4], np.asarray(explicit, np.float32)[:, :4], atol=tol
  )
