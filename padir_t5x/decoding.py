"""PaDIR inference: length beam, parallel decoding with iterative refinement, de-duplication.

PaDIR (Li et al. 2024, Sec. 3 and App. L) decodes a whole target in parallel. The encoder runs
once; a length classifier proposes the `length_beam` most likely target lengths (optionally
widened by `length_offsets` around each, and each decoded from `inits_per_length` random
initialisations: the candidates); for each candidate, the decoder starts from an initial guess
(uniform random tokens or [MASK]) with EOS at the end and PAD after it, and refines it: each pass
reads the previous pass's argmax (re-masked, padir_t5x/remasking.py) and predicts every position
again. Decoding stops for an example once a pass no longer changes any of its hypotheses, or
after `max_passes`. Hypotheses are then ranked by their (mean) token log-probability and,
optionally, repeated tokens (the typical failure of parallel decoding) are removed
(padir_t5x/dedup.py).

`iterative_refinement_decode` is three steps: `length_beam` (which lengths), `refinement_pass`
(one decoder call over every hypothesis, inside a lax.while_loop) and `finalise` (dedup, score,
sort); with `refine_top_k` (candidate pruning) the passes after the first refine only each
example's k best candidates. It takes the decoder as a plain `RefineFn`, so it can be tested
with hand-made functions; `decode_with_network` wires in `padir_t5x.network.Transformer` and is the default
`PadirDecodeFn` of padir_t5x/models.py, which adapts the output (best hypothesis last along the
beam axis, increasing score: the t5x convention). No t5x import.

Shapes: b = batch, l = length_beam, c = DecodingConfig.num_candidates hypotheses per example
(l unless length_offsets or inits_per_length are set), n = b * c hypothesis rows,
t = max_decode_length, V = vocabulary size (network output), L = number of length classes,
k = dedup_top_k.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Protocol

import flax
import jax
import jax.numpy as jnp
import numpy as np

from padir_t5x import EOS_ID
from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x import MASK_ID
from padir_t5x import PAD_ID
from padir_t5x import beam as beam_lib
from padir_t5x import bucketing
from padir_t5x import dedup as dedup_lib
from padir_t5x import layout
from padir_t5x import network
from padir_t5x import remasking
from padir_t5x.modes import DedupMode
from padir_t5x.modes import FillMode
from padir_t5x.modes import PredictionMode
from padir_t5x.modes import RemaskMode
from padir_t5x.modes import ScoreMode
from padir_t5x.modes import StutterUnit

Array = jnp.ndarray


class RefineFn(Protocol):
  """One decoder pass over all hypotheses.

  Args:
    decoder_input_tokens: [n, t] int32: the current guess (content, EOS at length-1, PAD after).
    length_mask: [n, t] int32: 1 at positions < length (EOS included), 0 after. The network
      takes it as `decoder_target_tokens` (only its non-zero pattern matters there).

  Returns:
    [n, t, V] float logits for every position.
  """

  def __call__(self, decoder_input_tokens: Array, length_mask: Array) -> Array:
    ...


@dataclasses.dataclass(frozen=True)
class DecodingConfig:
  """How PaDIR decodes.

  Attributes:
    length_beam: number of target lengths decoded per example (top-l of the length classifier).
    max_passes: maximum number of refinement passes (decoder calls).
    init: FillMode (or its name) of the first decoder input's content positions: 'random'
      (uniform tokens from [vocab_low, vocab_high), as the 'random' training corruption) or
      'mask' (mask_id).
    remask: RemaskMode: which positions of a pass's prediction are re-filled (as `init`) in the
      next pass's input, so that the decoder reconsiders them instead of copying them: 'none',
      or 'stutter' (positions that repeat what precedes them: see `stutter_unit`), or
      'low_confidence' (mask-predict, Ghazvininejad et al. 2019: after pass i of T = max_passes, the
      floor((T - i - 1) / T * N) of a row's N content positions with the lowest log-prob of
      their current prediction; see remasking.remask_low_confidence). 'low_confidence' turns
      off early stopping: its schedule means T passes (the input changes every pass, so an
      unchanged prediction is no fixed point), and every example runs all of them.
    score: ScoreMode, the hypothesis score from the last pass's log-probs at the predicted
      content tokens (EOS excluded): 'mean', 'sum' or 'length_penalty'
      (sum / ((5 + length) / 6) ** alpha, GNMT-style, length with EOS).
    length_penalty_alpha: alpha of 'length_penalty'.
    add_length_log_prob: add the length classifier's log-prob of the hypothesis length to the
      token score (default on: on the toy reversal task, a model whose length classifier is 100%
      right picked a wrong length for 9-14% of examples with 3 candidates on the mean token
      log-prob alone, and none with the length log-prob added).
    dedup: DedupMode, the final de-duplication: 'none', 'consecutive' or 'optimal'
      (padir_t5x/dedup.py).
    dedup_top_k: candidates per position for 'optimal' (>= 2, so a solution always exists).
    vocab_low: first ordinary id; ids below it (PAD, EOS, UNK, MASK) are never predicted at
      content positions, and random tokens are drawn from [vocab_low, vocab_high).
    vocab_high: real vocabulary size (exclusive); ids >= vocab_high (padding of the embedding
      table) are never predicted. None until known: PadirModel fills it in from its output
      vocabulary; decoding with init='random' raises if it is still None.
    mask_id: the [MASK] id.
    min_length: shortest length (EOS included) the length beam may choose. The default 2 rules
      out the empty translation: with no content token its 'mean' or 'sum' score would be 0,
      the best possible, so an EOS-only hypothesis in the beam would always win.
    length_buckets: decode lengths to choose from inside jit (`decode_with_network`): the
      passes refine only the smallest bucket (or the full table) that holds the longest
      candidate length, instead of every position of the table; the hypotheses are the same.
      () refines the full table. Each bucket is one lax.switch branch, compiled once: finer
      buckets waste fewer positions and cost compile time (on the 2-core CPU, Multi30k dev,
      T=4, l=5: 19.0 ms median with these, 16.4 ms with 12, 16, 20, 24, 32, 48, 64 and 12 s
      compile instead of 9; benchmarks/README.md).
    stutter_unit: StutterUnit, what stutter is for `remask='stutter'` and
      `dedup='consecutive'` (layout.stutter_mask): 'word' (a whole word repeating the word
      before it; the default, since SentencePiece splits words like "apples" into `▁a p p le s`,
      whose equal pieces are no stutter) or 'piece' (a piece equal to its left neighbour: the
      rule for vocabularies without words, e.g. integer ids). 'optimal' de-duplication stays
      piece-level.
    word_starts: the vocabulary's word-start table ([V] bool: which ids begin a word), needed by
      stutter_unit='word'; a `layout.WordStarts` or anything numpy turns into a 1-D bool array
      (padir_t5x.vocab.word_start_table(processor) builds it from a SentencePiece model). None
      until known: PadirModel fills it in from its output vocabulary, translate and the
      quickstart from theirs; decoding with 'word' stutter raises if it is still None. A config
      field rather than a decode argument: it reaches re-masking and de-duplication through
      the config they already take, with no signature change (decode_fn, RefineFn), and as a
      static value (hashed once, compared by content) it is a V-bool constant of the program.

    inits_per_length: random initialisations decoded per candidate length (rows that differ
      only by their random initial tokens, drawn from the rng like every row's); the best
      score wins among them as among lengths. > 1 needs init='random' ([MASK] initialisations
      would all be equal).
    length_offsets: radius r: each top-l length L also brings L-r..L+r (clipped to
      min_length..max_decode_length), each scored with its own length log-prob. Candidate
      lengths are distinct: a length already proposed (two top-l lengths' windows overlap, or
      clipping folds a window onto its edge) is replaced by the most likely length not yet
      proposed, so an example decodes exactly num_lengths = l * (2r + 1) distinct lengths.
    prediction: PredictionMode: 'last' (a pass predicts the argmax of its own log-probs) or
      'summed' (the argmax of the log-probs summed over the passes so far, which damps
      oscillation between passes; combines with any `remask`). The score, the optimal dedup and
      'low_confidence' then use the last pass's log-probs of those predicted tokens (the
      model's belief about the final hypothesis given its final input). Early stopping with
      'summed' needs a fixed point: the prediction unchanged and equal to the pass's own
      argmax (an unchanged prediction alone could still flip under further summing).
    early_stopping: stop an example once a pass changes none of its hypotheses (default). False
      runs every example for all max_passes passes: fixed work per decode, for benchmarks that
      compare decoders at equal work (benchmarks/accelerator.py); a fixed point stays fixed
      unless stutter re-masking refills it, so the output can differ only through that.
    refine_top_k: candidate pruning: after the first pass over all c candidates, only each
      example's k best by the score (`score`, with `add_length_log_prob`, as `finalise` ranks
      them) take the later passes: those run over b * k rows instead of b * c, the kept rows
      gathered so that the decoder's batch really shrinks. The other c - k candidates keep their
      first-pass hypotheses and scores (those of an example that converged after one pass), so
      the result keeps its [b, c, t] shape (t5x's num_decodes = num_candidates) and the final
      ranking is over all c. An example converges when its k kept hypotheses stop changing.
      None (default) refines all c in one loop; 1 <= k <= num_candidates, and k =
      num_candidates runs the pruning path with nothing pruned (the same hypotheses as None,
      one more compiled pass).

  The defaults are the paper's headline setting (Li et al. 2024): 5 length candidates, 4 passes,
  stutter re-masking between passes.
  """

  length_beam: int = 5
  max_passes: int = 4
  init: FillMode = FillMode.RANDOM
  remask: RemaskMode = RemaskMode.STUTTER
  score: ScoreMode = ScoreMode.MEAN
  length_penalty_alpha: float = 0.6
  add_length_log_prob: bool = True
  dedup: DedupMode = DedupMode.CONSECUTIVE
  dedup_top_k: int = 4
  vocab_low: int = FIRST_ORDINARY_ID
  vocab_high: int | None = None
  mask_id: int = MASK_ID
  min_length: int = 2
  length_buckets: tuple[int, ...] = (16, 24, 32, 48, 64, 96, 128)
  stutter_unit: StutterUnit = StutterUnit.WORD
  word_starts: layout.WordStarts | None = None
  inits_per_length: int = 1
  length_offsets: int = 0
  prediction: PredictionMode = PredictionMode.LAST
  early_stopping: bool = True
  refine_top_k: int | None = None

  def __post_init__(self):
    # Frozen: store members, so a config built from names equals (and hashes as, for jit) one
    # built from the members.
    for name, mode in (
        ("init", FillMode),
        ("remask", RemaskMode),
        ("score", ScoreMode),
        ("dedup", DedupMode),
        ("stutter_unit", StutterUnit),
        ("prediction", PredictionMode),
    ):
      object.__setattr__(self, name, mode.coerce(getattr(self, name), name))
    if self.min_length < 1:
      raise ValueError(f"min_length must be >= 1, got {self.min_length}")
    buckets = tuple(sorted({int(b) for b in self.length_buckets}))
    if any(b < 1 for b in buckets):
      raise ValueError(f"length_buckets must be positive, got {self.length_buckets}")
    object.__setattr__(self, "length_buckets", buckets)
    if self.length_beam < 1:
      raise ValueError(f"length_beam must be >= 1, got {self.length_beam}")
    if self.max_passes < 1:
      raise ValueError(f"max_passes must be >= 1, got {self.max_passes}")
    if self.length_penalty_alpha < 0:
      raise ValueError(f"length_penalty_alpha must be >= 0, got {self.length_penalty_alpha}")
    if self.dedup is DedupMode.OPTIMAL and self.dedup_top_k < 2:
      raise ValueError(f"dedup='optimal' needs dedup_top_k >= 2, got {self.dedup_top_k}")
    if self.vocab_low < 0:
      raise ValueError(f"vocab_low must be >= 0, got {self.vocab_low}")
    if self.vocab_low <= max(PAD_ID, EOS_ID):
      raise ValueError(f"vocab_low must exceed the PAD and EOS ids, got {self.vocab_low}")
    if self.vocab_high is not None and self.vocab_high <= self.vocab_low:
      raise ValueError(f"ordinary id range [{self.vocab_low}, {self.vocab_high}) is empty")
    if self.word_starts is not None and not isinstance(self.word_starts, layout.WordStarts):
      try:
        object.__setattr__(self, "word_starts", layout.WordStarts(self.word_starts))
      except ValueError as e:
        raise ValueError(f"word_starts: {e}") from None
    if (
        self.word_starts is not None
        and self.vocab_high is not None
        and len(self.word_starts) < self.vocab_high
    ):
      raise ValueError(
          f"word_starts covers {len(self.word_starts)} ids, fewer than vocab_high "
          f"{self.vocab_high}"
      )
    if self.inits_per_length < 1:
      raise ValueError(f"inits_per_length must be >= 1, got {self.inits_per_length}")
    if self.inits_per_length > 1 and self.init is not FillMode.RANDOM:
      raise ValueError(
          f"inits_per_length={self.inits_per_length} needs init='random' ({str(self.init)!r} "
          "initialisations of a length are all equal)"
      )
    if self.length_offsets < 0:
      raise ValueError(f"length_offsets must be >= 0, got {self.length_offsets}")
    if self.refine_top_k is not None and not 1 <= self.refine_top_k <= self.num_candidates:
      raise ValueError(
          f"refine_top_k must be in 1..num_candidates ({self.num_candidates}: length_beam "
          f"{self.length_beam} x {self.num_candidates // self.length_beam} per length) or None, "
          f"got {self.refine_top_k}"
      )

  @property
  def num_lengths(self) -> int:
    """Distinct lengths decoded per example: length_beam * (2 * length_offsets + 1)."""
    return self.length_beam * (2 * self.length_offsets + 1)

  @property
  def num_candidates(self) -> int:
    """Hypotheses per example (the DecodeResult beam axis): num_lengths * inits_per_length."""
    return self.num_lengths * self.inits_per_length

  def stutter_word_starts(self) -> np.ndarray | None:
    """The `word_starts` argument of layout.stutter_mask for `stutter_unit`.

    None for 'piece'; the [V] bool table for 'word' (ValueError naming the field if unset).
    """
    if self.stutter_unit is StutterUnit.PIECE:
      return None
    if self.word_starts is None:
      raise ValueError(
          "stutter_unit='word' needs DecodingConfig.word_starts, the vocabulary's word-start "
          "table (padir_t5x.vocab.word_start_table(processor)); set it, or use "
          "stutter_unit='piece'"
      )
    return self.word_starts.table

  def fill(self, rng: Array, shape: tuple[int, int], table_length: int | None = None) -> Array:
    """int32 [n, t] tokens for positions without a prediction (the `init` FillMode).

    Random tokens are drawn over [n, table_length] (default t) positions and cut to t, so that
    a row's tokens do not depend on how many positions a (bucketed) decode refines.
    """
    rows, t = shape
    tokens = layout.fill_tokens(
        rng,
        (rows, max(t, table_length or t)),
        self.init,
        vocab_low=self.vocab_low,
        vocab_high=self.vocab_high,
        mask_id=self.mask_id,
    )
    return tokens[:, :t]


@flax.struct.dataclass
class DecodeResult:
  """Decoded hypotheses, best last along the beam axis (increasing score, as t5x).

  The beam axis holds c = DecodingConfig.num_candidates hypotheses (l by default).

  Attributes:
    sequences: [b, c, t] int32 tokens after de-duplication: content, EOS, then PAD.
    scores: [b, c] float32 hypothesis scores (see DecodingConfig.score), increasing along c.
    lengths: [b, c] int32 hypothesis lengths (EOS included) as decoded, before de-duplication.
    passes: [b] int32 refinement passes the example ran (all its hypotheses together).
    token_log_probs: [b, c, t] float32 log-prob of each token of the scored hypothesis (before
      'consecutive' de-duplication, the Viterbi tokens for 'optimal'); 0 at EOS and PAD.
  """

  sequences: Array
  scores: Array
  lengths: Array
  passes: Array
  token_log_probs: Array


class PadirDecodeFn(Protocol):
  """A whole PaDIR decode from source tokens (`PadirModel(decode_fn=...)`).

  Args:
    module: the network (a padir_t5x.network.Transformer in padir mode).
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
# Step 1: the length beam.


def select_lengths(
    length_logits: Array, length_beam: int, max_decode_length: int, min_length: int = 1
) -> tuple[Array, Array]:
  """The `length_beam` most likely lengths in min_length..max_decode_length, most likely first.

  Class j of the classifier stands for length j + 1 (length 1 = EOS only). Classes whose length
  exceeds max_decode_length are masked out before the softmax, so the returned log-probs are
  renormalised over the lengths that can actually be decoded.

  Args:
    length_logits: [b, L] float.
    length_beam: l, at most min(L, max_decode_length).
    max_decode_length: t.
    min_length: shortest allowed length (EOS included).

  Returns:
    (lengths [b, l] int32, log_probs [b, l] float32).
  """
  num_classes = length_logits.shape[-1]
  num_allowed = min(num_classes, max_decode_length) - (min_length - 1)
  if length_beam > num_allowed:
    raise ValueError(
        f"length_beam {length_beam} exceeds the number of decodable lengths "
        f"({num_allowed}: {min_length}..min({num_classes} classes, "
        f"max_decode_length {max_decode_length}))"
    )
  log_probs = layout.length_log_probs(length_logits, max_decode_length, min_length)
  top_log_probs, top_classes = jax.lax.top_k(log_probs, length_beam)
  return (top_classes + 1).astype(jnp.int32), top_log_probs


def offset_lengths(
    log_probs: Array, top_lengths: Array, length_offsets: int, min_length: int
) -> Array:
  """[b, l * (2r + 1)] int32 distinct lengths: L-r..L+r around each top length L, in order.

  Each window is clipped to the decodable lengths (those of finite log-prob, a range
  min_length..max). A length already proposed by an earlier slot (overlapping windows, or a
  window clipped onto its edge) is replaced by the most likely length not yet proposed.

  Args:
    log_probs: [b, L] float32 length log-probs, -inf at the lengths that cannot be decoded
      (layout.length_log_probs with max_length and min_length).
    top_lengths: [b, l] int32 decodable lengths (select_lengths).
    length_offsets: r >= 0.
    min_length: shortest decodable length.

  Returns:
    [b, l * (2r + 1)] int32; the caller checks that l * (2r + 1) lengths are decodable.
  """
  batch_size, num_classes = log_probs.shape
  decodable = jnp.isfinite(log_probs)  # [b, L]
  longest = num_classes - jnp.argmax(decodable[:, ::-1], axis=-1)  # [b]
  offsets = jnp.arange(-length_offsets, length_offsets + 1, dtype=jnp.int32)  # [2r + 1]
  windows = top_lengths.astype(jnp.int32)[:, :, None] + offsets  # [b, l, 2r + 1]
  windows = jnp.clip(windows, min_length, longest[:, None, None])  # [b, l, 2r + 1]
  proposed = windows.reshape(batch_size, -1)  # [b, c']

  def choose(used, length):
    """used [b, L] bool (classes chosen so far), length [b] -> (used, chosen length [b])."""
    rows = jnp.arange(batch_size)
    taken = used[rows, length - 1]  # [b]
    fallback = jnp.argmax(jnp.where(used, -jnp.inf, log_probs), axis=-1)  # [b] class
    chosen = jnp.where(taken, fallback, length - 1)  # [b] class
    return used.at[rows, chosen].set(True), (chosen + 1).astype(jnp.int32)

  _, lengths = jax.lax.scan(choose, jnp.zeros_like(decodable), proposed.T)  # [c', b]
  return lengths.T  # [b, c']


def length_beam(
    length_logits: Array,
    config: DecodingConfig,
    max_decode_length: int,
    given_lengths: Array | None = None,
) -> tuple[Array, Array]:
  """The candidates' lengths and log-probs: (lengths [b, c] int32, log_probs [b, c] f32).

  The classifier's top-l (`select_lengths`) with `offset_lengths` around them when
  config.length_offsets > 0, or `given_lengths` [b, l'] (e.g. gold lengths for analysis; no
  offsets) clipped to 1..t; log-probs are the classifier's, renormalised over the decodable
  lengths. Each length is repeated config.inits_per_length times (adjacent rows), so
  c = config.num_candidates (l' * inits_per_length for given lengths).
  """
  if given_lengths is not None:
    lengths = jnp.clip(given_lengths.astype(jnp.int32), 1, max_decode_length)
    log_probs = layout.length_log_probs(length_logits, max_decode_length)
    top_log_probs = layout.lookup_length_log_probs(log_probs, lengths)
  elif config.length_offsets == 0:
    lengths, top_log_probs = select_lengths(
        length_logits, config.length_beam, max_decode_length, config.min_length
    )
  else:
    num_classes = length_logits.shape[-1]
    num_allowed = min(num_classes, max_decode_length) - (config.min_length - 1)
    if config.num_lengths > num_allowed:
      raise ValueError(
          f"length_beam {config.length_beam} with length_offsets {config.length_offsets} asks "
          f"for {config.num_lengths} distinct lengths, more than the {num_allowed} decodable "
          f"ones ({config.min_length}..min({num_classes} classes, max_decode_length "
          f"{max_decode_length}))"
      )
    top, _ = select_lengths(
        length_logits, config.length_beam, max_decode_length, config.min_length
    )  # [b, l]
    log_probs = layout.length_log_probs(length_logits, max_decode_length, config.min_length)
    lengths = offset_lengths(log_probs, top, config.length_offsets, config.min_length)
    top_log_probs = layout.lookup_length_log_probs(log_probs, lengths)
  if config.inits_per_length > 1:
    lengths = jnp.repeat(lengths, config.inits_per_length, axis=1)
    top_log_probs = jnp.repeat(top_log_probs, config.inits_per_length, axis=1)
  return lengths, top_log_probs


# ----------------------------------------------------------------------------------------------
# Step 2: the refinement passes.


def restrict_logits(logits: Array, vocab_low: int, vocab_high: int | None) -> Array:
  """Sets logits of ids outside [vocab_low, vocab_high) to -inf, so they are never predicted.

  PAD, EOS and MASK are placed by the decoder's layout, never predicted; predicting them at a
  content position would silently shorten or corrupt the hypothesis.
  """
  ids = jnp.arange(logits.shape[-1])
  allowed = ids >= vocab_low
  if vocab_high is not None:
    allowed = allowed & (ids < vocab_high)
  return jnp.where(allowed, logits.astype(jnp.float32), -jnp.inf)


def initial_tokens(
    rng: Array,
    lengths: Array,
    max_decode_length: int,
    config: DecodingConfig,
    table_length: int | None = None,
) -> Array:
  """[n, t] int32 first decoder input: random or MASK content, EOS at length-1, PAD after."""
  content, eos, _ = layout.length_layout(lengths, max_decode_length)
  fill = config.fill(rng, (lengths.shape[0], max_decode_length), table_length)
  return layout.frame_tokens(fill, content, eos)


class RowLayout(NamedTuple):
  """The layout of the n hypothesis rows (padir_t5x/layout.py), fixed for the whole decode."""

  lengths: Array  # [n] int32, EOS included
  content: Array  # [n, t] bool
  eos: Array  # [n, t] bool
  length_mask: Array  # [n, t] int32
  table_length: int  # T >= t: random fills are drawn over T positions (see DecodingConfig.fill)
  # Forced positions (refine_lengths' `forced`): [n, t] bool content positions whose token is
  # given, and [n, t] int32 those tokens; None (the default) forces nothing.
  forced: Array | None = None
  forced_tokens: Array | None = None


def force_tokens(tokens: Array, rows: RowLayout) -> Array:
  """[n, t] tokens with the forced positions (if any) set to their given tokens."""
  if rows.forced is None:
    return tokens
  return jnp.where(rows.forced, rows.forced_tokens, tokens).astype(jnp.int32)


def _force_candidates(
    candidate_ids: Array, candidate_log_probs: Array, log_probs: Array, rows: RowLayout
) -> tuple[Array, Array]:
  """Candidate slot 0 (the prediction) at the forced positions becomes the forced token, with
  this pass's log-prob of it; [n, t, k], [n, t, k] -> same. No-op without forced positions."""
  if rows.forced is None:
    return candidate_ids, candidate_log_probs
  first = force_tokens(candidate_ids[..., 0], rows)[..., None]  # [n, t, 1]
  first_log_prob = jnp.take_along_axis(log_probs, first, axis=-1)  # [n, t, 1]
  return (
      jnp.concatenate([first, candidate_ids[..., 1:]], axis=-1),  # [n, t, k]
      jnp.concatenate([first_log_prob, candidate_log_probs[..., 1:]], axis=-1),  # [n, t, k]
  )


class RefinementState(flax.struct.PyTreeNode):
  """The lax.while_loop carry of the passes."""

  step: Array  # [] int32 passes run so far (by the whole batch)
  inputs: Array  # [n, t] int32 next pass's decoder input
  predictions: Array  # [n, t] int32 last pass's framed argmax
  candidate_ids: Array  # [n, t, k'] int32 top-k' ids of the last pass (k' = k or 1)
  candidate_log_probs: Array  # [n, t, k'] float32 their log-probs
  done: Array  # [b] bool: converged, frozen
  passes: Array  # [b] int32
  # [n, t, V] float32 log-probs summed over the passes so far (prediction='summed'), else None.
  log_prob_sum: Array | None = None


def refinement_pass(
    refine_fn: RefineFn, state: RefinementState, rows: RowLayout, rng: Array, config: DecodingConfig
) -> RefinementState:
  """One decoder call over all n rows; rows of converged examples keep their frozen state.

  An example converges when no prediction of any of its c hypotheses changed (the first pass
  always counts as a change: its "previous prediction" is the initial guess); with
  prediction='summed' also every content prediction must equal the pass's own argmax (else
  more summing could still flip it), and with remask='low_confidence' no example converges
  before max_passes (see DecodingConfig.remask).
  """
  batch_size = state.done.shape[0]
  n = state.inputs.shape[0]
  beam = n // batch_size
  k = state.candidate_ids.shape[-1]
  summed = config.prediction is PredictionMode.SUMMED
  logits = refine_fn(state.inputs, rows.length_mask)  # [n, t, V]
  log_probs = jax.nn.log_softmax(
      restrict_logits(logits, config.vocab_low, config.vocab_high), axis=-1
  )  # [n, t, V] float32, -inf outside the ordinary ids
  if summed:
    log_prob_sum = state.log_prob_sum + log_probs  # [n, t, V] float32
    _, candidate_ids = jax.lax.top_k(log_prob_sum, k)  # [n, t, k] argmax of the sum first
    candidate_ids = candidate_ids.astype(jnp.int32)  # [n, t, k]
    candidate_log_probs = jnp.take_along_axis(log_probs, candidate_ids, axis=-1)  # [n, t, k]
  else:
    log_prob_sum = state.log_prob_sum  # None
    # top_k's first entry is the argmax (lowest id among ties), so it is the prediction.
    candidate_log_probs, candidate_ids = jax.lax.top_k(log_probs, k)  # [n, t, k] each
    candidate_ids = candidate_ids.astype(jnp.int32)  # [n, t, k]
  candidate_ids, candidate_log_probs = _force_candidates(
      candidate_ids, candidate_log_probs, log_probs, rows
  )  # [n, t, k] each: the forced token (if any) is the prediction
  predictions = layout.frame_tokens(candidate_ids[..., 0], rows.content, rows.eos)  # [n, t]
  changed_rows = jnp.any(predictions != state.predictions, axis=-1)  # [n]
  if summed:
    own_argmax = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)  # [n, t] this pass alone
    free = rows.content if rows.forced is None else rows.content & ~rows.forced  # [n, t]
    unsettled = free & (own_argmax != candidate_ids[..., 0])  # [n, t]
    changed_rows = changed_rows | jnp.any(unsettled, axis=-1)  # [n]
  changed = jnp.any(beam_lib.unflatten_beam_dim(changed_rows, batch_size, beam), axis=-1)  # [b]
  changed = changed | (state.step == 0)  # [b]
  if config.remask is RemaskMode.LOW_CONFIDENCE or not config.early_stopping:
    changed = jnp.ones_like(changed)  # [b] every example runs all max_passes passes
  active = ~state.done  # [b] examples that take this pass
  active_rows = beam_lib.flat_batch_beam_expand(active, beam)  # [n]
  next_inputs = remasking.next_pass_inputs(
      jax.random.fold_in(rng, state.step),
      predictions,
      rows.content,
      config,
      rows.table_length,
      confidence=candidate_log_probs[..., 0],
      step=state.step,
  )  # [n, t]
  next_inputs = force_tokens(next_inputs, rows)  # [n, t] forced positions never re-masked

  def keep_frozen(new: Array | None, old: Array | None) -> Array | None:
    """new where the row's example is active, else old; [n, ...] each (None stays None)."""
    if new is None:
      return None
    return jnp.where(active_rows.reshape((n,) + (1,) * (new.ndim - 1)), new, old)

  return RefinementState(
      step=state.step + 1,  # []
      inputs=keep_frozen(next_inputs, state.inputs),  # [n, t]
      predictions=keep_frozen(predictions, state.predictions),  # [n, t]
      candidate_ids=keep_frozen(candidate_ids, state.candidate_ids),  # [n, t, k]
      candidate_log_probs=keep_frozen(candidate_log_probs, state.candidate_log_probs),  # [n, t, k]
      done=state.done | (active & ~changed),  # [b]
      passes=state.passes + active.astype(jnp.int32),  # [b]
      log_prob_sum=keep_frozen(log_prob_sum, state.log_prob_sum),  # [n, t, V] or None
  )


# ----------------------------------------------------------------------------------------------
# Step 3: finalise.


def score_hypotheses(
    token_log_probs: Array, lengths: Array, length_log_probs: Array, config: DecodingConfig
) -> Array:
  """[n] float32 scores from content-token log-probs [n, t] (0 elsewhere) and lengths [n].

  A length-1 hypothesis (EOS only) has no content: its 'mean' is 0, not NaN.
  """
  total = jnp.sum(token_log_probs, axis=-1)
  num_content = (lengths - 1).astype(jnp.float32)
  if config.score is ScoreMode.SUM:
    score = total
  elif config.score is ScoreMode.MEAN:
    score = total / jnp.maximum(num_content, 1.0)
  else:
    score = total / ((5.0 + lengths.astype(jnp.float32)) / 6.0) ** config.length_penalty_alpha
  if config.add_length_log_prob:
    score = score + length_log_probs
  return score.astype(jnp.float32)


def finalise(
    state: RefinementState, rows: RowLayout, length_log_probs: Array, config: DecodingConfig
) -> DecodeResult:
  """De-duplicates and scores the last predictions, then sorts each example's hypotheses.

  Args:
    state: the loop's final state.
    rows: the rows' layout.
    length_log_probs: [b, c] float32 log-probs of the rows' lengths.
    config: DecodingConfig.

  Returns:
    DecodeResult, best hypothesis last along the beam axis.
  """
  batch_size, beam = length_log_probs.shape
  sequences, token_log_probs, scores = _scored_hypotheses(state, rows, length_log_probs, config)

  # Each example's hypotheses by increasing score: best last, as t5x expects.
  scores = beam_lib.unflatten_beam_dim(scores, batch_size, beam)  # [b, c]
  order = jnp.argsort(scores, axis=-1, stable=True)  # [b, c]

  def by_score(x: Array) -> Array:
    """[n, ...] -> [b, c, ...] in score order."""
    return beam_lib.gather_beams(beam_lib.unflatten_beam_dim(x, batch_size, beam), order)

  return DecodeResult(
      sequences=by_score(sequences).astype(jnp.int32),  # [b, c, t]
      scores=beam_lib.gather_beams(scores, order).astype(jnp.float32),  # [b, c]
      lengths=by_score(rows.lengths).astype(jnp.int32),  # [b, c]
      passes=state.passes,  # [b]
      token_log_probs=by_score(token_log_probs).astype(jnp.float32),  # [b, c, t]
  )


def _scored_hypotheses(
    state: RefinementState, rows: RowLayout, length_log_probs: Array, config: DecodingConfig
) -> tuple[Array, Array, Array]:
  """The rows' hypotheses as `finalise` returns them, unsorted: (sequences [n, t] after
  de-duplication, token_log_probs [n, t] of the scored tokens, scores [n]); length_log_probs
  [b, c]."""
  if config.dedup is DedupMode.OPTIMAL:
    viterbi_tokens, token_log_probs = dedup_lib.optimal_dedup(
        state.candidate_ids, state.candidate_log_probs, rows.content
    )  # [n, t] each
    if rows.forced is not None:
      viterbi_tokens = force_tokens(viterbi_tokens, rows)  # [n, t]
      token_log_probs = jnp.where(
          rows.forced, state.candidate_log_probs[..., 0], token_log_probs
      )  # [n, t]
    sequences = layout.frame_tokens(viterbi_tokens, rows.content, rows.eos)  # [n, t]
  else:
    token_log_probs = jnp.where(rows.content, state.candidate_log_probs[..., 0], 0.0)  # [n, t]
    sequences = state.predictions  # [n, t]
    if config.dedup is DedupMode.CONSECUTIVE:
      # Scores stay those of the hypothesis as decoded (before removing repeats): the removed
      # tokens were predicted, and rescoring the shortened sequence would need another pass.
      sequences, _ = dedup_lib.consecutive_dedup(
          sequences, rows.content, config.stutter_word_starts(), keep=rows.forced
      )  # [n, t] forced tokens are never dropped
  scores = score_hypotheses(
      token_log_probs, rows.lengths, beam_lib.flatten_beam_dim(length_log_probs), config
  )  # [n]
  return sequences, token_log_probs, scores


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


def refine_lengths(
    refine_fn: RefineFn,
    lengths: Array,
    length_log_probs: Array,
    rng: Array,
    config: DecodingConfig,
    max_decode_length: int,
    table_length: int | None = None,
    forced: Array | None = None,
    forced_tokens: Array | None = None,
) -> DecodeResult:
  """Steps 2 and 3 for a chosen length beam: refinement passes, then `finalise`.

  Args:
    refine_fn: one decoder pass over [n, t] rows.
    lengths: [b, c] int32 lengths to decode (<= t), one per hypothesis row.
    length_log_probs: [b, c] float32 their log-probs.
    rng: PRNG key.
    config: DecodingConfig.
    max_decode_length: t, the positions refined.
    table_length: T >= t over which random fills are drawn (default t): a bucketed decode at
      t < T passes the full table's T so that its hypotheses equal the full table's.
    forced: optional [b, t] bool positions whose token is given (e.g. a prefix already
      accepted: padir_t5x/draft_verify.py), shared by the example's c hypotheses; only its
      content positions count (a position at or past a hypothesis's EOS stays EOS / PAD). Every
      pass reads the given token there and predicts it (scored with the pass's log-prob of it);
      re-masking and 'consecutive' de-duplication never remove it. None: nothing forced (the
      decode is unchanged).
    forced_tokens: [b, t] int32 the given tokens (read where `forced`), with `forced`.

  Returns:
    DecodeResult with sequences [b, c, t].
  """
  t = max_decode_length
  batch_size, beam = lengths.shape
  n = batch_size * beam
  flat_lengths = beam_lib.flatten_beam_dim(lengths)  # [n]
  rows = RowLayout(
      flat_lengths, *layout.length_layout(flat_lengths, t), table_length or t
  )  # [n], 3 x [n, t]
  if (forced is None) != (forced_tokens is None):
    raise ValueError("forced and forced_tokens go together")
  if forced is not None:
    rows = rows._replace(
        forced=beam_lib.flat_batch_beam_expand(forced, beam) & rows.content,  # [n, t]
        forced_tokens=beam_lib.flat_batch_beam_expand(forced_tokens, beam).astype(jnp.int32),
    )
  init_rng, loop_rng = jax.random.split(rng)
  inputs = initial_tokens(init_rng, flat_lengths, t, config, rows.table_length)  # [n, t]
  inputs = force_tokens(inputs, rows)  # [n, t]
  k = config.dedup_top_k if config.dedup is DedupMode.OPTIMAL else 1

  initial_state = RefinementState(
      step=jnp.zeros((), jnp.int32),
      inputs=inputs,
      predictions=inputs,
      candidate_ids=jnp.zeros((n, t, k), jnp.int32),
      candidate_log_probs=jnp.zeros((n, t, k), jnp.float32),
      done=jnp.zeros((batch_size,), bool),
      passes=jnp.zeros((batch_size,), jnp.int32),
      log_prob_sum=None,
  )
  if config.prediction is PredictionMode.SUMMED:
    num_ids = jax.eval_shape(refine_fn, inputs, rows.length_mask).shape[-1]  # V
    initial_state = initial_state.replace(log_prob_sum=jnp.zeros((n, t, num_ids), jnp.float32))

  if config.refine_top_k is None:
    final = _refinement_loop(refine_fn, initial_state, rows, loop_rng, config)
  else:
    final = _refine_top_k(refine_fn, initial_state, rows, length_log_probs, loop_rng, config)
  return finalise(final, rows, length_log_probs, config)


def _refinement_loop(
    refine_fn: RefineFn, state: RefinementState, rows: RowLayout, rng: Array, config: DecodingConfig
) -> RefinementState:
  """Refinement passes (lax.while_loop) from `state` until max_passes or every example is done."""

  def not_finished(state: RefinementState) -> Array:
    return (state.step < config.max_passes) & ~jnp.all(state.done)

  return jax.lax.while_loop(
      not_finished, lambda state: refinement_pass(refine_fn, state, rows, rng, config), state
  )


def _refine_top_k(
    refine_fn: RefineFn,
    state: RefinementState,
    rows: RowLayout,
    length_log_probs: Array,
    rng: Array,
    config: DecodingConfig,
) -> RefinementState:
  """Candidate pruning (DecodingConfig.refine_top_k): the first pass over all n = b * c rows,
  then the later passes over the b * k rows of each example's k best first-pass hypotheses
  (gathered: refine_fn sees b * k rows); the others keep their first-pass state.

  The gathered rows keep their order (and with k = c they are all the rows), so that k = c
  decodes exactly as without pruning: same rows, same random draws (fold_in(rng, step)).
  """
  batch_size, beam = length_log_probs.shape
  k = min(config.refine_top_k, beam)  # given lengths (length_beam_lengths) may be fewer
  first = refinement_pass(refine_fn, state, rows, rng, config)  # the whole beam, step 0 -> 1
  if config.max_passes == 1:
    return first
  _, _, scores = _scored_hypotheses(first, rows, length_log_probs, config)  # [n]
  scores = beam_lib.unflatten_beam_dim(scores, batch_size, beam)  # [b, c]
  _, best = jax.lax.top_k(scores, k)  # [b, k] lowest index first among ties
  kept = jnp.sort(best, axis=-1) + beam * jnp.arange(batch_size)[:, None]  # [b, k] row ids
  kept = kept.reshape(-1)  # [b * k] flat rows, each example's k in their original order

  def take(x: Array | None) -> Array | None:
    return None if x is None else x[kept]

  def put(full: Array | None, part: Array | None) -> Array | None:
    return None if full is None else full.at[kept].set(part)

  per_row = ("inputs", "predictions", "candidate_ids", "candidate_log_probs", "log_prob_sum")
  kept_rows = rows._replace(
      **{
          name: take(getattr(rows, name))
          for name in ("lengths", "content", "eos", "length_mask", "forced", "forced_tokens")
      }
  )  # [b * k, ...] each
  refined = _refinement_loop(
      refine_fn,
      first.replace(**{name: take(getattr(first, name)) for name in per_row}),
      kept_rows,
      rng,
      config,
  )  # the passes after the first over b * k rows
  return refined.replace(
      **{name: put(getattr(first, name), getattr(refined, name)) for name in per_row}
  )  # [n, ...] rows again: the pruned ones as after the first pass


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
    module: a padir_t5x.network.Transformer (hashable flax module).
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
