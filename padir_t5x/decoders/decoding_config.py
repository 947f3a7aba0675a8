"""`DecodingConfig`: every setting of PaDIR decoding, validated on construction.

Frozen and hashable, so that one config is a static jit argument; mode fields take the
padir_t5x.core.modes member or its name. The decode that reads it is padir_t5x/decoders/decoding.py
(length candidates: padir_t5x/decoders/length_candidates.py; the refinement passes:
padir_t5x/decoders/refinement.py).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from padir_t5x import EOS_ID
from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x import MASK_ID
from padir_t5x import PAD_ID
from padir_t5x.core import layout
from padir_t5x.core.modes import DedupMode
from padir_t5x.core.modes import FillMode
from padir_t5x.core.modes import PredictionMode
from padir_t5x.core.modes import RemaskMode
from padir_t5x.core.modes import ScoreMode
from padir_t5x.core.modes import StutterUnit

Array = jnp.ndarray


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
      (padir_t5x/decoders/dedup.py).
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

  length_beam: int = dataclasses.field(
      default=5, metadata={"help": "target lengths decoded (l)", "min": 1}
  )
  max_passes: int = dataclasses.field(
      default=4, metadata={"help": "refinement passes at most (T)", "min": 1}
  )
  init: FillMode = dataclasses.field(
      default=FillMode.RANDOM, metadata={"help": "first decoder input"}
  )
  remask: RemaskMode = dataclasses.field(
      default=RemaskMode.STUTTER, metadata={"help": "what is re-filled between passes"}
  )
  score: ScoreMode = dataclasses.field(
      default=ScoreMode.MEAN,
      metadata={
          "help": "candidate score: mean or sum of its token log-probs, or GNMT length penalty "
          "(docs/decoding.md says when each helps)"
      },
  )
  length_penalty_alpha: float = 0.6
  add_length_log_prob: bool = True
  dedup: DedupMode = dataclasses.field(
      default=DedupMode.CONSECUTIVE, metadata={"help": "final de-duplication"}
  )
  dedup_top_k: int = 4
  vocab_low: int = FIRST_ORDINARY_ID
  vocab_high: int | None = None
  mask_id: int = MASK_ID
  min_length: int = 2
  length_buckets: tuple[int, ...] = dataclasses.field(
      default=(16, 24, 32, 48, 64, 96, 128),
      metadata={
          "help": "decoded lengths are padded up to one of these (one compile each)",
          "min": 1,
      },
  )
  stutter_unit: StutterUnit = dataclasses.field(
      default=StutterUnit.WORD,
      metadata={
          "help": "what stutter re-masking and consecutive dedup remove: repeated words or pieces"
      },
  )
  word_starts: layout.WordStarts | None = None
  inits_per_length: int = dataclasses.field(
      default=1, metadata={"help": "random initialisations per length", "min": 1}
  )
  length_offsets: int = dataclasses.field(
      default=0, metadata={"help": "also decode lengths L-r..L+r (r)", "min": 0}
  )
  prediction: PredictionMode = dataclasses.field(
      default=PredictionMode.LAST,
      metadata={"help": "argmax of the last pass's log-probs or of their sum over passes"},
  )
  early_stopping: bool = True
  refine_top_k: int | None = dataclasses.field(
      default=None,
      metadata={
          "help": "after the first pass, refine only the k best candidates (None: all)",
          "min": 1,
      },
  )

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
