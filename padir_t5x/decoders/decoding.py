"""PaDIR inference: length beam, parallel decoding with iterative refinement, de-duplication.

PaDIR (Li et al. 2024, Sec. 3 and App. L) decodes a whole target in parallel. The encoder runs
once; a length classifier proposes the `length_beam` most likely target lengths (optionally
widened by `length_offsets` around each, and each decoded from `inits_per_length` random
initialisations: the candidates); for each candidate, the decoder starts from an initial guess
(uniform random tokens or [MASK]) with EOS at the end and PAD after it, and refines it: each pass
reads the previous pass's argmax (re-masked, padir_t5x/decoders/remasking.py) and predicts every
position again. Decoding stops for an example once a pass no longer changes any of its hypotheses,
or after `max_passes`. Hypotheses are then ranked by their (mean) token log-probability and,
optionally, repeated tokens (the typical failure of parallel decoding) are removed
(padir_t5x/decoders/dedup.py).

`iterative_refinement_decode` is three steps: `length_beam` (which lengths;
padir_t5x/decoders/length_candidates.py), `refinement_pass` (one decoder call over every hypothesis,
inside a lax.while_loop) and `finalise` (dedup, score, sort; both padir_t5x/decoders/refinement.py);
with `refine_top_k` (candidate pruning) the passes after the first refine only each example's k best
candidates. It takes the decoder as a plain `RefineFn`, so it can be tested with hand-made
functions; `decode_with_network` wires in `padir_t5x.core.network.Transformer` and is the default
`PadirDecodeFn` of padir_t5x/t5x_adapter/models.py, which adapts the output (best hypothesis last
along the beam axis, increasing score: the t5x convention). No t5x import. The settings are
`DecodingConfig` (padir_t5x/decoders/decoding_config.py), which this module also exposes: models.py
and translate.py read it as `decoding.DecodingConfig`.

Shapes: b = batch, l = length_beam, c = DecodingConfig.num_candidates hypotheses per example
(l unless length_offsets or inits_per_length are set), n = b * c hypothesis rows,
t = max_decode_length, V = vocabulary size (network output), L = number of length classes,
k = dedup_top_k.
"""

from __future__ import annotations

import functools
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from padir_t5x import PAD_ID
from padir_t5x.decoders import bucketing
from padir_t5x.core import network
from padir_t5x.decoders.decoding_config import DecodingConfig
from padir_t5x.decoders.length_candidates import length_beam
from padir_t5x.decoders.refinement import DecodeResult
from padir_t5x.decoders.refinement import RefineFn
from padir_t5x.decoders.refinement import refine_lengths

Array = jnp.ndarray


class PadirDecodeFn(Protocol):
  """A whole PaDIR decode from source tokens (`PadirModel(decode_fn=...)`).

  Args:
    module: the network (a padir_t5x.core.network.Transformer in padir mode).
    params: its 'params' collection.
    encoder_input_tokens: [b, s] int32.
    rng: PRNG key.
    config: DecodingConfig, vocab_high filled in.
    max_decode_length: t.

  Returns:
    DecodeResult, best hypothesis last along the beam axis.
  """

  def __call__(
      self,
      module: Any,
      params: Any,
      encoder_input_tokens: Array,
      rng: Array,
      config: DecodingConfig,
      max_decode_length: int,
  ) -> DecodeResult:
    ...


# ----------------------------------------------------------------------------------------------
# The three steps together.


def iterative_refinement_decode(
    refine_fn: RefineFn,
    length_logits: Array,
    rng: Array,
    config: DecodingConfig,
    max_decode_length: int,
    length_beam_lengths: Array | None = None,
) -> DecodeResult:
  """Parallel decoding with iterative refinement over a beam of lengths.

  All n = b * c hypotheses (c = config.num_candidates) are decoded together as n rows in
  flat_batch_beam_expand order. Each pass runs `refine_fn` on every row; rows of converged
  examples are still computed (one batched call) but their result is discarded, so their tokens
  and pass count stay frozen.

  Args:
    refine_fn: one decoder pass, see `RefineFn`.
    length_logits: [b, L] float length-classifier logits (class j = length j + 1).
    rng: PRNG key; the output is a deterministic function of it.
    config: DecodingConfig (static under jit).
    max_decode_length: t (static).
    length_beam_lengths: optional [b, l'] int32 lengths to decode instead of the classifier's
      top-l and their offsets (e.g. gold lengths for analysis); their log-probs are still read
      from the classifier; each is decoded config.inits_per_length times.

  Returns:
    DecodeResult with b = length_logits.shape[0], c = config.num_candidates (or
    l' * inits_per_length), t = max_decode_length.
  """
  lengths, length_log_probs = length_beam(
      length_logits, config, max_decode_length, length_beam_lengths
  )  # [b, c] each
  return refine_lengths(refine_fn, lengths, length_log_probs, rng, config, max_decode_length)


# Jitted convenience wrapper: refine_fn must be hashable (a function, or a functools.partial of
# hashable arguments); one compile per (refine_fn, config, shapes).
jit_iterative_refinement_decode = jax.jit(
    iterative_refinement_decode, static_argnames=("refine_fn", "config", "max_decode_length")
)


# ----------------------------------------------------------------------------------------------
# With the PaDIR network.


def network_refine_fn(
    module, params, encoded: Array, encoder_input_tokens: Array, invariants=None
) -> RefineFn:
  """The network's decoder pass as a `RefineFn` over n = b * c hypothesis rows; dropout off.

  What no pass changes is computed once per decode (network.decoder_invariants, here unless
  given): the cross-attention keys and values of each example's encoder output [b, s, d], and
  positional attention's logits. Each pass reads them with the example's c rows grouped
  (flat_batch_beam_expand order), so the encoder output is never copied c times.
  """
  if invariants is None and isinstance(module, network.Transformer):  # (tests pass stand-ins)
    invariants = network.decoder_invariants(module.config, params, encoded)

  def refine_fn(decoder_input_tokens: Array, length_mask: Array) -> Array:
    return module.apply(
        {"params": params},
        encoded,  # [b, s, d]
        encoder_input_tokens,  # [b, s]
        decoder_input_tokens,  # [n, t']
        length_mask,  # [n, t']
        enable_dropout=False,
        invariants=invariants,
        method="decode",
    )  # [n, t', V]

  return refine_fn


@functools.partial(jax.jit, static_argnames=("module", "config", "max_decode_length"))
def _decode_with_network(
    module,
    params,
    encoder_input_tokens: Array,
    rng: Array,
    config: DecodingConfig,
    max_decode_length: int,
    encoded: Array | None,
) -> DecodeResult:
  if encoded is None:
    encoded, length_logits = network.encode_and_predict_length(
        module, params, encoder_input_tokens
    )  # [b, s, d], [b, L]
  else:
    length_logits = module.apply(
        {"params": params}, encoded, encoder_input_tokens, method="predict_length"
    )  # [b, L]
  # The encoder runs once per example; its output is shared by the example's c hypotheses.
  refine_fn = network_refine_fn(module, params, encoded, encoder_input_tokens)

  t = max_decode_length
  lengths, length_log_probs = length_beam(length_logits, config, t)  # [b, c] each
  # The bucket must hold the longest candidate: an example's num_lengths lengths are distinct.
  buckets = bucketing.length_buckets(
      t, config.length_buckets, config.num_lengths, config.min_length
  )

  def decode_at(bucket: int):
    def branch(operands):
      result = refine_lengths(refine_fn, *operands, config, bucket, table_length=t)
      return pad_positions(result, t)

    return branch

  operands = (lengths, length_log_probs, rng)
  return bucketing.switch_on_bucket(jnp.max(lengths), buckets, decode_at, operands)


def pad_positions(result: DecodeResult, max_decode_length: int) -> DecodeResult:
  """A DecodeResult over t' positions padded to t = max_decode_length (PAD tokens, 0 log-probs)."""
  extra = max_decode_length - result.sequences.shape[-1]
  if extra == 0:
    return result
  pad = ((0, 0), (0, 0), (0, extra))
  return result.replace(
      sequences=jnp.pad(result.sequences, pad, constant_values=PAD_ID),
      token_log_probs=jnp.pad(result.token_log_probs, pad),
  )


def decode_with_network(
    module,
    params: Any,
    encoder_input_tokens: Array,
    rng: Array,
    config: DecodingConfig,
    max_decode_length: int,
    encoded: Array | None = None,
) -> DecodeResult:
  """Encodes once, predicts the length beam and decodes it with `iterative_refinement_decode`.

  Jitted (module, config and max_decode_length static): one compile per input shape. A
  `PadirDecodeFn`.

  Args:
    module: a padir_t5x.core.network.Transformer (hashable flax module).
    params: its 'params' collection.
    encoder_input_tokens: [b, s] int32.
    rng: PRNG key (random initial tokens, re-masking).
    config: DecodingConfig.
    max_decode_length: t, at most the network's maximum target length.
    encoded: optional [b, s, d] encoder output, to skip re-encoding.

  Returns:
    DecodeResult, best hypothesis last along axis 1.
  """
  return _decode_with_network(
      module, params, jnp.asarray(encoder_input_tokens), rng, config, max_decode_length, encoded
  )
