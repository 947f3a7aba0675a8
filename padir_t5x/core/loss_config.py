"""`PadirLossConfig`: how PaDIR is trained (stages, corruption, loss weights), validated.

Frozen and hashable; mode fields take the padir_t5x.core.modes member or its name, so that gin and
the command lines (`--loss FIELD=VALUE`) build equal configs. The loss that reads it is
padir_t5x/core/losses.py.
"""

from __future__ import annotations

import dataclasses

from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x import MASK_ID
from padir_t5x.core import corruption
from padir_t5x.core.cross_entropy import SPECIAL_LOSS_NORMALIZING_FACTORS
from padir_t5x.core.cross_entropy import LossNormalizingFactor
from padir_t5x.core.modes import FillMode
from padir_t5x.core.modes import LossPositions
from padir_t5x.core.modes import UnmaskingRateMode


@dataclasses.dataclass(frozen=True)
class PadirLossConfig:
  """How PaDIR is trained: stages, corruption and loss weights.

  The defaults are the paper's setup (one fixed unmasking rate, random-token corruption, loss on
  every target position) and reproduce the loss of the code before the training options below
  existed, number for number; each option is one field (a gin macro in gin/models/padir_base.gin),
  and the optax loop (training.padir_loss_fn) and PadirModel.loss_fn both run it through
  `losses.multi_stage_forward` and `losses.loss_from_outputs`.

  Attributes:
    num_stages: decoder passes trained per step (stage 1 on corrupted targets, then on its own
      argmax).
    unmasking_rate: fraction of (non-EOS) target tokens left correct in the stage-1 input, when
      unmasking_rate_mode is 'fixed'. 0.25 was chosen by a dev sweep over {0, 0.25, 0.5, 0.75}
      (README, "Defaults chosen by a dev sweep").
    corruption: FillMode (or its name) of the corrupted positions: 'random' (uniform tokens
      from [vocab_low, vocab_high)) or 'mask'. It stands for the mix (0, 1, 0) or (0, 0, 1) when
      corruption_mix is None (`replacement_mix`).
    vocab_high: real vocabulary size, exclusive bound of random tokens. None until known:
      PadirModel fills it in from its output vocabulary; the loss raises if random corruption
      meets None.
    length_loss_weight: weight of the length cross-entropy (per example) relative to the token
      cross-entropy (per token). 1.0 was chosen by the same dev sweep: with 0.1 the quickstart
      model's length classifier was 22% right on its last training batch (38% with 1.0) and its
      dev BLEU 11 points lower (66.7 against 78.0, unmasking rate 0).
    label_smoothing, z_loss: as in `cross_entropy.token_cross_entropy`.
    loss_normalizing_factor: divides the whole loss (tokens and length alike, so it never changes
      their relative weight); see `cross_entropy.resolve_loss_normalizing_factor`. Resolved from
      the target weights (decoder_loss_weights, else targets > 0) whatever `loss_positions` is.
    vocab_low: inclusive bound of random tokens (default: first non-special id).
    mask_id: the [MASK] id, used by corruption='mask' and a mix with a mask share.
    unmasking_rate_mode: UnmaskingRateMode (or its name), how each example's stage-1 unmasking
      rate is chosen: 'fixed' (unmasking_rate), 'uniform' (drawn per example from
      U(unmasking_rate_range), from the corruption rng; CMLM, SUNDAE and PaDIR's released code
      use U(0, 1)) or 'glancing' (see the glancing_* fields).
    unmasking_rate_range: (low, high), 0 <= low <= high <= 1, for 'uniform'; unused otherwise.
    corruption_mix: None, or (keep, random, mask) probabilities (>= 0, summing to 1) of what a
      position selected for corruption receives: its correct token, a uniform random token, or
      [MASK] (BERT: (0.1, 0.1, 0.8)). When given it overrides `corruption` for training (set
      DECODING_INIT to the fill the decoder should start from). The positions that keep their
      token still count as corrupted (loss_positions='corrupted' trains on them, as BERT).
    loss_positions: LossPositions (or its name). 'all': every target position, as the paper.
      'corrupted': stage 1 only on the positions selected for corruption (the mix's 'keep' share
      and random tokens that happen to be right included) plus EOS; a later stage, whose input
      is the previous stage's argmax, only on the positions where that input differs from the
      target, plus EOS. Either way multiplied by batch['decoder_loss_weights'] when present.
      Accuracies stay over every target position.
    glancing_ratio: GLAT's lambda, for unmasking_rate_mode='glancing' (Qian et al. 2021; their
      released code anneals it from 0.5 to 0.3 over 300k updates). A no-gradient first decoder
      pass predicts from a fully corrupted input (the configured fill/mix), with dropout when
      the training pass has it and the same dropout key as stage 1 (GLAT reseeds both passes
      alike); stage 1's input then reveals round(ratio * its wrong tokens) gold tokens at
      random positions of the row and corrupts the rest (`stage1_input`). Costs one extra
      decoder forward per step. GLAT trains on the unrevealed positions only: add
      loss_positions='corrupted'.
    glancing_ratio_end: None for a constant ratio, else the ratio reached after
      glancing_anneal_steps optimizer steps (linear from glancing_ratio). Annealing needs the
      step, which the optax loop supplies (training.make_train_step sets
      batch[TRAIN_STEP_FEATURE]); T5X's loss_fn gets none, so under T5X the ratio is fixed and
      an annealing config raises.
    glancing_anneal_steps: length of the anneal; > 0 exactly when glancing_ratio_end is given.
  """

  num_stages: int = 2
  unmasking_rate: float = 0.25
  corruption: FillMode = FillMode.RANDOM
  vocab_high: int | None = None
  length_loss_weight: float = 1.0
  label_smoothing: float = 0.0
  z_loss: float = 1e-4
  loss_normalizing_factor: LossNormalizingFactor = None
  vocab_low: int = FIRST_ORDINARY_ID
  mask_id: int = MASK_ID
  unmasking_rate_mode: UnmaskingRateMode = UnmaskingRateMode.FIXED
  unmasking_rate_range: tuple[float, float] = (0.0, 1.0)
  corruption_mix: tuple[float, float, float] | None = None
  loss_positions: LossPositions = LossPositions.ALL
  glancing_ratio: float = 0.5
  glancing_ratio_end: float | None = None
  glancing_anneal_steps: int = 0

  def __post_init__(self):
    if self.num_stages < 1:
      raise ValueError(f"num_stages must be >= 1, got {self.num_stages}")
    if not 0.0 <= self.unmasking_rate <= 1.0:
      raise ValueError(f"unmasking_rate must lie in [0, 1], got {self.unmasking_rate}")
    # Frozen: store members and tuples, so a config built from names or lists (gin, command
    # lines) equals and hashes like one built from members and tuples.
    object.__setattr__(self, "corruption", FillMode.coerce(self.corruption, "corruption"))
    object.__setattr__(
        self,
        "unmasking_rate_mode",
        UnmaskingRateMode.coerce(self.unmasking_rate_mode, "unmasking_rate_mode"),
    )
    object.__setattr__(
        self, "loss_positions", LossPositions.coerce(self.loss_positions, "loss_positions")
    )
    object.__setattr__(self, "unmasking_rate_range", _check_rate_range(self.unmasking_rate_range))
    if self.corruption_mix is not None:
      object.__setattr__(
          self, "corruption_mix", corruption.check_mix(self.corruption_mix, "corruption_mix")
      )
    if self.replacement_mix[1] > 0 and self.vocab_high is not None:
      if not 0 <= self.vocab_low < self.vocab_high:
        raise ValueError(f"random tokens range [{self.vocab_low}, {self.vocab_high}) is empty")
    if self.length_loss_weight < 0:
      raise ValueError(f"length_loss_weight must be >= 0, got {self.length_loss_weight}")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
    if self.z_loss < 0:
      raise ValueError(f"z_loss must be >= 0, got {self.z_loss}")
    if isinstance(self.loss_normalizing_factor, str):
      if self.loss_normalizing_factor.upper() not in SPECIAL_LOSS_NORMALIZING_FACTORS:
        raise ValueError(f"unknown loss_normalizing_factor {self.loss_normalizing_factor!r}")
    elif self.loss_normalizing_factor is not None and self.loss_normalizing_factor <= 0:
      raise ValueError(
          f"loss_normalizing_factor must be positive, got " f"{self.loss_normalizing_factor}"
      )
    if not 0.0 <= self.glancing_ratio <= 1.0:
      raise ValueError(f"glancing_ratio must lie in [0, 1], got {self.glancing_ratio}")
    if self.glancing_ratio_end is not None and not 0.0 <= self.glancing_ratio_end <= 1.0:
      raise ValueError(f"glancing_ratio_end must lie in [0, 1], got {self.glancing_ratio_end}")
    if self.glancing_anneal_steps < 0:
      raise ValueError(f"glancing_anneal_steps must be >= 0, got {self.glancing_anneal_steps}")
    if (self.glancing_ratio_end is None) != (self.glancing_anneal_steps == 0):
      raise ValueError(
          "glancing_ratio_end and glancing_anneal_steps go together: give both (anneal from "
          "glancing_ratio to glancing_ratio_end over glancing_anneal_steps > 0 steps) or neither "
          f"(constant glancing_ratio); got glancing_ratio_end={self.glancing_ratio_end}, "
          f"glancing_anneal_steps={self.glancing_anneal_steps}"
      )

  @property
  def replacement_mix(self) -> corruption.Mix:
    """(keep, random, mask) of a corrupted position: corruption_mix, else `corruption`'s."""
    if self.corruption_mix is not None:
      return self.corruption_mix
    return corruption.fill_mix(self.corruption)

  @property
  def glancing_anneals(self) -> bool:
    """Whether the glancing ratio depends on the training step."""
    return self.glancing_ratio_end is not None


def _check_rate_range(value) -> tuple[float, float]:
  """unmasking_rate_range as (low, high) floats; ValueError naming the field otherwise."""
  try:
    low, high = (float(v) for v in value)
  except (TypeError, ValueError):
    raise ValueError(f"unmasking_rate_range must be (low, high), got {value!r}") from None
  if not 0.0 <= low <= high <= 1.0:
    raise ValueError(f"unmasking_rate_range must satisfy 0 <= low <= high <= 1, got {value!r}")
  return low, high
