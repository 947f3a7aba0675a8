"""End to end on the core alone: train a tiny PaDIR on copy-and-reverse, decode held-out inputs.

Reversal needs every output position to read a different input position and the length to be
predicted from the source, which is what the parallel decoder has to learn on real translation.
"""

import jax
import numpy as np

from padir_t5x.decoders import decoding
from padir_t5x.core import network
from padir_t5x.core import network_config
from padir_t5x.core import training
from padir_t5x.decoders.decoding_config import DecodingConfig
from padir_t5x.core.loss_config import PadirLossConfig

VOCAB_HIGH = 24  # ordinary tokens are [4, 24)
MAX_LENGTH = 12


def _reverse_task(num_examples, seed):
  """Random sequences with no two equal neighbours, so that the final de-duplication (which
  drops a token equal to its left neighbour) cannot change a correct output."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(3, 9, num_examples)
  span = VOCAB_HIGH - 4
  sources = []
  for n in lengths:
    steps = rng.integers(1, span, n)  # a nonzero step mod span never repeats a token
    sources.append((4 + (rng.integers(0, span) + np.cumsum(steps)) % span).tolist())
  targets = [s[::-1] for s in sources]
  return (
      training.pad_batch(sources, MAX_LENGTH, append_eos=True),
      training.pad_batch(targets, MAX_LENGTH, append_eos=True),
  )


def test_tiny_padir_learns_copy_and_reverse():
  train_inputs, train_targets = _reverse_task(20000, seed=0)
  test_inputs, test_targets = _reverse_task(200, seed=1)
  module = network.Transformer(
      network_config.tiny_config(
          vocab_size=32, max_input_length=MAX_LENGTH, max_target_length=MAX_LENGTH, dropout_rate=0.0
      )
  )
  loss_config = PadirLossConfig(
      num_stages=2, unmasking_rate=0.3, vocab_high=VOCAB_HIGH, length_loss_weight=0.5
  )
  train_config = training.TrainConfig(
      num_steps=800, batch_size=64, peak_learning_rate=3e-3, warmup_steps=50, log_every=200
  )
  params, metrics, seconds = training.train(
      module,
      loss_config,
      train_config,
      training.batch_iterator(train_inputs, train_targets, train_config.batch_size, seed=0),
  )
  print(f"trained {train_config.num_steps} steps in {seconds:.0f}s; final metrics {metrics}")

  # The library's defaults otherwise: the paper's 5 length candidates, stutter re-masking,
  # consecutive de-duplication, mean token log-prob plus length log-prob as the score. The toy
  # ids have no words: stutter is by piece.
  decoding_config = DecodingConfig(max_passes=4, vocab_high=VOCAB_HIGH, stutter_unit="piece")
  result = decoding.decode_with_network(
      module,
      params,
      test_inputs,
      jax.random.PRNGKey(7),
      decoding_config,
      max_decode_length=MAX_LENGTH,
  )
  best = np.asarray(result.sequences)[:, -1, :]
  exact_match = float(np.mean(np.all(best == test_targets, axis=-1)))
  passes = np.asarray(result.passes)
  print(
      f"exact match {exact_match:.3f}; passes used: mean {passes.mean():.2f}, "
      f"max {passes.max()}"
  )
  assert passes.max() <= 4
  assert exact_match >= 0.95, f"exact match {exact_match:.3f} < 0.95"
