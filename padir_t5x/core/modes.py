"""Every mode choice of PaDIR as an enum: one list of the allowed values, one place to add one.

Each enum is a `str` enum, so a config field accepts the member or its value: gin files and
command lines bind modes by name (`DECODING_INIT = 'mask'`), and `FillMode("mask")` is
`FillMode.MASK`. (No gin constants are registered: a name is all a gin file needs.) Configs store
members, so a config compares and hashes the same whether it was built from a name or a member
(jit caches on it).
"""

from __future__ import annotations

import enum
from typing import TypeVar

_Mode = TypeVar("_Mode", bound="Mode")


class Mode(str, enum.Enum):
  """Base of the mode enums: `coerce` turns a name into a member with an error naming the field."""

  def __str__(self) -> str:
    return self.value

  @classmethod
  def coerce(cls: type[_Mode], value: str | _Mode, field: str) -> _Mode:
    """The member named `value`; ValueError naming `field` and the allowed names otherwise."""
    try:
      return cls(value)
    except ValueError:
      allowed = ", ".join(repr(m.value) for m in cls)
      raise ValueError(f"unknown {field} {value!r}; expected one of {allowed}") from None


class FillMode(Mode):
  """What fills the content positions of a decoder input that carries no prediction.

  Used by the training corruption (the replaced positions), the first decoding pass, stutter
  re-masking and `PadirModel.score_batch`'s fixed decoder input.
  """

  RANDOM = "random"  # uniform ordinary tokens from [vocab_low, vocab_high)
  MASK = "mask"  # the [MASK] id


class UnmaskingRateMode(Mode):
  """How the stage-1 unmasking rate of each training example is chosen (PadirLossConfig)."""

  FIXED = "fixed"  # PadirLossConfig.unmasking_rate for every example (the paper's setting)
  UNIFORM = (
      "uniform"  # per example from U(low, high) (CMLM, SUNDAE, PaDIR's released code: U(0, 1))
  )
  GLANCING = "glancing"  # GLAT: reveal round(ratio * wrong tokens of a no-gradient first pass)


class LossPositions(Mode):
  """Which target positions a stage's token cross-entropy is taken over (PadirLossConfig)."""

  ALL = "all"  # every target position (weights: decoder_loss_weights, else targets > 0)
  CORRUPTED = "corrupted"  # positions whose stage input is corrupted, plus EOS (see losses)


class ScoreMode(Mode):
  """How a hypothesis is scored from its content-token log-probs (refinement.score_hypotheses)."""

  MEAN = "mean"
  SUM = "sum"
  LENGTH_PENALTY = "length_penalty"  # sum / ((5 + length) / 6) ** alpha (GNMT)


class DedupMode(Mode):
  """The final de-duplication of repeated neighbouring tokens (padir_t5x/decoders/dedup.py)."""

  NONE = "none"
  CONSECUTIVE = "consecutive"  # drop stutter (StutterUnit: a repeated piece or whole word)
  OPTIMAL = "optimal"  # Sun & Yang 2020: Viterbi over the top-k, no equal neighbouring pieces


class RemaskMode(Mode):
  """Which positions of a pass's prediction are re-filled (FillMode) before the next pass."""

  NONE = "none"
  STUTTER = "stutter"  # stutter positions (StutterUnit: a repeated piece or whole word)
  # Mask-predict (Ghazvininejad et al. 2019): after pass i of T, the floor((T - i - 1) / T * N)
  # content positions (of N) whose prediction has the lowest log-prob.
  LOW_CONFIDENCE = "low_confidence"


class DecoderMode(Mode):
  """How the network's decoder attends (padir_t5x/core/network.py)."""

  PADIR = "padir"  # parallel, bidirectional, positional attention; length classifier
  AUTOREGRESSIVE = "autoregressive"  # causal with a key/value cache: the AR twin and teacher


class StutterUnit(Mode):
  """What counts as stutter for re-masking and 'consecutive' de-duplication (layout.py).

  SentencePiece splits words into pieces, and a word may hold two equal neighbouring pieces
  ("apples" = `▁a p p le s`): the piece rule calls that stutter, the word rule does not.
  """

  PIECE = "piece"  # a piece equal to its left neighbour
  WORD = "word"  # a whole word (its pieces from one '▁' piece to the next) equal to the last


class LengthPooling(Mode):
  """What the PaDIR length predictor reads from the encoder (padir_t5x/core/length_predictor.py)."""

  MEAN = "mean"  # the mean of the encoder output over the non-PAD source positions, then an MLP
  TOKEN = "token"  # a learned [LENGTH] slot prepended to the encoder input (Mask-Predict)


class LengthTarget(Mode):
  """What the PaDIR length predictor classifies; its logits are always over absolute lengths."""

  ABSOLUTE = "absolute"  # the target length, one class per length 1..max_target_length
  OFFSET = "offset"  # target length - source length, one class per offset in [-K, K]


class PredictionMode(Mode):
  """Which log-probs a decoding pass's prediction is the argmax of (refinement.refinement_pass)."""

  LAST = "last"  # this pass's
  SUMMED = "summed"  # the sum of this and every earlier pass's (damps oscillation)


class VerifyMode(Mode):
  """How the AR model checks a PaDIR draft (padir_t5x/decoders/draft_verify.py)."""

  STRICT = "strict"  # a draft token is kept only if it is the AR greedy choice: AR greedy exactly
  # Also a draft token among the AR model's top-k within a log-prob margin of its best one:
  # fewer rounds, no longer exactly AR greedy.
  TOLERANT = "tolerant"
