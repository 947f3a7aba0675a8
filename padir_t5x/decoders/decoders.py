"""The decoding seam: one `Decoder` protocol that translate, the benchmarks and T5X share.

A decoder holds a model and its decoding settings and maps a batch of source token ids to
`Hypotheses`, whatever the algorithm behind it (t5x's `DecodeFnCallable` is the model;
fairseq's one iterative-refinement generator the other):

    PadirDecoder(module, params, DecodingConfig)        length beam + iterative refinement
    ArBeamDecoder(module, params, beam_size, alpha)     beam search (ar_decoding)
    ArGreedyDecoder(module, params)                     greedy search (ar_decoding)
    DraftVerifyDecoder(drafter, drafter_params,         the AR verifier's greedy output from a
                       verifier, verifier_params, cfg)  drafter's drafts (draft_verify)

`Translator` (padir_t5x/translate.py) only batches, calls `decode` and detokenises. A new
decoder is one class with `decode`; a new drafter for draft-and-verify is one class
implementing `drafters.Drafter` (drafters.PadirDrafter is PaDIR's).

Shapes: b = batch, s = source length, c = hypotheses kept per example, t = max_decode_length.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import flax
import jax
import jax.numpy as jnp

from padir_t5x import EOS_ID
from padir_t5x.decoders import ar_decoding
from padir_t5x.decoders import decoding
from padir_t5x.decoders import draft_verify
from padir_t5x.decoders import drafters
from padir_t5x.decoders.decoding_config import DecodingConfig

Array = jnp.ndarray


@flax.struct.dataclass
class Hypotheses:
  """What every decoder returns, best hypothesis last along c (increasing score, as t5x).

  Attributes:
    sequences: [b, c, t] int32 tokens: content, EOS, then PAD (no EOS if a row filled t).
    scores: [b, c] float32 hypothesis scores, increasing along c; None for a decoder that keeps
      one hypothesis without a score (greedy search, draft-and-verify).
    lengths: [b, c] int32 hypothesis lengths with EOS (PaDIR: the decoded length, before
      de-duplication).
    steps: [b] int32 sequential decoder calls the example needed (PaDIR: refinement passes;
      beam search: steps the batch ran; greedy: its output length; draft-and-verify: verify
      calls + drafter passes). Encoders are not counted.
  """

  sequences: Array
  scores: Array | None
  lengths: Array
  steps: Array

  @property
  def best(self) -> Array:
    """[b, t] the best hypothesis of each example."""
    return self.sequences[:, -1, :]


class Decoder(Protocol):
  """Decodes a batch of sources: `decode(encoder_input_tokens [b, s] int32, rng) -> Hypotheses`.

  max_input_length / max_decode_length: the longest source (EOS included) it reads, the
  longest output it writes.
  """

  max_input_length: int
  max_decode_length: int

  def decode(self, encoder_input_tokens: Array, rng: Array) -> Hypotheses:
    ...


def eos_lengths(sequences: Array) -> Array:
  """[..., t] -> [...] int32: position of the first EOS + 1, t when there is none."""
  is_eos = sequences == EOS_ID
  t = sequences.shape[-1]
  return jnp.where(jnp.any(is_eos, -1), jnp.argmax(is_eos, -1) + 1, t).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class _Model:
  """A network and its params, decoding up to its own max_target_length unless told less."""

  module: Any
  params: Any
  max_decode_length: int | None = None

  def __post_init__(self):
    table = self.module.config.max_target_length
    if self.max_decode_length is None:
      object.__setattr__(self, "max_decode_length", table)
    elif not 0 < self.max_decode_length <= table:
      raise ValueError(
          f"max_decode_length {self.max_decode_length} outside 1..{table} (the network's "
          "max_target_length)"
      )

  @property
  def max_input_length(self) -> int:
    return self.module.config.max_input_length


@dataclasses.dataclass(frozen=True)
class PadirDecoder(_Model):
  """PaDIR: length beam and iterative refinement (`decode_fn`, default
  decoding.decode_with_network: jitted, length buckets chosen inside jit)."""

  config: DecodingConfig = DecodingConfig()
  decode_fn: decoding.PadirDecodeFn = decoding.decode_with_network

  def __post_init__(self):
    super().__post_init__()
    decodable = self.max_decode_length - self.config.min_length + 1
    if self.config.num_lengths > decodable:
      offsets = (
          f" with length_offsets {self.config.length_offsets} ({self.config.num_lengths} lengths)"
          if self.config.length_offsets
          else ""
      )
      raise ValueError(
          f"length_beam {self.config.length_beam}{offsets} exceeds the {decodable} lengths this "
          f"model can decode (max_target_length {self.max_decode_length})"
      )

  def decode(self, encoder_input_tokens: Array, rng: Array) -> Hypotheses:
    result = self.decode_fn(
        self.module, self.params, encoder_input_tokens, rng, self.config, self.max_decode_length
    )
    return Hypotheses(result.sequences, result.scores, result.lengths, result.passes)


@dataclasses.dataclass(frozen=True)
class ArBeamDecoder(_Model):
  """AR beam search (ar_decoding.beam_search, jitted), GNMT length penalty `alpha`; tokens
  restricted to the real vocabulary [0, vocab_high)."""

  beam_size: int = dataclasses.field(default=4, metadata={"help": "beam size", "min": 1})
  alpha: float = dataclasses.field(
      default=0.6, metadata={"help": "GNMT length penalty", "min": 0.0}
  )
  vocab_high: int | None = None
  early_stopping: bool = True  # False: run all t steps (fixed-work benchmarks)

  def __post_init__(self):
    super().__post_init__()
    if self.beam_size < 1:
      raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")

  def decode(self, encoder_input_tokens: Array, rng: Array) -> Hypotheses:
    del rng  # deterministic
    result = ar_decoding.jit_beam_search(
        self.module,
        self.params,
        jnp.asarray(encoder_input_tokens),
        beam_size=self.beam_size,
        max_decode_length=self.max_decode_length,
        alpha=self.alpha,
        vocab_high=self.vocab_high,
        early_stopping=self.early_stopping,
    )
    b = result.sequences.shape[0]
    steps = jnp.full((b,), result.steps, jnp.int32)  # the batch runs its steps together
    return Hypotheses(result.sequences, result.scores, eos_lengths(result.sequences), steps)


@dataclasses.dataclass(frozen=True)
class ArGreedyDecoder(_Model):
  """AR greedy search (ar_decoding.greedy_search, jitted, cached); one hypothesis, no score."""

  vocab_high: int | None = None

  def decode(self, encoder_input_tokens: Array, rng: Array) -> Hypotheses:
    del rng
    result = ar_decoding.jit_greedy_search(
        self.module,
        self.params,
        jnp.asarray(encoder_input_tokens),
        max_decode_length=self.max_decode_length,
        vocab_high=self.vocab_high,
    )
    sequences = result.sequences[:, None, :]  # [b, 1, t]
    return Hypotheses(sequences, None, eos_lengths(sequences), result.steps)


@dataclasses.dataclass(frozen=True)
class DraftVerifyDecoder:
  """Draft-and-verify (padir_t5x/decoders/draft_verify.py): the verifier's greedy output ('strict')
  from the drafter's drafts; one hypothesis, no score. Both share one vocabulary; the decode reads
  sources and writes outputs no longer than both networks allow."""

  drafter: drafters.Drafter
  drafter_params: Any
  verifier: Any  # a network.Transformer in autoregressive mode
  verifier_params: Any
  config: draft_verify.DraftVerifyConfig

  @property
  def max_input_length(self) -> int:
    return min(self.verifier.config.max_input_length, self.drafter.max_input_length)

  @property
  def max_decode_length(self) -> int:
    return min(self.verifier.config.max_target_length, self.drafter.max_decode_length)

  def decode(self, encoder_input_tokens: Array, rng: Array) -> Hypotheses:
    result = draft_verify.decode_with_drafter(
        self.verifier,
        self.verifier_params,
        self.drafter,
        self.drafter_params,
        encoder_input_tokens,
        rng,
        self.config,
        self.max_decode_length,
    )
    sequences = result.sequences[:, None, :]  # [b, 1, t]
    return Hypotheses(sequences, None, eos_lengths(sequences), result.sequential_calls)


def batch_rng(seed: int, batch_index: int) -> Array:
  """The PRNG key of batch `batch_index` of a run seeded `seed` (translate's, the benchmarks')."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), batch_index)
