"""padir_t5x.research.cost: matmul FLOPs of a training step against a hand count; the README's
table."""

import pathlib

import pytest

from padir_t5x.research import cost
from padir_t5x.core import network_config

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_tiny_training_step_flops_match_a_hand_count():
  # Tiny: vocab 128, d = 64, 4 heads x 16 = 64 inner, mlp 256, 2 + 2 layers, 64 length
  # classes, mean pooling (hidden 64). Batch 2, source 8, target 6, 2 stages.
  b, s, t, d, inner, f, v, c = 2, 8, 6, 64, 64, 256, 128, 64
  encoder_layer = (
      4 * 2 * b * s * d * inner  # q, k, v, o projections
      + 2 * 2 * b * s * s * inner  # scores, weighted values
      + 2 * 2 * b * s * d * f  # wi, wo
  )
  assert encoder_layer == 1_605_632
  length_classifier = 2 * b * d * d + 2 * b * d * c
  self_attention = 4 * 2 * b * t * d * inner + 2 * 2 * b * t * t * inner
  positional_attention = self_attention  # queries/keys from positions, same shapes
  cross_attention = (
      2 * 2 * b * t * d * inner  # q, o over the target
      + 2 * 2 * b * s * d * inner  # k, v over the source, recomputed by every pass
      + 2 * 2 * b * t * s * inner
  )
  mlp = 2 * 2 * b * t * d * f
  decoder_layer = self_attention + positional_attention + cross_attention + mlp
  assert decoder_layer == 2_093_056
  logits = 2 * b * t * d * v
  decoder_pass = 2 * decoder_layer + logits
  # forward + backward (2 x forward) of the encoder and length classifier once, of the decoder
  # once per stage.
  step = 3 * (2 * encoder_layer + length_classifier) + 2 * 3 * decoder_pass
  assert step == 36_028_416

  config = network_config.tiny_config()
  parts = cost.forward_flops(config, b, s, t)
  assert parts == cost.ForwardFlops(2 * encoder_layer, length_classifier, decoder_pass)
  assert cost.training_step_flops(config, b, s, t, num_stages=2) == step
  # A glancing pass adds one decoder forward; one more stage adds a forward and a backward.
  assert cost.training_step_flops(config, b, s, t, 2, forward_only_decoder_passes=1) == (
      step + decoder_pass
  )
  assert cost.training_step_flops(config, b, s, t, 3) == step + 3 * decoder_pass


def test_ar_twin_has_no_positional_attention_or_length_classifier():
  config = network_config.tiny_config(decoder_mode="autoregressive")
  padir = cost.forward_flops(network_config.tiny_config(), 2, 8, 6)
  ar = cost.forward_flops(config, 2, 8, 6)
  self_attention = 4 * 2 * 2 * 6 * 64 * 64 + 2 * 2 * 2 * 6 * 6 * 64
  assert ar.length_classifier == 0
  assert padir.decoder_pass - ar.decoder_pass == 2 * self_attention  # 2 layers
  with pytest.raises(ValueError, match="one decoder pass"):
    cost.training_step_flops(config, 2, 8, 6, num_stages=2)


def test_length_slot_adds_a_source_position():
  config = network_config.tiny_config(length_pooling="token")
  slot = cost.forward_flops(config, 2, 8, 6)
  assert slot.encoder == cost.forward_flops(network_config.tiny_config(), 2, 9, 6).encoder
  assert slot.length_classifier == 2 * 2 * 64 * 64


def test_hours_at_utilisation():
  assert cost.hours(3600 * 1e12, 1e12, 1.0) == pytest.approx(1.0)
  assert cost.hours(3600 * 1e12, 1e12, 0.4) == pytest.approx(2.5)


def test_readme_cost_table_is_current():
  assert cost.recipe_table(cost.paper_recipes()) in README.read_text()
