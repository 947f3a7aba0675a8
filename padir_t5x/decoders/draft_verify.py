"""Draft and verify: the AR model's greedy translation in far fewer sequential calls.

The EM loop trains an AR model and a PaDIR model on the same data with the same architecture.
Used together (speculative decoding with a non-autoregressive drafter, Xia et al. 2023):

1. both encoders run once;
2. PaDIR drafts a whole target in a few parallel passes (its length beam and passes,
   `DraftVerifyConfig.decoding`);
3. the AR model reads the draft in one teacher-forced forward pass (causal: the logits at
   position j see draft tokens < j only) and keeps the longest prefix on which its greedy
   choice equals the draft, plus its own greedy token at the first disagreement, so that every
   round gains at least one token;
4. PaDIR re-drafts the rest with the kept prefix forced (`refinement.refine_lengths`' `forced`),
   over its length beam restricted to lengths that hold the prefix and an EOS
   (`drafters.constrained_length_beam`), in `redraft_passes` passes; or, with `reuse_drafts`,
   the next round first verifies the same draft with the AR token in place of the rejected one
   (no PaDIR pass), re-drafting only once the kept prefix has reached the draft's EOS;
5. repeat until the AR model accepts an EOS or the prefix fills the table.

In 'strict' mode (modes.VerifyMode) every kept token is the AR model's greedy choice given the
tokens before it, so the output is AR greedy decoding's token for token (`ar_decoding.
greedy_reference`, with the same allowed_token_mask restriction), whatever the drafter; a good
drafter only makes it faster. 'tolerant' also keeps a draft token that is among the AR model's
top `top_k` within `margin` nats of its best: fewer rounds, no longer exactly greedy (the
correction at a disagreement is still the AR greedy token).

Sequential model calls per sentence = rounds (one AR verify call each) + PaDIR passes (over all
rounds); AR greedy decoding needs one call per output token (EOS included). The encoders run
once in both and are not counted.

One jitted decode (`draft_verify_decode`): the rounds are a lax.while_loop over the batch in
which rows finish independently (a finished row's later rounds are computed and discarded). As
in `decoding.decode_with_network`, each round drafts and verifies only the smallest length
bucket (DecodingConfig.length_buckets) that holds its longest candidate length, chosen inside
jit by lax.switch (the AR verification likewise, by the draft's length). No t5x import. The
drafter is any `drafters.Drafter` (padir_t5x/decoders/drafters.py); `decode_with_drafter` takes one,
`draft_verify_decode` PaDIR's, `drafters.PadirDrafter`, which this module also exposes
(translate.py reads it as `draft_verify.PadirDrafter`).

Shapes: b = batch, s = source length, c = DecodingConfig.num_candidates drafts per example,
n = b * c, t = max_decode_length, t' = the round's bucket (<= t), L = length classes,
V = vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp

from padir_t5x import EOS_ID
from padir_t5x import PAD_ID
from padir_t5x.decoders import ar_decoding
from padir_t5x.decoders import beam as beam_lib
from padir_t5x.decoders import bucketing
from padir_t5x.core import layout
from padir_t5x.core import network
from padir_t5x.decoders.decoding_config import DecodingConfig
from padir_t5x.decoders.drafters import Drafter
from padir_t5x.decoders.drafters import PadirDrafter
from padir_t5x.core.modes import VerifyMode

Array = jnp.ndarray


@dataclasses.dataclass(frozen=True)
class DraftVerifyConfig:
  """How draft-and-verify decodes (frozen: a static jit argument).

  Attributes:
    decoding: the drafter's DecodingConfig (length beam, init, re-masking, de-duplication, ...);
      its max_passes are the first draft's passes. vocab_high must be the AR model's real
      vocabulary size too (the two models share a vocabulary): the AR greedy choice is
      restricted to ar_decoding.allowed_token_mask(V, vocab_high), as greedy_reference's.
    redraft_passes: passes of every later draft (None: decoding.max_passes). Later drafts start
      from a fresh fill around the forced prefix, like the first.
    verify: VerifyMode (or its name): 'strict' (AR greedy exactly) or 'tolerant'.
    top_k: 'tolerant': a draft token must be among the AR model's top_k tokens ...
    margin: ... and its log-prob at most `margin` nats below the best one. Ignored by 'strict';
      'tolerant' with top_k=1 (or margin=0) keeps what 'strict' keeps.
    reuse_drafts: after a disagreement, the next round verifies the same draft with the AR
      model's token in place of the rejected one (no PaDIR pass: one sequential call), and PaDIR
      re-drafts only once the kept prefix has reached that draft's EOS. Right when the drafter's
      error was a substitution; after an insertion or deletion the rest is misaligned and costs
      a round per token, as AR greedy would. (In a batch, a round drafts for every row when one
      row needs it; only the rows that need a draft take it, so a row's output and counts do not
      depend on its batch, up to the drafter's random fill.)
    shift_variants: with reuse_drafts, a reused draft is verified in three variants at once
      (one call over 3x the rows): the drafter's error taken as a substitution, an insertion or
      a deletion (the rest of the draft in place, shifted right or shifted left by one), and the
      row keeps the variant that gained the most tokens. Strict mode stays exact: every kept
      token is verified.
    verify_candidates: verify every one of the drafter's candidates (its
      decoding.num_candidates: length beam x inits per length x length offsets, each a whole
      draft holding the kept prefix), not only its best-scoring one, in the same AR call (c
      times the rows), and keep the candidate that gained the most tokens: the drafter's score
      picks a length with 11-16% accuracy on dev (benchmarks/README.md), the verifier can tell
      which candidate it agrees with. With reuse_drafts every candidate is kept and reused
      (each in its shift variants, and each stored in the variant that gained most for it), and
      PaDIR re-drafts once the kept prefix has reached every candidate's EOS. One sequential
      call per round whatever c is; more work per call.
  """

  decoding: DecodingConfig = dataclasses.field(default_factory=DecodingConfig)
  redraft_passes: int | None = dataclasses.field(
      default=None,
      metadata={"help": "passes of the drafts after the first (None: max_passes)", "min": 1},
  )
  verify: VerifyMode = dataclasses.field(
      default=VerifyMode.STRICT,
      metadata={"help": "strict: AR greedy exactly; tolerant: also near-best draft tokens"},
  )
  top_k: int = dataclasses.field(
      default=3, metadata={"help": "tolerant: draft token in the AR top-k", "min": 1}
  )
  margin: float = dataclasses.field(
      default=1.0,
      metadata={"help": "tolerant: ... and within this many nats of the AR best", "min": 0.0},
  )
  reuse_drafts: bool = dataclasses.field(
      default=False,
      metadata={
          "help": "after a disagreement, verify the same draft again (AR token in place) before "
          "re-drafting"
      },
  )
  shift_variants: bool = dataclasses.field(
      default=False,
      metadata={
          "help": "with --reuse_drafts: also verify it shifted by one either way (one call, 3x rows)"
      },
  )
  verify_candidates: bool = dataclasses.field(
      default=False,
      metadata={
          "help": "verify all of the drafter's candidates in each AR call and keep the one it "
          "agrees with longest (one call, c x rows)"
      },
  )

  def __post_init__(self):
    object.__setattr__(self, "verify", VerifyMode.coerce(self.verify, "verify"))
    if not isinstance(self.decoding, DecodingConfig):
      raise ValueError(f"decoding must be a DecodingConfig, got {type(self.decoding).__name__}")
    if self.redraft_passes is not None and self.redraft_passes < 1:
      raise ValueError(f"redraft_passes must be >= 1, got {self.redraft_passes}")
    if self.top_k < 1:
      raise ValueError(f"top_k must be >= 1, got {self.top_k}")
    if not (self.margin >= 0 and math.isfinite(self.margin)):
      raise ValueError(f"margin must be finite and >= 0, got {self.margin}")
    if self.shift_variants and not self.reuse_drafts:
      raise ValueError("shift_variants needs reuse_drafts (it varies a reused draft)")

  @property
  def redraft_config(self) -> DecodingConfig:
    """The DecodingConfig of the drafts after the first."""
    if self.redraft_passes is None or self.redraft_passes == self.decoding.max_passes:
      return self.decoding
    return dataclasses.replace(self.decoding, max_passes=self.redraft_passes)


@flax.struct.dataclass
class DraftVerifyResult:
  """sequences [b, t] int32: content, EOS, then PAD (no EOS if a row filled the table);
  rounds [b] int32: AR verify calls; passes [b] int32: PaDIR passes over all rounds; accepted
  [b] int32: draft tokens kept as drafted (EOS included; the AR corrections not)."""

  sequences: Array
  rounds: Array
  passes: Array
  accepted: Array

  @property
  def sequential_calls(self) -> Array:
    """[b] int32 sequential model calls: verify calls + PaDIR passes (encoders not counted)."""
    return self.rounds + self.passes


def agreement(draft: Array, log_probs: Array, config: DraftVerifyConfig) -> Array:
  """[b, t'] bool: where the AR model accepts the draft token (VerifyMode).

  Args:
    draft: [b, t'] int32 draft tokens.
    log_probs: [b, t', V] float32 AR log-probs at each position given the draft before it,
      -inf outside allowed_token_mask.
    config: verify, top_k, margin.
  """
  greedy = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)  # [b, t'] AR greedy choice
  agree = draft == greedy  # [b, t']
  if config.verify is VerifyMode.TOLERANT:
    draft_log_probs = jnp.take_along_axis(log_probs, draft[..., None], axis=-1)[..., 0]  # [b, t']
    best = jnp.max(log_probs, axis=-1)  # [b, t']
    rank = jnp.sum(log_probs > draft_log_probs[..., None], axis=-1)  # [b, t'] better tokens
    near = (rank < config.top_k) & (draft_log_probs >= best - config.margin)  # [b, t']
    agree = agree | near  # [b, t']
  return agree


def accept(
    draft: Array, prefix_lengths: Array, log_probs: Array, config: DraftVerifyConfig, t: int
) -> tuple[Array, Array, Array, Array]:
  """One verification: the kept prefix of a draft, plus the AR token at the first disagreement.

  Args:
    draft: [b, t'] int32 drafts (content, EOS, PAD), equal to the kept prefix at positions
      < prefix_lengths.
    prefix_lengths: [b] int32 P: tokens already kept (all content).
    log_probs: [b, t', V] float32 the AR model's teacher-forced log-probs of the draft.
    config: the acceptance rule.
    t: max_decode_length (a prefix of t tokens ends the row).

  Returns:
    (tokens [b, t'] int32: the new kept prefix then PAD, lengths [b] int32 (>= P + 1),
     ended [b] bool: EOS kept or t tokens, accepted [b] int32: draft tokens kept past P).
  """
  width = draft.shape[1]
  positions = jnp.arange(width)[None, :]  # [1, t']
  draft_lengths = layout.sequence_lengths(draft)  # [b] EOS included
  agree = agreement(draft, log_probs, config)  # [b, t']
  ok = (positions < prefix_lengths[:, None]) | (
      agree & (positions < draft_lengths[:, None])
  )  # [b, t'] kept positions, up to the first disagreement
  first_bad = jnp.where(jnp.all(ok, axis=1), width, jnp.argmin(ok, axis=1))  # [b]
  whole = first_bad >= draft_lengths  # [b] the draft's EOS was accepted
  greedy = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)  # [b, t']
  correction = jnp.take_along_axis(greedy, jnp.minimum(first_bad, width - 1)[:, None], axis=1)[
      :, 0
  ]  # [b] AR greedy token at the first disagreement
  tokens = jnp.where(positions < first_bad[:, None], draft, PAD_ID)  # [b, t']
  fix = ~whole[:, None] & (positions == first_bad[:, None])  # [b, t']
  tokens = jnp.where(fix, correction[:, None], tokens).astype(jnp.int32)  # [b, t']
  lengths = jnp.where(whole, draft_lengths, first_bad + 1).astype(jnp.int32)  # [b]
  ended = whole | (correction == EOS_ID) | (lengths >= t)  # [b]
  return tokens, lengths, ended, (first_bad - prefix_lengths).astype(jnp.int32)


class _State(flax.struct.PyTreeNode):
  """The lax.while_loop carry of the rounds."""

  step: Array  # [] int32 rounds run by the batch
  tokens: Array  # [b, t] int32 kept prefix (with EOS once ended), PAD after
  lengths: Array  # [b] int32 kept tokens
  done: Array  # [b] bool
  rounds: Array  # [b] int32
  passes: Array  # [b] int32
  accepted: Array  # [b] int32
  drafts: Array  # [b, k, t] int32 the drafts kept for reuse (k = 1, or c with verify_candidates)


@functools.partial(jax.jit, static_argnames=("ar_module", "drafter", "config", "max_decode_length"))
def _draft_verify_decode(
    ar_module,
    ar_params,
    drafter: Drafter,
    drafter_params,
    encoder_input_tokens: Array,
    rng: Array,
    config: DraftVerifyConfig,
    max_decode_length: int,
) -> DraftVerifyResult:
  t = max_decode_length
  b = encoder_input_tokens.shape[0]
  positions = jnp.arange(t)[None, :]  # [1, t]
  context = drafter.start(drafter_params, encoder_input_tokens)
  ar_encoded = ar_module.apply(
      {"params": ar_params}, encoder_input_tokens, enable_dropout=False, method="encode"
  )  # [b, s, d]
  allowed = jnp.asarray(
      ar_decoding.allowed_token_mask(ar_module.config.vocab_size, config.decoding.vocab_high)
  )  # [V] as greedy_reference's
  verify_buckets = bucketing.length_buckets(t, config.decoding.length_buckets, 1, 1)

  def padir_draft(state: _State, draft_config) -> tuple[Array, Array]:
    """([b, k, t] drafts holding each active row's kept prefix, [b] passes)."""
    active = ~state.done  # [b]
    # Finished rows draft unconstrained (computed, then discarded): they never widen the bucket.
    prefix_lengths = jnp.where(active, state.lengths, 0)  # [b]
    return drafter.draft(
        drafter_params,
        context,
        state.tokens,
        prefix_lengths,
        jax.random.fold_in(rng, state.step),
        draft_config,
        config.verify_candidates,
        t,
    )

  num_drafts = drafter.num_drafts(config.decoding, config.verify_candidates)  # k
  # The verifier reads each example's encoder output once for its m drafts (rows grouped per
  # example, as beam search's beams), with the cross-attention keys and values projected once
  # for the whole decode, not at every verify call.
  ar_invariants = network.decoder_invariants(ar_module.config, ar_params, ar_encoded)

  def verify_at(width: int):
    """The AR model's teacher-forced pass over the first `width` positions of b * m drafts, and
    `accept` (one lax.switch branch)."""

    def branch(operands):
      draft, prefix_lengths = operands  # [b * m, t], [b * m]
      draft = draft[:, :width]  # [b * m, t']
      ar_inputs = jnp.pad(draft[:, :-1], ((0, 0), (1, 0)))  # [b * m, t'] shifted right, BOS = 0
      logits = ar_module.apply(
          {"params": ar_params},
          ar_encoded,  # [b, s, d]: the m rows of each example grouped over it
          encoder_input_tokens,  # [b, s]
          ar_inputs,
          jnp.ones_like(draft),
          enable_dropout=False,
          invariants=ar_invariants,
          method="decode",
      )  # [b * m, t', V] one teacher-forced pass
      logits = jnp.where(allowed, logits.astype(jnp.float32), -jnp.inf)  # [b * m, t', V]
      log_probs = jax.nn.log_softmax(logits, axis=-1)  # [b * m, t', V]
      kept, kept_lengths, ended, accepted = accept(
          draft, prefix_lengths, log_probs, config, t
      )  # [b * m, t'], [b * m], [b * m], [b * m]
      return jnp.pad(kept, ((0, 0), (0, t - width))), kept_lengths, ended, accepted

    return branch

  def run_round(state: _State, draft_config, reuse: bool) -> _State:
    active = ~state.done  # [b]
    count = active.astype(jnp.int32)  # [b]
    prefix_lengths = jnp.where(active, state.lengths, 0)  # [b] P
    after_prefix = positions >= prefix_lengths[:, None]  # [b, t]
    k = num_drafts
    if reuse:
      # A row drafts anew only once its kept prefix has reached every kept draft's EOS.
      reaches = layout.sequence_lengths(state.drafts) > state.lengths[:, None]  # [b, k]
      need = active & ~jnp.any(reaches, axis=1)  # [b]
      fresh, fresh_passes = jax.lax.cond(
          jnp.any(need),
          lambda s: padir_draft(s, draft_config),
          lambda s: (s.drafts, jnp.zeros((b,), jnp.int32)),
          state,
      )  # [b, k, t], [b]
      old = jnp.where(need[:, None, None], fresh, state.drafts)  # [b, k, t]
      passes = jnp.where(need, fresh_passes, 0)  # [b]
      # Each draft after its rejected token (P - 1), now the AR token: the drafter's error was a
      # substitution (the rest follows as drafted), an insertion (the rejected token comes
      # next) or a deletion (the token after it does). Per draft: shift variants, k drafts.
      kept_prefix = state.tokens[:, None, :]  # [b, 1, t]
      after = after_prefix[:, None, :]  # [b, 1, t]
      variants = [jnp.where(after, old, kept_prefix)]  # [b, k, t]
      # A draft that ended inside the kept prefix has nothing left to offer.
      valid = [need[:, None] | (layout.sequence_lengths(old) > prefix_lengths[:, None])]  # [b, k]
      if config.shift_variants:
        for shifted in (
            jnp.pad(old[..., :-1], ((0, 0), (0, 0), (1, 0))),  # [b, k, t] old[j - 1] at j
            jnp.pad(old[..., 1:], ((0, 0), (0, 0), (0, 1))),  # [b, k, t] old[j + 1] at j
        ):
          variant = jnp.where(after, shifted, kept_prefix)  # [b, k, t]
          variants.append(variant)
          valid.append(
              ~need[:, None] & (layout.sequence_lengths(variant) > prefix_lengths[:, None])
          )  # [b, k]
    else:
      fresh, passes = padir_draft(state, draft_config)  # [b, k, t], [b]
      variants, valid = [fresh], [jnp.ones((b, k), bool)]
    shifts = len(variants)
    m = k * shifts  # rows verified per example, draft-major: (draft, shift)
    by_draft = jnp.stack(variants, axis=2)  # [b, k, shifts, t]
    drafts = by_draft.reshape(b * m, t)  # [b * m, t]
    flat_prefix = beam_lib.flat_batch_beam_expand(prefix_lengths, m)  # [b * m]
    flat_active = beam_lib.flat_batch_beam_expand(active, m)  # [b * m]
    draft_lengths = jnp.where(flat_active, layout.sequence_lengths(drafts), 1)  # [b * m]
    verified = bucketing.switch_on_bucket(
        jnp.max(draft_lengths), verify_buckets, verify_at, (drafts, flat_prefix)
    )
    verified = [beam_lib.unflatten_beam_dim(x, b, m) for x in verified]
    # Each row keeps the variant that gained the most (the first among equals) ...
    gained = jnp.where(jnp.stack(valid, axis=2).reshape(b, m), verified[1], -1)  # [b, m]
    choice = jnp.argmax(gained, axis=1)[:, None]  # [b, 1]
    kept, kept_lengths, ended, accepted = [
        beam_lib.gather_beams(x, choice)[:, 0] for x in verified
    ]  # [b, t], [b], [b], [b]
    # ... and each draft is stored in its own best shift (they stay aligned with the output).
    best_shift = jnp.argmax(gained.reshape(b, k, shifts), axis=2)  # [b, k]
    stored = jnp.take_along_axis(by_draft, best_shift[:, :, None, None], axis=2)  # [b, k, 1, t]
    stored = stored[:, :, 0]  # [b, k, t]
    return _State(
        step=state.step + 1,  # []
        tokens=jnp.where(active[:, None], kept, state.tokens),  # [b, t]
        lengths=jnp.where(active, kept_lengths, state.lengths),  # [b]
        done=state.done | ended,  # [b]
        rounds=state.rounds + count,  # [b]
        passes=state.passes + count * passes,  # [b]
        accepted=state.accepted + count * accepted,  # [b]
        drafts=jnp.where(active[:, None, None], stored, state.drafts),  # [b, k, t]
    )

  zeros = jnp.zeros((b,), jnp.int32)
  state = _State(
      step=jnp.zeros((), jnp.int32),
      tokens=jnp.zeros((b, t), jnp.int32),
      lengths=zeros,
      done=jnp.zeros((b,), bool),
      rounds=zeros,
      passes=zeros,
      accepted=zeros,
      drafts=jnp.zeros((b, num_drafts, t), jnp.int32),
  )
  # The first draft: decoding.max_passes passes.
  state = run_round(state, config.decoding, reuse=False)
  redraft = config.redraft_config
  # Every round gains >= 1 token per active row, so t rounds always suffice.
  state = jax.lax.while_loop(
      lambda s: (s.step < t) & ~jnp.all(s.done),
      lambda s: run_round(s, redraft, config.reuse_drafts),
      state,
  )
  return DraftVerifyResult(
      sequences=state.tokens, rounds=state.rounds, passes=state.passes, accepted=state.accepted
  )


def draft_verify_decode(
    ar_module,
    ar_params: Any,
    padir_module,
    padir_params: Any,
    encoder_input_tokens: Array,
    rng: Array,
    config: DraftVerifyConfig,
    max_decode_length: int,
) -> DraftVerifyResult:
  """Draft-and-verify decoding (see the module docstring); jitted, one compile per shape.

  Args:
    ar_module: the verifier, a network.Transformer with decoder_mode='autoregressive'.
    ar_params: its 'params'.
    padir_module: the drafter, a network.Transformer with decoder_mode='padir', same vocabulary.
    padir_params: its 'params'.
    encoder_input_tokens: [b, s] int32 sources (EOS-terminated, PAD after).
    rng: PRNG key of the drafter (random fills, re-masking); 'strict' output does not depend
      on it.
    config: DraftVerifyConfig (static).
    max_decode_length: t, at most both networks' max_target_length.

  Returns:
    DraftVerifyResult.
  """
  if not padir_module.config.is_padir:
    raise ValueError("padir_module needs decoder_mode='padir'")
  return decode_with_drafter(
      ar_module,
      ar_params,
      PadirDrafter(padir_module),
      padir_params,
      encoder_input_tokens,
      rng,
      config,
      max_decode_length,
  )


def decode_with_drafter(
    ar_module,
    ar_params: Any,
    drafter: Drafter,
    drafter_params: Any,
    encoder_input_tokens: Array,
    rng: Array,
    config: DraftVerifyConfig,
    max_decode_length: int,
) -> DraftVerifyResult:
  """`draft_verify_decode` with any `Drafter` (static, hashable) and its params."""
  if ar_module.config.is_padir:
    raise ValueError("ar_module needs decoder_mode='autoregressive'")
  limits = (
      ("ar_module", ar_module.config.max_target_length),
      ("the drafter", drafter.max_decode_length),
  )
  for name, limit in limits:
    if max_decode_length > limit:
      raise ValueError(
          f"max_decode_length {max_decode_length} exceeds {name}'s max_target_length {limit}"
      )
  return _draft_verify_decode(
      ar_module,
      ar_params,
      drafter,
      drafter_params,
      jnp.asarray(encoder_input_tokens, jnp.int32),
      rng,
      config,
      max_decode_length,
  )
