"""The decoding seam (padir_t5x/decoders/decoders.py): every decoder returns Hypotheses of one
shape, and a new drafter for draft-and-verify is one class implementing drafters.Drafter."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from padir_t5x import EOS_ID
from padir_t5x.decoders import ar_decoding
from padir_t5x.decoders import decoders
from padir_t5x.decoders import draft_verify
from padir_t5x.decoders import drafters
from test_draft_verify import (  # tests/test_draft_verify.py: its tiny networks and drafts
    AR,
    BATCH,
    PADIR,
    T,
    VOCAB_HIGH,
    _decoding,
    _params,
    _sources,
)


@dataclasses.dataclass(frozen=True)
class EosDrafter:
  """The laziest drafter there is: every draft is the prefix, then EOS. Not a network at all,
  so draft-and-verify needs a round per output token; strict mode must still give AR greedy."""

  max_input_length: int = T
  max_decode_length: int = T

  def start(self, params, encoder_input_tokens):
    return ()

  def num_drafts(self, round_config, all_candidates):
    return 1

  def draft(self, params, context, prefix, prefix_lengths, rng, round_config, all_candidates, t):
    positions = jnp.arange(t)[None, :]
    tokens = jnp.where(positions < prefix_lengths[:, None], prefix, 0)
    tokens = jnp.where(positions == prefix_lengths[:, None], EOS_ID, tokens)
    return tokens[:, None, :], jnp.ones(prefix.shape[:1], jnp.int32)


def test_every_decoder_returns_hypotheses_of_one_shape():
  ar_params, padir_params = _params(AR, 1, eos_scale=3.0), _params(PADIR, 2)
  sources = _sources(0)
  rng = jax.random.PRNGKey(0)
  config = _decoding()
  built = {
      "padir": decoders.PadirDecoder(PADIR, padir_params, config=config),
      "beam": decoders.ArBeamDecoder(AR, ar_params, beam_size=3, vocab_high=VOCAB_HIGH),
      "greedy": decoders.ArGreedyDecoder(AR, ar_params, vocab_high=VOCAB_HIGH),
      "draft_verify": decoders.DraftVerifyDecoder(
          drafters.PadirDrafter(PADIR),
          padir_params,
          AR,
          ar_params,
          draft_verify.DraftVerifyConfig(config),
      ),
  }
  kept = {"padir": config.num_candidates, "beam": 3, "greedy": 1, "draft_verify": 1}
  out = {}
  for name, decoder in built.items():
    assert (decoder.max_input_length, decoder.max_decode_length) == (T, T)
    hyp = jax.tree_util.tree_map(np.asarray, decoder.decode(sources, rng))
    c = kept[name]
    assert hyp.sequences.shape == (BATCH, c, T), name
    assert hyp.lengths.shape == (BATCH, c) and hyp.steps.shape == (BATCH,), name
    assert (hyp.scores is None) == (name in ("greedy", "draft_verify")), name
    if hyp.scores is not None:
      assert hyp.scores.shape == (BATCH, c)
      assert np.all(np.diff(hyp.scores, axis=1) >= 0), name  # best last
    assert np.all(hyp.steps >= 1), name
    np.testing.assert_array_equal(hyp.best, hyp.sequences[:, -1])
    out[name] = hyp
  # Greedy is the uncached oracle's output, and strict draft-and-verify is greedy's.
  reference = np.asarray(
      ar_decoding.greedy_reference(AR, ar_params, jnp.asarray(sources), T, VOCAB_HIGH)
  )
  np.testing.assert_array_equal(out["greedy"].best, reference)
  np.testing.assert_array_equal(out["draft_verify"].best, reference)
  np.testing.assert_array_equal(out["greedy"].steps, decoders.eos_lengths(reference))


def test_a_new_drafter_is_one_class():
  ar_params = _params(AR, 1, eos_scale=3.0)
  sources = _sources(3)
  decoder = decoders.DraftVerifyDecoder(
      EosDrafter(), (), AR, ar_params, draft_verify.DraftVerifyConfig(_decoding())
  )
  hyp = jax.tree_util.tree_map(np.asarray, decoder.decode(sources, jax.random.PRNGKey(0)))
  reference = np.asarray(
      ar_decoding.greedy_reference(AR, ar_params, jnp.asarray(sources), T, VOCAB_HIGH)
  )
  np.testing.assert_array_equal(hyp.best, reference)
  # A draft of only EOS gains one AR token a round (two calls: its pass and the verify), except
  # the round whose EOS is right.
  assert np.all(hyp.steps >= decoders.eos_lengths(reference))


def test_decoder_settings_are_checked_when_built():
  params = _params(PADIR, 2)
  with pytest.raises(ValueError, match="length_beam 20 exceeds the 11 lengths"):
    decoders.PadirDecoder(PADIR, params, config=_decoding(length_beam=20))
  with pytest.raises(ValueError, match="max_decode_length 13 outside 1..12"):
    decoders.PadirDecoder(PADIR, params, max_decode_length=13, config=_decoding())
  with pytest.raises(ValueError, match="beam_size must be >= 1"):
    decoders.ArBeamDecoder(AR, _params(AR, 1), beam_size=0)
