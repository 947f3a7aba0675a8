"""Tests of padir_t5x/research/analysis.py: stutter/attention statistics and attention
extraction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from padir_t5x.research import analysis
from padir_t5x.core import layers
from padir_t5x.core import network
from padir_t5x.core import network_config


def _hand_made():
  """One row, tokens [5, 5, 6, EOS]: pair (0, 1) stutters, pair (1, 2) does not."""
  tokens = np.array([[5, 5, 6, 1]])
  length_mask = np.array([[1, 1, 1, 1]])
  self_w = np.zeros((1, 1, 2, 4, 4))  # [Ly, n, h, t, t]
  self_w[0, 0, 0, 1, 0], self_w[0, 0, 0, 0, 1] = 0.6, 0.2
  self_w[0, 0, 1, 1, 0], self_w[0, 0, 1, 0, 1] = 0.4, 0.0
  self_w[0, 0, 0, 2, 1], self_w[0, 0, 0, 1, 2] = 0.1, 0.2
  self_w[0, 0, 1, 2, 1], self_w[0, 0, 1, 1, 2] = 0.3, 0.2
  cross = np.zeros((1, 1, 2, 4, 2))  # [Ly, n, h, t, s]
  cross[0, 0, 0, :3] = [[1, 0], [1, 0], [0, 1]]
  cross[0, 0, 1, :3] = [[0.5, 0.5], [0.5, 0.5], [1, 0]]
  return self_w, cross, tokens, length_mask


def test_adjacent_pairs_excludes_eos_and_padding():
  tokens = np.array([[7, 7, 7, 1, 0, 0], [4, 5, 1, 1, 0, 0]])
  length_mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
  stutter, non_stutter = analysis.adjacent_pairs(tokens, length_mask)
  np.testing.assert_array_equal(stutter, [[0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(non_stutter, [[0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]])


def test_tables_on_hand_made_attention():
  tables = analysis.stutter_attention_tables(*_hand_made())
  assert tables["num_stutter_pairs"] == 1 and tables["num_non_stutter_pairs"] == 1
  layer = tables["layers"][0]
  # Self: stutter pair i->i-1 = (0.6 + 0.4) / 2, i-1->i = (0.2 + 0) / 2.
  assert layer["self_to_previous_stutter"] == pytest.approx(0.5)
  assert layer["self_to_next_stutter"] == pytest.approx(0.1)
  assert layer["self_stutter"] == pytest.approx(0.3)
  assert layer["self_non_stutter"] == pytest.approx(0.2)
  # Cross: identical distributions for the stutter pair; for the other pair head 0 moves all
  # mass (TV 1, cosine 1), head 1 goes from uniform to one-hot (TV 0.5, cosine 1 - 1/sqrt 2).
  assert layer["tv_stutter"] == pytest.approx(0.0)
  assert layer["cosine_stutter"] == pytest.approx(0.0, abs=1e-12)
  assert layer["tv_non_stutter"] == pytest.approx(0.75)
  assert layer["cosine_non_stutter"] == pytest.approx((1 + 1 - 1 / np.sqrt(2)) / 2)
  text = analysis.format_tables(tables)
  assert "Table 4" in text and "Table 5" in text and "0.7500" in text


def test_row_filter_and_empty_mean_is_nan():
  tables = analysis.stutter_attention_tables(*_hand_made(), rows=np.array([False]))
  assert tables["num_stutter_pairs"] == 0
  assert np.isnan(tables["layers"][0]["tv_stutter"])


def test_decoder_attention_reproduces_the_network():
  """The recomputed weights, applied to the captured values and output projection, give the
  sublayer output the network computed."""
  cfg = network_config.tiny_config(
      vocab_size=32,
      emb_dim=16,
      num_heads=2,
      head_dim=8,
      mlp_dim=32,
      num_encoder_layers=1,
      num_decoder_layers=2,
      max_input_length=8,
      max_target_length=8,
      dropout_rate=0.0,
  )
  module = network.Transformer(cfg)
  enc = jnp.array([[5, 6, 7, 1, 0, 0], [9, 1, 0, 0, 0, 0]], jnp.int32)
  dec = jnp.array([[4, 4, 8, 1, 0], [6, 1, 0, 0, 0]], jnp.int32)
  length_mask = (dec > 0).astype(jnp.int32)
  params = module.init(jax.random.PRNGKey(0), enc, dec, dec, enable_dropout=False)["params"]
  out = analysis.decoder_attention(module, params, enc, dec, length_mask)
  assert out["self"].shape == (2, 2, 2, 5, 5) and out["cross"].shape == (2, 2, 2, 5, 6)
  np.testing.assert_allclose(np.asarray(out["cross"]).sum(-1), 1.0, rtol=1e-5)
  # Real target positions put no weight on padded source positions (row 1: 2 real of each).
  assert float(jnp.max(out["cross"][:, 1, :, :2, 2:])) < 1e-6

  encoded = module.apply(
      {"params": params}, enc, enable_dropout=False, method=network.Transformer.encode
  )
  _, state = module.apply(
      {"params": params},
      encoded,
      enc,
      dec,
      length_mask,
      enable_dropout=False,
      method=network.Transformer.decode,
      capture_intermediates=lambda m, name: name == "__call__"
      and (isinstance(m, layers.MultiHeadAttention) or getattr(m, "name", None) == "value"),
  )
  for layer in range(2):
    for sub, weights in (
        ("self_attention", out["self"]),
        ("encoder_decoder_attention", out["cross"]),
    ):
      node = state["intermediates"]["decoder"][f"layers_{layer}"][sub]
      value = node["value"]["__call__"][0]
      mixed = jnp.einsum("bhqk,bkhd->bqhd", weights[layer], value)
      kernel = params["decoder"][f"layers_{layer}"][sub]["out"]["kernel"]
      rebuilt = mixed.reshape(mixed.shape[:2] + (-1,)) @ kernel
      np.testing.assert_allclose(rebuilt, node["__call__"][0], rtol=1e-4, atol=1e-5)
