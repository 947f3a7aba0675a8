"""Every mode choice of PaDIR as an enum: one list of the allowed values, one place to add one.

Each enum is a `str` enum, so a config field accepts the member or its value: gin files and
command lines bind modes by name (`DECODING_INIT = 'mask'`), and `FillMode("mask")` is
`FillMode.MASK`. padir_t5x/models.py also registers the members as gin constants
(`%padir_t5x.modes.FillMode.MASK`). Configs store members, so a config compares and hashes the
same whether it was built from a name or a member (jit caches on it).
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
  """How the stage-1 unmasking rate of each training example is chosen (losses.PadirLossConfig)."""

  FIXED = "fixed"  # PadirLossConfig.unmasking_rate for every example (the paper's setting)
  UNIFORM = (
      "uniform"  # per example from U(low, high) (CMLM, SUNDAE, PaDIR's released code: U(0, 1))
  )
  GLANCING = "glancing"  # GLAT: reveal round(ratio * wrong tokens of a no-gradient first pass)


class LossPositions(Mode):
  """Which target positions a stage's token cross-entropy is taken over (losses.PadirLossConfig)."""

  ALL = "all"  # every target position (weights: decoder_loss_weights, else targets > 0)
  CORRUPTED = "corrupted"  # positions whose stage input is corrupted, plus EOS (see losses)


class ScoreMode(Mode):
  """How a hypothesis is scored from its content-token log-probs (decoding.score_hypotheses)."""

  MEAN = "mean"
  SUM = "sum"
  LENGTH_PENALTY = "length_penalty"  # sum / ((5 + length) / 6) ** alpha (GNMT)


class DedupMode(Mode):
  """The final de-duplication of repeated neighbouring tokens (padir_t5x/dedup.py)."""

  NONE = "none"
  CONSECUTIVE = "consecutive"  # drop a token equal to its left neighbour
  OPTIMAL = "optimal"  # Sun & Yang 2020: Viterbi over the top-k tokens, no equal neighbours


class RemaskMode(Mode):
  """Which positions of a pass's prediction are re-filled (FillMode) before the next pass."""

  NONE = "none"
  STUTTER = "stutter"  # positions repeating their left neighbour's token


class DecoderMode(Mode):
  """How the network's decoder attends (padir_t5x/network.py)."""

  PADIR = "padir"  # parallel, bidirectional, positional attention; length classifier
  AUTOREGRESSIVE = "autoregressive"  # causal with a key/value cache: the AR twin and teacher
