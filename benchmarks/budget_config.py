"""The equal-budget trainer's settings (benchmarks/train_budget.py): `BudgetConfig`, and the
network and PaDIR loss configs it stands for.

The flat fields are the command line's flags; `transformer_config` and `padir_loss_config` build
the core configs from them, then lay the --network and --loss FIELD=VALUE overrides over them.
"""

from __future__ import annotations

import dataclasses

from padir_t5x.core import checkpoints
from padir_t5x import cli
from padir_t5x.core import cross_entropy
from padir_t5x.core import network_config
from padir_t5x import vocab as vocab_lib
from padir_t5x.core.loss_config import PadirLossConfig


@dataclasses.dataclass(frozen=True)
class BudgetConfig:
  """Sizes of the equal-budget run (tiny: 2+2 layers, d=128, for a shared 2-core CPU)."""

  model: str = "padir"
  minutes: float = 10.0
  vocab_size: int = 4000
  max_length: int = 80
  emb_dim: int = 128
  num_heads: int = 4
  mlp_dim: int = 512
  num_layers: int = 2
  dropout_rate: float = 0.1
  peak_learning_rate: float = 2e-3
  warmup_fraction: float = 0.05
  final_learning_rate_fraction: float = 0.05
  num_stages: int = 2
  unmasking_rate: float = 0.25  # the library default, chosen by the dev sweep (README)
  z_loss: float = 1e-4
  seed: int = 0
  max_steps: int = 0  # > 0: a step budget (the schedule follows steps); 0: wall-clock budget
  # FIELD=VALUE overrides (padir_t5x/cli.py) of the PaDIR loss config and of the network config.
  loss: tuple[str, ...] = ()
  network: tuple[str, ...] = ()
  # A core checkpoint (typically the AR teacher) whose parameters start every leaf they share
  # with this network (checkpoints.warm_start); '' trains from scratch.
  init_from: str = ""

  @property
  def budget_kind(self) -> str:
    """'steps' when --max_steps binds the run (and its schedule), else 'wall_clock'."""
    return "steps" if self.max_steps > 0 else "wall_clock"

  def __post_init__(self):
    if self.model not in checkpoints.KINDS:
      raise ValueError(f"--model must be one of {checkpoints.KINDS}, got {self.model!r}")
    if self.max_steps < 0:
      raise ValueError(f"--max_steps must be >= 0, got {self.max_steps}")
    if self.minutes < 0 or (self.max_steps == 0 and self.minutes <= 0):
      raise ValueError(
          f"--minutes must be > 0 without --max_steps (>= 0 with it), got {self.minutes}"
      )
    if self.loss and self.model != "padir":
      raise ValueError("--loss sets PaDIR loss fields; the AR model has none")


def transformer_config(config: BudgetConfig, vocab_high: int) -> network_config.TransformerConfig:
  """The tiny network of `config` (AR or PaDIR decoder), both sides max_length long."""
  return dataclasses.replace(
      _sized_config(config, vocab_high),
      **cli.parse_overrides(network_config.TransformerConfig, config.network),
  )


def _sized_config(config: BudgetConfig, vocab_high: int) -> network_config.TransformerConfig:
  return network_config.tiny_config_from_sizes(
      vocab_size=vocab_lib.padded_vocab_size(vocab_high),
      emb_dim=config.emb_dim,
      num_heads=config.num_heads,
      mlp_dim=config.mlp_dim,
      num_layers=config.num_layers,
      max_input_length=config.max_length,
      max_target_length=config.max_length,
      dropout_rate=config.dropout_rate,
      decoder_mode="padir" if config.model == "padir" else "autoregressive",
  )


def padir_loss_config(config: BudgetConfig, vocab_high: int | None) -> PadirLossConfig:
  """The PaDIR loss config of `config`: its flat fields, then the --loss overrides."""
  return PadirLossConfig(
      **{
          "num_stages": config.num_stages,
          "unmasking_rate": config.unmasking_rate,
          "vocab_high": vocab_high,
          "z_loss": config.z_loss,
          "loss_normalizing_factor": cross_entropy.REAL_TARGET_TOKENS,
          **cli.parse_overrides(PadirLossConfig, config.loss),
      }
  )
