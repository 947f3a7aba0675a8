"""Drafters of draft-and-verify decoding (padir_t5x/decoders/draft_verify.py): whole drafts that
keep a forced prefix.

`Drafter` is what the draft-and-verify loop needs of its drafter (three methods: `start`,
`num_drafts`, `draft`); `PadirDrafter` is PaDIR's: its length beam restricted to the lengths that
hold the kept prefix and an EOS (`constrained_length_beam`), refined with the prefix forced
(refinement.refine_lengths' `forced`), in the smallest length bucket that holds the longest
candidate. Another non-autoregressive model drafts by implementing `Drafter`.

Shapes: b = batch, s = source length, c = DecodingConfig.num_candidates drafts per example,
k = drafts kept per example, t = max_decode_length, t' = the round's bucket (<= t), L = length
classes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax.numpy as jnp

from padir_t5x.decoders import bucketing
from padir_t5x.decoders import decoding
from padir_t5x.core import layout
from padir_t5x.decoders import length_candidates
from padir_t5x.core import network
from padir_t5x.decoders import refinement
from padir_t5x.decoders.decoding_config import DecodingConfig

Array = jnp.ndarray


def constrained_length_beam(
    length_logits: Array, min_lengths: Array, config: DecodingConfig, t: int
) -> tuple[Array, Array]:
  """The drafter's length beam over the lengths >= min_lengths (per row).

  length_candidates.length_beam on the logits with the shorter lengths at
  DISALLOWED_LENGTH_LOGIT (so their log-prob is ~-1e9); where fewer lengths than candidates
  remain, the extra candidates are clipped up to min_lengths (repeats, which lose on their length
  log-prob).

  Args:
    length_logits: [b, L] float.
    min_lengths: [b] int32, each in 1..t.
    config: the drafter's DecodingConfig.
    t: max_decode_length.

  Returns:
    (lengths [b, c] int32 in min_lengths..t, log_probs [b, c] float32).
  """
  classes = jnp.arange(length_logits.shape[-1])[None, :] + 1  # [1, L] lengths
  allowed = classes >= min_lengths[:, None]  # [b, L]
  logits = jnp.where(allowed, length_logits, layout.DISALLOWED_LENGTH_LOGIT)  # [b, L]
  lengths, log_probs = length_candidates.length_beam(logits, config, t)  # [b, c] each
  return jnp.maximum(lengths, min_lengths[:, None]).astype(jnp.int32), log_probs


class Drafter(Protocol):
  """What draft-and-verify needs of its drafter: whole drafts that keep a forced prefix.

  A drafter is static (hashable: a jit argument); its params travel apart. `PadirDrafter` is
  PaDIR's; another non-autoregressive model drafts by implementing these three methods.
  `round_config` is the drafter's settings for a round (DraftVerifyConfig.decoding for the
  first draft, .redraft_config after), opaque to the loop.
  """

  max_input_length: int
  max_decode_length: int

  def start(self, params: Any, encoder_input_tokens: Array) -> Any:
    """Per-decode context, a pytree of what no round changes (the encoder output, ...)."""

  def num_drafts(self, round_config: Any, all_candidates: bool) -> int:
    """k: the drafts `draft` returns per example (1 unless `all_candidates`)."""

  def draft(
      self,
      params: Any,
      context: Any,
      prefix: Array,
      prefix_lengths: Array,
      rng: Array,
      round_config: Any,
      all_candidates: bool,
      max_decode_length: int,
  ) -> tuple[Array, Array]:
    """Drafts [b, k, t] (best last) whose first prefix_lengths [b] tokens are prefix [b, t]'s
    and that end in EOS after them; and the sequential passes [b] each example ran."""


@dataclasses.dataclass(frozen=True)
class PadirDrafter:
  """PaDIR as a `Drafter`: its length beam restricted to lengths that hold the prefix and an
  EOS (`constrained_length_beam`), refined with the prefix forced (refinement.refine_lengths),
  in the smallest length bucket that holds the longest candidate (lax.switch inside jit)."""

  module: Any  # a network.Transformer with decoder_mode='padir'

  @property
  def max_input_length(self) -> int:
    return self.module.config.max_input_length

  @property
  def max_decode_length(self) -> int:
    return self.module.config.max_target_length

  def start(self, params, encoder_input_tokens: Array):
    encoded, length_logits = network.encode_and_predict_length(
        self.module, params, encoder_input_tokens
    )  # [b, s(+1), d], [b, L]
    # What no pass changes (cross-attention keys and values, ...), computed once per decode
    # (network_refine_fn's rule: tests also draft with stand-in networks, which have none).
    invariants = None
    if isinstance(self.module, network.Transformer):
      invariants = network.decoder_invariants(self.module.config, params, encoded)
    return encoder_input_tokens, encoded, length_logits, invariants

  def num_drafts(self, round_config: DecodingConfig, all_candidates: bool) -> int:
    return round_config.num_candidates if all_candidates else 1

  def draft(
      self,
      params,
      context,
      prefix: Array,
      prefix_lengths: Array,
      rng: Array,
      round_config: DecodingConfig,
      all_candidates: bool,
      max_decode_length: int,
  ) -> tuple[Array, Array]:
    t = max_decode_length
    encoder_input_tokens, encoded, length_logits, invariants = context
    refine_fn = decoding.network_refine_fn(
        self.module, params, encoded, encoder_input_tokens, invariants
    )  # the decoder over the c rows of each example
    min_lengths = jnp.minimum(jnp.maximum(prefix_lengths + 1, round_config.min_length), t)  # [b]
    lengths, length_log_probs = constrained_length_beam(
        length_logits, min_lengths, round_config, t
    )  # [b, c] each

    def draft_at(width: int):
      """A draft over the first `width` positions (one lax.switch branch)."""

      def branch(operands):
        tokens, prefix_lengths, lengths, length_log_probs, round_rng = operands
        kept_prefix = tokens[:, :width]  # [b, t']
        forced = jnp.arange(width)[None, :] < prefix_lengths[:, None]  # [b, t']
        drafts = refinement.refine_lengths(
            refine_fn,
            lengths,
            length_log_probs,
            round_rng,
            round_config,
            width,
            table_length=t,
            forced=forced,
            forced_tokens=kept_prefix,
        )  # sequences [b, c, t'], best last
        kept = drafts.sequences if all_candidates else drafts.sequences[:, -1:, :]
        kept = jnp.where(forced[:, None, :], kept_prefix[:, None, :], kept)  # [b, k, t']
        return jnp.pad(kept, ((0, 0), (0, 0), (0, t - width))), drafts.passes  # [b, k, t], [b]

      return branch

    buckets = bucketing.length_buckets(
        t, round_config.length_buckets, round_config.num_lengths, round_config.min_length
    )
    operands = (prefix, prefix_lengths, lengths, length_log_probs, rng)
    return bucketing.switch_on_bucket(jnp.max(lengths), buckets, draft_at, operands)
