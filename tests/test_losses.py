"""Tests of padir_t5x.core.losses: cross-entropies against hand computations, the multi-stage loss.

The multi-stage tests run on a tiny fake flax module with the network's three methods (so they do
not depend on padir_t5x.core.network) and, when padir_t5x/core/network.py exists, on the real
Transformer with tiny_config().
"""

import dataclasses
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from padir_t5x import EOS_ID
from padir_t5x import MASK_ID
from padir_t5x import PAD_ID
from padir_t5x.core import corruption
from padir_t5x.core import cross_entropy
from padir_t5x.core import losses
from padir_t5x.core.loss_config import PadirLossConfig
from padir_t5x.core.modes import LossPositions
from padir_t5x.core.modes import UnmaskingRateMode

VOCAB_SIZE = 16  # ordinary tokens [4, 16)
LENGTH = 8
NETWORK_FILE = pathlib.Path(__file__).resolve().parents[1] / "padir_t5x" / "core" / "network.py"


# ----------------------------------------------------------------------------------------------
# token_cross_entropy and length_cross_entropy against numpy.


def _numpy_cross_entropy(logits, targets, weights, label_smoothing, z_loss):
  """Per-position t5x loss written out longhand: smoothed CE - its entropy + z_loss log(Z)^2."""
  logits = logits.astype(np.float64)
  vocab = logits.shape[-1]
  log_z = np.log(np.sum(np.exp(logits), axis=-1))
  log_p = logits - log_z[..., None]
  on, off = 1.0 - label_smoothing, label_smoothing / (vocab - 1)
  total = np.zeros(targets.shape)
  for idx in np.ndindex(targets.shape):
    for k in range(vocab):
      q = on if k == targets[idx] else off
      if q > 0:
        total[idx] += -q * log_p[idx][k] + q * np.log(q)  # + q log q: minus the entropy
  z = z_loss * log_z**2
  return np.sum((total + z) * weights), np.sum(z * weights)


@pytest.fixture(name="ce_example")
def _ce_example():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 5)).astype(np.float32) * 2
  targets = np.array([[1, 4, 0], [3, 3, 2]], np.int32)
  weights = np.array([[1.0, 1.0, 0.0], [1.0, 0.5, 1.0]], np.float32)
  return logits, targets, weights


@pytest.mark.parametrize(
    "label_smoothing, z_loss", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-2), (0.2, 1e-1)]
)
def test_token_cross_entropy_matches_hand_computation(ce_example, label_smoothing, z_loss):
  logits, targets, weights = ce_example
  loss, z_term, weight_sum = cross_entropy.token_cross_entropy(
      jnp.asarray(logits),
      jnp.asarray(targets),
      jnp.asarray(weights),
      label_smoothing=label_smoothing,
      z_loss=z_loss,
  )
  expected_loss, expected_z = _numpy_cross_entropy(
      logits, targets, weights, label_smoothing, z_loss
  )
  np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5)
  np.testing.assert_allclose(float(z_term), expected_z, rtol=1e-5, atol=1e-7)
  assert float(weight_sum) == pytest.approx(4.5)


def test_perfect_smoothed_prediction_costs_nothing():
  targets = jnp.array([[0, 3, 2]])
  soft = jax.nn.one_hot(targets, 5) * (0.9 - 0.1 / 4) + 0.1 / 4
  loss, _, _ = cross_entropy.token_cross_entropy(jnp.log(soft), targets, None, label_smoothing=0.1)
  assert abs(float(loss)) < 1e-5
  worse, _, _ = cross_entropy.token_cross_entropy(
      jnp.log(soft) * 2, targets, None, label_smoothing=0.1
  )
  assert float(worse) > 1e-3


@pytest.mark.parametrize(
    "factor, divisor",
    [
        (None, 1.0),
        (2.0, 2.0),
        ("NUM_REAL_TARGET_TOKENS", 4.5),
        ("NUMBER_OF_ALL_DECODER_TOKENS", 6.0),
        ("num_total_target_tokens", 6.0),
    ],
)
def test_loss_normalizing_factor_variants(ce_example, factor, divisor):
  logits, targets, weights = ce_example
  expected_loss, expected_z = _numpy_cross_entropy(logits, targets, weights, 0.1, 1e-2)
  loss, z_term, weight_sum = cross_entropy.token_cross_entropy(
      jnp.asarray(logits),
      jnp.asarray(targets),
      jnp.asarray(weights),
      label_smoothing=0.1,
      z_loss=1e-2,
      loss_normalizing_factor=factor,
  )
  np.testing.assert_allclose(float(loss), expected_loss / divisor, rtol=1e-5)
  np.testing.assert_allclose(float(z_term), expected_z / divisor, rtol=1e-5)
  assert float(weight_sum) == pytest.approx(4.5)  # never normalised


@pytest.mark.parametrize("factor", ["NUM_SOMETHING", 0.0, -1.0])
def test_bad_loss_normalizing_factor_raises(ce_example, factor):
  logits, targets, weights = ce_example
  with pytest.raises(ValueError, match="loss_normalizing_factor"):
    cross_entropy.token_cross_entropy(
        jnp.asarray(logits),
        jnp.asarray(targets),
        jnp.asarray(weights),
        loss_normalizing_factor=factor,
    )


def test_length_cross_entropy_hand_example():
  length_logits = jnp.log(
      jnp.array(
          [
              [0.1, 0.7, 0.2],  # length 2 -> class 1: right
              [0.5, 0.25, 0.25],  # length 3 -> class 2: wrong
              [0.2, 0.2, 0.6],
          ]
      )
  )  # length 9 clipped to class 2: right
  loss, correct = cross_entropy.length_cross_entropy(length_logits, jnp.array([2, 3, 9]))
  np.testing.assert_allclose(np.asarray(loss), -np.log([0.7, 0.25, 0.6]), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(correct), [True, False, True])


def _length_outputs(length_logits, lengths):
  """StageOutputs with one stage of zero token logits, and targets of the given lengths."""
  targets = np.zeros((len(lengths), LENGTH), np.int32)
  for row, length in enumerate(lengths):
    if length:
      targets[row, : length - 1] = 5
      targets[row, length - 1] = EOS_ID
  logits = jnp.zeros((len(lengths), LENGTH, VOCAB_SIZE))
  outputs = losses.StageOutputs((jnp.asarray(targets),), (logits,), jnp.asarray(length_logits))
  return outputs, {"decoder_target_tokens": jnp.asarray(targets)}


def test_length_accuracy_within_1_and_out_of_window_targets():
  from padir_t5x.core import layout  # pylint: disable=g-import-not-at-top

  off = layout.DISALLOWED_LENGTH_LOGIT
  length_logits = np.log(np.full((5, LENGTH), 0.01, np.float32))
  length_logits[0, 2] = length_logits[1, 3] = length_logits[2, 5] = 0.0  # argmax lengths 3, 4, 6
  # Row 3: an offset predictor that reaches lengths 2..4 only; its target 7 is out of reach.
  length_logits[3] = [off, 0.5, 0.0, -0.5, off, off, off, off]
  lengths = [3, 5, 3, 7, 0]  # exact, off by one, off by three, out of reach, all-PAD row
  outputs, batch = _length_outputs(length_logits, lengths)
  config = PadirLossConfig(num_stages=1, vocab_high=VOCAB_SIZE, z_loss=0.0)
  _, metrics = losses.loss_from_outputs(outputs, batch, config)
  assert float(metrics["num_examples"]) == 4
  assert float(metrics["length_correct"]) == 1 and float(metrics["length_within_1_correct"]) == 2
  assert float(metrics["length_accuracy"]) == pytest.approx(1 / 4)
  assert float(metrics["length_accuracy_within_1"]) == pytest.approx(2 / 4)
  # The out-of-reach target costs what its nearest reachable length (4) costs, not ~1e9.
  log_probs = np.asarray(jax.nn.log_softmax(jnp.asarray(length_logits), -1))
  expected = -sum(log_probs[row, length - 1] for row, length in enumerate([3, 5, 3, 4]))
  assert float(metrics["length_loss"]) == pytest.approx(expected, rel=1e-5)
  # The evaluation helper agrees with the training metrics.
  accuracy = layout.length_accuracy(outputs.length_logits, batch["decoder_target_tokens"])
  assert float(accuracy["length_accuracy"]) == pytest.approx(1 / 4)
  assert float(accuracy["length_accuracy_within_1"]) == pytest.approx(2 / 4)
  assert float(accuracy["num_examples"]) == 4
  np.testing.assert_array_equal(
      layout.nearest_allowed_lengths(jnp.asarray(length_logits), jnp.asarray(lengths)),
      [3, 5, 3, 4, 0],
  )


def test_next_stage_inputs_pads_past_length_and_restores_eos():
  targets = jnp.array([[5, 6, 7, EOS_ID, 0, 0], [8, EOS_ID, 0, 0, 0, 0]])
  # Argmax predicts token 9 everywhere, EOS never, non-PAD past the length.
  logits = jax.nn.one_hot(jnp.full(targets.shape, 9), VOCAB_SIZE)
  np.testing.assert_array_equal(
      np.asarray(losses.next_stage_inputs(logits, targets)),
      [[9, 9, 9, EOS_ID, 0, 0], [9, EOS_ID, 0, 0, 0, 0]],
  )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(vocab_high=16, num_stages=0), "num_stages"),
        (dict(vocab_high=16, unmasking_rate=1.5), "unmasking_rate"),
        (dict(vocab_high=16, corruption="bert"), "corruption"),
        (dict(vocab_high=16, label_smoothing=1.0), "label_smoothing"),
        (dict(vocab_high=16, loss_normalizing_factor="PER_BATCH"), "loss_normalizing_factor"),
        (dict(unmasking_rate_mode="annealed"), "unmasking_rate_mode"),
        (dict(unmasking_rate_range=(0.6, 0.4)), "unmasking_rate_range"),
        (dict(unmasking_rate_range=(0.0, 1.5)), "unmasking_rate_range"),
        (dict(unmasking_rate_range=(0.5,)), "unmasking_rate_range"),
        (dict(corruption_mix=(0.5, 0.6, 0.0)), "corruption_mix"),
        (dict(corruption_mix=(-0.2, 0.6, 0.6)), "corruption_mix"),
        (dict(corruption_mix=(0.5, 0.5)), "corruption_mix"),
        (dict(vocab_high=4, corruption="mask", corruption_mix=(0, 1, 0)), "random tokens range"),
        (dict(loss_positions="masked"), "loss_positions"),
        (dict(glancing_ratio=1.5), "glancing_ratio"),
        (dict(glancing_ratio_end=-0.1, glancing_anneal_steps=10), "glancing_ratio_end"),
        (dict(glancing_anneal_steps=-1), "glancing_anneal_steps"),
        (dict(glancing_ratio_end=0.3), "glancing_anneal_steps"),
        (dict(glancing_anneal_steps=100), "glancing_ratio_end"),
    ],
)
def test_config_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    PadirLossConfig(**kwargs)


def test_mask_corruption_needs_no_vocab_high():
  assert PadirLossConfig(corruption="mask").vocab_high is None


# ----------------------------------------------------------------------------------------------
# multi_stage_loss on a module with the network's encode / predict_length / decode.


class FakePadirNetwork(nn.Module):
  """Smallest module with the padir_t5x.core.network.Transformer methods: each output position reads
  its own input position (enough to learn copying) and the length head reads the mean encoding."""

  vocab_size: int = VOCAB_SIZE
  num_length_classes: int = LENGTH
  dim: int = 32
  dropout_rate: float = 0.3

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.dim)
    self.encoder_layer = nn.Dense(self.dim)
    self.length_head = nn.Dense(self.num_length_classes)
    self.decoder_layer = nn.Dense(self.dim)
    self.output_layer = nn.Dense(self.vocab_size)
    self.dropout = nn.Dropout(self.dropout_rate)

  def encode(self, encoder_input_tokens, enable_dropout=True):
    x = jnp.tanh(self.encoder_layer(self.embed(encoder_input_tokens)))
    return self.dropout(x, deterministic=not enable_dropout)

  def predict_length(self, encoded, encoder_input_tokens):
    mask = (encoder_input_tokens > 0)[..., None]
    return self.length_head(jnp.sum(encoded * mask, 1) / jnp.maximum(jnp.sum(mask, 1), 1))

  def decode(
      self,
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      enable_dropout=True,
  ):
    del encoder_input_tokens, decoder_target_tokens
    y = self.embed(decoder_input_tokens) + encoded[:, : decoder_input_tokens.shape[1]]
    y = self.dropout(jnp.tanh(self.decoder_layer(y)), deterministic=not enable_dropout)
    return self.output_layer(y)

  def __call__(
      self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, enable_dropout=True
  ):
    encoded = self.encode(encoder_input_tokens, enable_dropout)
    self.predict_length(encoded, encoder_input_tokens)
    return self.decode(
        encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, enable_dropout
    )


def _real_network():
  from padir_t5x.core import network  # pylint: disable=g-import-not-at-top
  from padir_t5x.core import network_config  # pylint: disable=g-import-not-at-top
  # tiny_config, shrunk further: these tests check wiring, not capacity, on a shared CPU.
  return network.Transformer(
      network_config.tiny_config(
          vocab_size=VOCAB_SIZE,
          max_input_length=LENGTH,
          max_target_length=LENGTH,
          emb_dim=32,
          num_heads=2,
          head_dim=16,
          mlp_dim=64,
          num_encoder_layers=1,
          num_decoder_layers=1,
          dropout_rate=0.3,
      )
  )


@pytest.fixture(name="module", params=["fake", "real"])
def _module(request):
  """Both networks, for the tests of how the loss drives the network's methods."""
  if request.param == "fake":
    return FakePadirNetwork()
  if not NETWORK_FILE.exists():
    pytest.skip("padir_t5x/core/network.py has not landed yet")
  return _real_network()  # imported only now, so a broken network.py fails loudly


@pytest.fixture(name="fake_module")
def _fake_module():
  """The fake alone, for tests of loss bookkeeping that does not depend on the network."""
  return FakePadirNetwork()


def _copy_batch(seed=0, batch=4):
  """Copy task: targets are the inputs; lengths (EOS included) 2..LENGTH, one all-PAD row last."""
  rng = np.random.default_rng(seed)
  tokens = np.zeros((batch, LENGTH), np.int32)
  for row in range(batch - 1):
    n = int(rng.integers(2, LENGTH + 1))
    tokens[row, : n - 1] = rng.integers(4, VOCAB_SIZE, n - 1)
    tokens[row, n - 1] = EOS_ID
  return {"encoder_input_tokens": jnp.asarray(tokens), "decoder_target_tokens": jnp.asarray(tokens)}


def _init(module, batch):
  return module.init(
      jax.random.PRNGKey(0),
      batch["encoder_input_tokens"],
      batch["decoder_target_tokens"],
      batch["decoder_target_tokens"],
      enable_dropout=False,
  )["params"]


def _loss(module, config, enable_dropout=True):
  # Eager on purpose: each test calls it once or twice, and compiling the whole network per
  # test costs more CPU than op-by-op dispatch (whose kernels are cached across tests).
  return lambda p, b, r: losses.multi_stage_loss(
      module, p, b, r, config, enable_dropout=enable_dropout
  )


def _forward(module, config, enable_dropout=True):
  return lambda p, b, r: losses.multi_stage_forward(
      module, p, b, r, config, enable_dropout=enable_dropout
  )


CONFIG = PadirLossConfig(
    num_stages=3,
    unmasking_rate=0.5,
    vocab_high=VOCAB_SIZE,
    length_loss_weight=0.3,
    label_smoothing=0.1,
    z_loss=1e-3,
)


def _decode(module, params, batch, decoder_input, encoder_rng, stage_rng, enable_dropout=True):
  """One stage recomputed by hand: encode with `encoder_rng`, decode `decoder_input`."""
  inputs, targets = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
  encoded = module.apply(
      {"params": params},
      inputs,
      enable_dropout=enable_dropout,
      method=type(module).encode,
      rngs={"dropout": encoder_rng},
  )
  return module.apply(
      {"params": params},
      encoded,
      inputs,
      decoder_input,
      targets,
      enable_dropout=enable_dropout,
      method=type(module).decode,
      rngs={"dropout": stage_rng},
  )


def test_stage_inputs(module):
  batch = _copy_batch()
  params = _init(module, batch)
  rng = jax.random.PRNGKey(1)
  outputs = _forward(module, CONFIG)(params, batch, rng)
  targets = np.asarray(batch["decoder_target_tokens"])
  rngs = losses.split_loss_rngs(rng, CONFIG.num_stages)
  np.testing.assert_array_equal(
      np.asarray(outputs.stage_inputs[0]),
      np.asarray(corruption.corrupt_targets(rngs.corruption, targets, 0.5, vocab_high=VOCAB_SIZE)),
  )
  assert len(outputs.stage_inputs) == len(outputs.stage_logits) == CONFIG.num_stages
  for stage in range(1, CONFIG.num_stages):
    got = np.asarray(outputs.stage_inputs[stage])
    argmax = np.asarray(jnp.argmax(outputs.stage_logits[stage - 1], -1))
    assert np.all(got[targets == PAD_ID] == PAD_ID)  # PAD past the length
    assert np.all(got[targets == EOS_ID] == EOS_ID)  # EOS where the target has it
    inside = (targets != PAD_ID) & (targets != EOS_ID)
    # Elsewhere the plain argmax (which may itself be PAD or EOS: nothing else is forced).
    np.testing.assert_array_equal(got[inside], argmax[inside])
    # The forcing did something: the untrained argmax is not already right at those positions.
    assert np.any(argmax[targets == EOS_ID] != EOS_ID) or np.any(argmax[targets == PAD_ID] != 0)
  assert outputs.length_logits.shape[0] == targets.shape[0]


def test_random_corruption_without_vocab_high_fails_in_the_loss(fake_module):
  # Constructible (PadirModel fills vocab_high in from its vocabulary), but not trainable.
  batch = _copy_batch()
  params = _init(fake_module, batch)
  with pytest.raises(ValueError, match="vocab_high"):
    losses.multi_stage_loss(fake_module, params, batch, jax.random.PRNGKey(0), PadirLossConfig())


def test_mask_corruption_feeds_mask_ids(fake_module):
  batch = _copy_batch()
  params = _init(fake_module, batch)
  config = PadirLossConfig(num_stages=1, unmasking_rate=0.0, corruption="mask")
  outputs = losses.multi_stage_forward(fake_module, params, batch, jax.random.PRNGKey(0), config)
  targets = np.asarray(batch["decoder_target_tokens"])
  inside = (targets != PAD_ID) & (targets != EOS_ID)
  np.testing.assert_array_equal(
      np.asarray(outputs.stage_inputs[0]), np.where(inside, MASK_ID, targets)
  )


def test_each_stage_is_decoded_with_its_own_dropout_rng(module):
  batch = _copy_batch()
  params = _init(module, batch)
  rng = jax.random.PRNGKey(2)
  outputs = _forward(module, CONFIG)(params, batch, rng)
  rngs = losses.split_loss_rngs(rng, CONFIG.num_stages)
  keys = [rngs.corruption, rngs.encoder_dropout, *rngs.stage_dropout]
  assert len({tuple(np.asarray(jax.random.key_data(k)).ravel()) for k in keys}) == len(keys)
  for stage in range(CONFIG.num_stages):
    own = _decode(
        module,
        params,
        batch,
        outputs.stage_inputs[stage],
        rngs.encoder_dropout,
        rngs.stage_dropout[stage],
    )
    np.testing.assert_allclose(
        np.asarray(own), np.asarray(outputs.stage_logits[stage]), rtol=1e-5, atol=1e-5
    )
    other = _decode(
        module,
        params,
        batch,
        outputs.stage_inputs[stage],
        rngs.encoder_dropout,
        rngs.stage_dropout[(stage + 1) % CONFIG.num_stages],
    )
    assert not np.allclose(np.asarray(other), np.asarray(outputs.stage_logits[stage]))


def test_loss_is_deterministic_for_an_rng_and_varies_with_it(fake_module):
  batch = _copy_batch()
  params = _init(fake_module, batch)
  loss_fn = _loss(fake_module, CONFIG)
  loss_a, _ = loss_fn(params, batch, jax.random.PRNGKey(0))
  loss_b, _ = loss_fn(params, batch, jax.random.PRNGKey(0))
  loss_c, _ = loss_fn(params, batch, jax.random.PRNGKey(1))
  assert float(loss_a) == float(loss_b)
  assert float(loss_a) != float(loss_c)


def test_stage_two_gradient_flows_only_through_its_own_pass(module):
  """d(stage-2 loss)/d(params) must equal the gradient when stage 2's input is a constant.

  Fails if stage 2 were fed anything differentiable from stage 1 (soft inputs, stage-1 hidden
  states) or decoded with another dropout key.
  """
  batch = _copy_batch()
  params = _init(module, batch)
  rng = jax.random.PRNGKey(3)
  config = PadirLossConfig(num_stages=2, vocab_high=VOCAB_SIZE, label_smoothing=0.1, z_loss=1e-3)
  rngs = losses.split_loss_rngs(rng, 2)
  stage2_input = _forward(module, config)(params, batch, rng).stage_inputs[1]
  targets = batch["decoder_target_tokens"]

  def stage2_loss_in_multi_stage(p):
    return losses.multi_stage_loss(module, p, batch, rng, config)[1]["stage2_loss"]

  def stage2_loss_on_constant_input(p):
    logits = _decode(module, p, batch, stage2_input, rngs.encoder_dropout, rngs.stage_dropout[1])
    return cross_entropy.token_cross_entropy(
        logits, targets, (targets > 0).astype(jnp.float32), label_smoothing=0.1, z_loss=1e-3
    )[0]

  np.testing.assert_allclose(
      float(stage2_loss_in_multi_stage(params)),
      float(stage2_loss_on_constant_input(params)),
      rtol=1e-5,
  )
  got = jax.grad(stage2_loss_in_multi_stage)(params)
  expected = jax.grad(stage2_loss_on_constant_input)(params)
  jax.tree_util.tree_map(
      lambda g, e: np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-4, atol=1e-6),
      got,
      expected,
  )
  assert any(np.abs(np.asarray(g)).max() > 0 for g in jax.tree_util.tree_leaves(got))


def test_loss_is_sum_of_reported_terms(module):
  batch = _copy_batch()
  params = _init(module, batch)
  loss, metrics = _loss(module, CONFIG, enable_dropout=False)(params, batch, jax.random.PRNGKey(4))
  stage_sum = sum(float(metrics[f"stage{s}_loss"]) for s in range(1, CONFIG.num_stages + 1))
  assert float(loss) == pytest.approx(
      stage_sum + CONFIG.length_loss_weight * float(metrics["length_loss"]), rel=1e-5
  )
  assert float(metrics["loss"]) == float(loss)
  targets = np.asarray(batch["decoder_target_tokens"])
  assert float(metrics["num_tokens"]) == np.sum(targets > 0)
  assert float(metrics["num_examples"]) == 3  # the all-PAD row does not count
  assert 0 < float(metrics["z_loss"]) < stage_sum
  outputs = _forward(module, CONFIG, enable_dropout=False)(params, batch, jax.random.PRNGKey(4))
  for s in range(1, CONFIG.num_stages + 1):
    correct = np.sum((np.argmax(outputs.stage_logits[s - 1], -1) == targets) & (targets > 0))
    assert float(metrics[f"stage{s}_correct"]) == correct
    assert float(metrics[f"stage{s}_accuracy"]) == pytest.approx(correct / np.sum(targets > 0))
  lengths = np.sum(targets > 0, -1)
  length_loss, length_correct = cross_entropy.length_cross_entropy(
      outputs.length_logits, jnp.asarray(lengths)
  )
  real = lengths > 0
  assert float(metrics["length_loss"]) == pytest.approx(
      np.sum(np.asarray(length_loss)[real]), rel=1e-5
  )
  assert float(metrics["length_accuracy"]) == pytest.approx(
      np.mean(np.asarray(length_correct)[real])
  )
  assert all(np.ndim(v) == 0 for v in metrics.values())


def test_loss_normalizing_factor_scales_the_whole_loss(fake_module):
  batch = _copy_batch()
  params = _init(fake_module, batch)
  rng = jax.random.PRNGKey(5)
  summed, metrics = losses.multi_stage_loss(fake_module, params, batch, rng, CONFIG)
  for factor, divisor in [
      (10.0, 10.0),
      ("NUM_REAL_TARGET_TOKENS", float(metrics["num_tokens"])),
      ("NUMBER_OF_ALL_DECODER_TOKENS", float(4 * LENGTH)),
  ]:
    config = PadirLossConfig(**{**CONFIG.__dict__, "loss_normalizing_factor": factor})
    normalised, normalised_metrics = losses.multi_stage_loss(
        fake_module, params, batch, rng, config
    )
    assert float(normalised) == pytest.approx(float(summed) / divisor, rel=1e-5)
    assert float(normalised_metrics["length_loss"]) == pytest.approx(
        float(metrics["length_loss"]) / divisor, rel=1e-5
    )


def test_decoder_loss_weights_are_used(fake_module):
  batch = _copy_batch()
  params = _init(fake_module, batch)
  weights = np.asarray(batch["decoder_target_tokens"] > 0, np.float32)
  weights[0] = 0.0  # drop the first example's tokens from the loss
  weighted = {**batch, "decoder_loss_weights": jnp.asarray(weights)}
  _, metrics = losses.multi_stage_loss(fake_module, params, weighted, jax.random.PRNGKey(0), CONFIG)
  assert float(metrics["num_tokens"]) == weights.sum()


def test_packed_batch_is_rejected(fake_module):
  batch = _copy_batch()
  params = _init(fake_module, batch)
  packed = {**batch, "decoder_segment_ids": jnp.ones_like(batch["decoder_target_tokens"])}
  with pytest.raises(ValueError, match="packed"):
    losses.multi_stage_loss(fake_module, params, packed, jax.random.PRNGKey(0), CONFIG)


def test_short_training_run_decreases_the_loss(module):
  batch = _copy_batch(seed=1, batch=8)
  params = _init(module, batch)
  config = PadirLossConfig(
      num_stages=2, unmasking_rate=0.3, vocab_high=VOCAB_SIZE, length_loss_weight=0.5
  )
  optimizer = optax.adam(1e-2)

  @jax.jit
  def step(params, opt_state, rng):
    (loss, _), grads = jax.value_and_grad(
        lambda p: losses.multi_stage_loss(module, p, batch, rng, config), has_aux=True
    )(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimizer.init(params)
  history = []
  for i in range(30):
    params, opt_state, loss = step(params, opt_state, jax.random.PRNGKey(i))
    history.append(float(loss))
  assert np.isfinite(history).all()
  # Seen: the fake falls to ~5% of its start, the (shrunk) real network to ~50% in 30 steps.
  assert np.mean(history[-5:]) < 0.75 * np.mean(history[:5]), history


# ----------------------------------------------------------------------------------------------
# Training options: per-example rates, the corruption mix, corrupted-only loss, glancing.


def test_option_fields_from_names_and_lists_equal_members_and_tuples():
  # gin and command lines give names and lists; the config stores members and tuples.
  from_names = PadirLossConfig(
      unmasking_rate_mode="uniform",
      unmasking_rate_range=[0, 1],
      corruption_mix=[0.1, 0.1, 0.8],
      loss_positions="corrupted",
  )
  from_members = PadirLossConfig(
      unmasking_rate_mode=UnmaskingRateMode.UNIFORM,
      unmasking_rate_range=(0.0, 1.0),
      corruption_mix=(0.1, 0.1, 0.8),
      loss_positions=LossPositions.CORRUPTED,
  )
  assert from_names == from_members and hash(from_names) == hash(from_members)
  assert from_names.replacement_mix == (0.1, 0.1, 0.8)
  assert PadirLossConfig().replacement_mix == corruption.RANDOM_MIX
  assert PadirLossConfig(corruption="mask").replacement_mix == corruption.MASK_MIX


def _legacy_multi_stage_loss(module, params, batch, rng, config):
  """The loss as computed before the training options existed, from the primitives: stage 1
  reads corruption_mask(first split key) filled by the fill mode from the second split key."""
  targets = batch["decoder_target_tokens"]
  rngs = losses.split_loss_rngs(rng, config.num_stages)
  mask_rng, token_rng = jax.random.split(rngs.corruption)
  replace = corruption.corruption_mask(mask_rng, targets, config.unmasking_rate)
  if config.corruption == "mask":
    fill = jnp.full(targets.shape, config.mask_id, targets.dtype)
  else:
    fill = jax.random.randint(token_rng, targets.shape, 4, config.vocab_high, dtype=targets.dtype)
  decoder_input = jnp.where(replace, fill, targets)
  weights = (targets > 0).astype(jnp.float32)
  total, logits = 0.0, None
  for stage in range(config.num_stages):
    if stage:
      decoder_input = losses.next_stage_inputs(logits, targets)
    logits = _decode(
        module, params, batch, decoder_input, rngs.encoder_dropout, rngs.stage_dropout[stage]
    )
    total += cross_entropy.token_cross_entropy(
        logits, targets, weights, config.label_smoothing, config.z_loss
    )[0]
  encoded = module.apply(
      {"params": params},
      batch["encoder_input_tokens"],
      method=type(module).encode,
      rngs={"dropout": rngs.encoder_dropout},
  )
  length_logits = module.apply(
      {"params": params}, encoded, batch["encoder_input_tokens"], method=type(module).predict_length
  )
  lengths = jnp.sum(targets > 0, -1)
  length_loss = jnp.sum(
      cross_entropy.length_cross_entropy(length_logits, lengths)[0] * (lengths > 0)
  )
  return total + config.length_loss_weight * length_loss


@pytest.mark.parametrize("fill", ["random", "mask"])
def test_defaults_reproduce_the_loss_before_the_options(fake_module, fill):
  # Same rng, same number: the options' defaults (fixed rate, pure mix, every position) add no
  # random draw and change no weight. (Checked bit for bit against the previous commit too.)
  batch = _copy_batch()
  params = _init(fake_module, batch)
  config = PadirLossConfig(**{**CONFIG.__dict__, "corruption": fill})
  for seed in range(3):
    rng = jax.random.PRNGKey(seed)
    loss, metrics = losses.multi_stage_loss(fake_module, params, batch, rng, config)
    expected = _legacy_multi_stage_loss(fake_module, params, batch, rng, config)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
    assert not set(losses.option_metric_names(config)) and "unmasking_rate" not in metrics


def _kept_counts(stage_input, targets):
  corruptible = (targets != PAD_ID) & (targets != EOS_ID)
  return np.sum(corruptible & (np.asarray(stage_input) == targets), -1), corruptible.sum(-1)


def test_uniform_rate_mode_draws_each_row_its_own_rate(fake_module):
  batch = _copy_batch(batch=16)
  params = _init(fake_module, batch)
  config = PadirLossConfig(
      num_stages=1,
      corruption="mask",
      unmasking_rate_mode="uniform",
      unmasking_rate_range=(0.2, 0.9),
  )
  rng = jax.random.PRNGKey(3)
  outputs = losses.multi_stage_forward(fake_module, params, batch, rng, config)
  targets = np.asarray(batch["decoder_target_tokens"])
  corruption_key = losses.split_loss_rngs(rng, 1).corruption
  rates = np.asarray(
      corruption.uniform_unmasking_rates(jax.random.fold_in(corruption_key, 1), 16, 0.2, 0.9)
  )
  assert rates.min() >= 0.2 and rates.max() < 0.9 and len(np.unique(rates)) == 16
  kept, num = _kept_counts(outputs.stage_inputs[0], targets)  # [MASK] never equals a target
  np.testing.assert_array_equal(kept, np.floor(rates * num.astype(np.float32) + 0.5))
  _, metrics = losses.multi_stage_loss(fake_module, params, batch, rng, config)
  assert float(metrics["unmasking_rate"]) == pytest.approx(rates[num > 0].mean(), rel=1e-6)


def test_corruption_mix_reaches_the_stage_one_input(fake_module):
  batch = _copy_batch(batch=64)
  params = _init(fake_module, batch)
  config = PadirLossConfig(
      num_stages=1, unmasking_rate=0.0, vocab_high=VOCAB_SIZE, corruption_mix=(0.0, 0.0, 1.0)
  )
  rng = jax.random.PRNGKey(0)
  outputs = losses.multi_stage_forward(fake_module, params, batch, rng, config)
  mask_config = PadirLossConfig(num_stages=1, unmasking_rate=0.0, corruption="mask")
  mask_outputs = losses.multi_stage_forward(fake_module, params, batch, rng, mask_config)
  # The mix overrides `corruption` ('random' here): (0, 0, 1) is the mask fill, number for number.
  np.testing.assert_array_equal(
      np.asarray(outputs.stage_inputs[0]), np.asarray(mask_outputs.stage_inputs[0])
  )
  bert = PadirLossConfig(**{**config.__dict__, "corruption_mix": (0.2, 0.2, 0.6)})
  _, metrics = losses.multi_stage_loss(fake_module, params, batch, rng, bert)
  assert 0.4 < float(metrics["corrupted_mask_fraction"]) < 0.8
  assert 0.05 < float(metrics["corrupted_unchanged_fraction"]) < 0.4


def test_corrupted_only_weights_are_the_replaced_positions_plus_eos(fake_module):
  batch = _copy_batch(seed=2, batch=6)
  targets = np.asarray(batch["decoder_target_tokens"])
  user_weights = np.where(targets > 0, 1.0, 0.0).astype(np.float32)
  user_weights[1] *= 0.5  # decoder_loss_weights multiply
  batch = {**batch, "decoder_loss_weights": jnp.asarray(user_weights)}
  params = _init(fake_module, batch)
  config = PadirLossConfig(
      **{**CONFIG.__dict__, "unmasking_rate": 0.4, "loss_positions": "corrupted"}
  )
  rng = jax.random.PRNGKey(6)
  outputs = losses.multi_stage_forward(fake_module, params, batch, rng, config, False)
  rngs = losses.split_loss_rngs(rng, config.num_stages)
  _, replaced = corruption.corrupt_targets_with_mask(
      rngs.corruption, targets, 0.4, vocab_high=VOCAB_SIZE
  )
  replaced = np.asarray(replaced)
  np.testing.assert_array_equal(np.asarray(outputs.stage1_replaced), replaced)
  eos = targets == EOS_ID
  expected = [user_weights * (replaced | eos)]
  for stage in range(1, config.num_stages):
    differs = np.asarray(outputs.stage_inputs[stage]) != targets
    expected.append(user_weights * (differs | eos))
  got = losses.stage_loss_weights(outputs, jnp.asarray(targets), jnp.asarray(user_weights), config)
  for g, e in zip(got, expected):
    np.testing.assert_array_equal(np.asarray(g), e)
  assert 0 < expected[0].sum() < user_weights.sum()  # some positions left out, EOS kept
  assert np.all(expected[0][eos] == user_weights[eos])

  loss, metrics = losses.multi_stage_loss(fake_module, params, batch, rng, config, False)
  total = 0.0
  for stage, weights in enumerate(expected, start=1):
    stage_loss, _, _ = cross_entropy.token_cross_entropy(
        outputs.stage_logits[stage - 1], jnp.asarray(targets), jnp.asarray(weights), 0.1, 1e-3
    )
    assert float(metrics[f"stage{stage}_loss"]) == pytest.approx(float(stage_loss), rel=1e-6)
    assert float(metrics[f"stage{stage}_loss_tokens"]) == pytest.approx(weights.sum())
    total += float(stage_loss)
  # Accuracies stay over every target position.
  assert float(metrics["num_tokens"]) == pytest.approx(user_weights.sum())
  assert float(loss) == pytest.approx(
      total + config.length_loss_weight * float(metrics["length_loss"]), rel=1e-5
  )


class ControlledPredictionNetwork(FakePadirNetwork):
  """The fake, but every decoder pass predicts the target except at even content positions,
  where it predicts another token: so each row's wrong predictions are known in advance."""

  def decode(
      self,
      encoded,
      encoder_input_tokens,
      decoder_input_tokens,
      decoder_target_tokens,
      enable_dropout=True,
  ):
    logits = super().decode(
        encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, enable_dropout
    )
    even = (jnp.arange(decoder_target_tokens.shape[1]) % 2 == 0)[None, :]
    content = (decoder_target_tokens != PAD_ID) & (decoder_target_tokens != EOS_ID)
    wrong_token = jnp.where(decoder_target_tokens == 4, 5, 4)
    predicted = jnp.where(even & content, wrong_token, decoder_target_tokens)
    return 0.0 * logits + 100.0 * jax.nn.one_hot(predicted, self.vocab_size)


def _glancing_setup(**overrides):
  module = ControlledPredictionNetwork()
  batch = _copy_batch(seed=3, batch=12)
  params = _init(module, batch)
  fields = dict(num_stages=2, corruption="mask", unmasking_rate_mode="glancing")
  config = PadirLossConfig(**{**fields, **overrides})
  targets = np.asarray(batch["decoder_target_tokens"])
  content = (targets != PAD_ID) & (targets != EOS_ID)
  wrong = np.sum(content & (np.arange(LENGTH) % 2 == 0), -1)
  return module, batch, params, config, targets, wrong


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 1.0])
def test_glancing_reveals_round_ratio_times_wrong_tokens(ratio):
  module, batch, params, config, targets, wrong = _glancing_setup(glancing_ratio=ratio)
  rng = jax.random.PRNGKey(1)
  outputs = losses.multi_stage_forward(module, params, batch, rng, config)
  revealed, num = _kept_counts(outputs.stage_inputs[0], targets)  # the fill is [MASK]
  expected = np.floor(np.float32(ratio) * wrong.astype(np.float32) + np.float32(0.5))
  np.testing.assert_array_equal(revealed, expected)
  # The rest is corrupted with the configured fill.
  inside = (targets != PAD_ID) & (targets != EOS_ID)
  stage1 = np.asarray(outputs.stage_inputs[0])
  assert np.all((stage1 == targets) | (stage1 == MASK_ID) | ~inside)
  _, metrics = losses.multi_stage_loss(module, params, batch, rng, config)
  assert float(metrics["glancing_ratio"]) == pytest.approx(ratio)
  assert float(metrics["glancing_wrong_fraction"]) == pytest.approx(wrong.sum() / num.sum())
  assert float(metrics["glancing_revealed_fraction"]) == pytest.approx(expected.sum() / num.sum())
  rows = num > 0
  assert float(metrics["unmasking_rate"]) == pytest.approx(np.mean(expected[rows] / num[rows]))
  assert set(losses.option_metric_names(config)) <= set(metrics)


def test_glancing_positions_vary_with_the_rng():
  module, batch, params, config, targets, _ = _glancing_setup(glancing_ratio=0.5)
  a = losses.multi_stage_forward(module, params, batch, jax.random.PRNGKey(0), config)
  b = losses.multi_stage_forward(module, params, batch, jax.random.PRNGKey(1), config)
  assert not np.array_equal(np.asarray(a.stage_inputs[0]), np.asarray(b.stage_inputs[0]))
  np.testing.assert_array_equal(
      _kept_counts(a.stage_inputs[0], targets)[0], _kept_counts(b.stage_inputs[0], targets)[0]
  )


def test_glancing_ratio_anneals_with_the_step_feature():
  module, batch, params, config, targets, wrong = _glancing_setup(
      glancing_ratio=1.0, glancing_ratio_end=0.0, glancing_anneal_steps=10
  )
  np.testing.assert_allclose(
      np.asarray(losses.glancing_ratio(config, jnp.array([0, 5, 10, 20]))), [1.0, 0.5, 0.0, 0.0]
  )
  assert float(losses.glancing_ratio(PadirLossConfig(glancing_ratio=0.3))) == (pytest.approx(0.3))
  with pytest.raises(ValueError, match="glancing_anneal_steps"):
    losses.multi_stage_forward(module, params, batch, jax.random.PRNGKey(0), config)
  stepped = {**batch, losses.TRAIN_STEP_FEATURE: jnp.int32(5)}
  outputs = losses.multi_stage_forward(module, params, stepped, jax.random.PRNGKey(0), config)
  revealed, _ = _kept_counts(outputs.stage_inputs[0], targets)
  np.testing.assert_array_equal(revealed, np.floor(0.5 * wrong + 0.5))


def test_make_train_step_supplies_the_optimizer_step():
  from padir_t5x.core import training  # pylint: disable=g-import-not-at-top

  def loss_fn(params, batch, rng):
    del rng
    loss = jnp.sum(params["w"] ** 2)
    return loss, {"step": batch[losses.TRAIN_STEP_FEATURE]}

  optimizer = training.make_optimizer(training.TrainConfig(num_steps=5, warmup_steps=1))
  params = {"w": jnp.ones(3)}
  opt_state = optimizer.init(params)
  step = jax.jit(training.make_train_step(loss_fn, optimizer))
  seen = []
  for _ in range(3):
    params, opt_state, metrics = step(params, opt_state, {}, jax.random.PRNGKey(0))
    seen.append(int(metrics["step"]))
  assert seen == [0, 1, 2]


def test_padir_base_gin_loss_macros_name_config_fields_with_its_defaults():
  """Without t5x (tests/test_gin.py parses the whole file): every loss_config entry of
  gin/models/padir_base.gin is a PadirLossConfig field, and its macro's value is the default."""
  import ast  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top

  text = (NETWORK_FILE.parents[2] / "gin" / "models" / "padir_base.gin").read_text()
  block = re.search(r"loss_config = \{(.*?)\}", text, flags=re.S).group(1)
  entries = dict(re.findall(r"'(\w+)': %(\w+)", block))
  macros = {
      name: ast.literal_eval(value.split("#")[0].strip())
      for name, value in re.findall(r"^([A-Z_]+) = (.*)$", text, flags=re.M)
      if name in entries.values()
  }
  assert set(entries) <= {f.name for f in dataclasses.fields(PadirLossConfig)}
  for field in ("unmasking_rate_mode", "corruption_mix", "loss_positions", "glancing_ratio"):
    assert entries[field] == field.upper()
  config = PadirLossConfig(**{field: macros[m] for field, m in entries.items()})
  assert config == PadirLossConfig()
