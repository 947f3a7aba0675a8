"""Training cost from the network's shapes: matmul FLOPs per step, total FLOPs, device hours.

Counted, for a `TransformerConfig` and a padded batch (`batch` rows of `input_length` source and
`target_length` target positions: the shapes the accelerator computes on, padding included):

* every matmul, at 2 * m * n * k FLOPs: the attention projections (query, key, value, output),
  the attention scores (Q K^T) and the weighted sum of the values, the MLP, the output logits
  (tied to the embedding or not: the same work), the length classifier;
* not counted: embedding gathers, softmax, LayerNorm, activations, dropout, the loss and
  Adafactor's update (elementwise, O(parameters) or O(activations): a few percent at Base).

A PaDIR training step (padir_t5x.core.losses.multi_stage_forward) encodes once, predicts the length
once and runs the decoder `num_stages` times. Stage s + 1 reads stage s's argmax under
stop_gradient, so no gradient flows *between* stages, but every stage has its own loss that
trains the decoder (and, through cross-attention, the encoder): each stage pays a full decoder
forward and backward. Every decode call recomputes its cross-attention keys/values of the
encoder output and its positional-attention queries/keys (they are shared across stages only
at inference time). Backward = 2 x forward (gradients with respect to the activations and to
the weights), so a step is 3 x (encoder + length classifier) + num_stages x 3 x decoder pass
(+ 1 x decoder pass per forward-only pass, e.g. GLAT's glancing pass). The AR twin
(decoder_mode='autoregressive') is num_stages=1 with a causal decoder that still computes the
full T x T score matrix in training, and no positional attention.
"""

from __future__ import annotations

import dataclasses

from padir_t5x.core.network_config import TransformerConfig
from padir_t5x.core.network_config import base_config as network_base

# Peak dense bfloat16 matmul throughput (FLOP/s) of the devices of the README's cost table,
# from the vendors' data sheets: TPU v4 275 TFLOP/s per chip (a v4-32 slice is 16 chips, 32
# TensorCores); H100 SXM and H200 989 TFLOP/s each (without structured sparsity).
PEAK_FLOPS = {"TPU v4-32": 16 * 275e12, "8 x H100": 8 * 989e12, "1 x H200": 989e12}


def matmul(m: int, n: int, k: int) -> int:
  """FLOPs of an [m, k] x [k, n] matmul (one multiply and one add per term)."""
  return 2 * m * n * k


def attention_flops(config: TransformerConfig, rows: int, queries: int, keys: int) -> int:
  """Forward FLOPs of one attention sublayer over `rows` examples.

  Projections: query and output over `queries` positions, key and value over `keys`
  positions ([embed] <-> [heads * head_dim]); scores [queries, keys] and the weighted sum.
  """
  inner = config.num_heads * config.head_dim
  projections = 2 * matmul(rows * queries, inner, config.emb_dim)
  projections += 2 * matmul(rows * keys, inner, config.emb_dim)
  scores = 2 * matmul(rows * queries, keys, inner)  # Q K^T, then probabilities x V
  return projections + scores


def mlp_flops(config: TransformerConfig, tokens: int) -> int:
  """Forward FLOPs of one MLP block over `tokens` positions ([embed] -> [mlp] -> [embed])."""
  return 2 * matmul(tokens, config.mlp_dim, config.emb_dim)


@dataclasses.dataclass(frozen=True)
class ForwardFlops:
  """Forward matmul FLOPs of one batch, by part.

  Attributes:
    encoder: the encoder stack over [batch, input_length] (+ the [LENGTH] slot if any).
    length_classifier: the length predictor over [batch] (PaDIR only; 0 for the AR twin).
    decoder_pass: one decoder pass over [batch, target_length], output logits included.
  """

  encoder: int
  length_classifier: int
  decoder_pass: int


def forward_flops(
    config: TransformerConfig, batch: int, input_length: int, target_length: int
) -> ForwardFlops:
  """Forward matmul FLOPs of the network on a [batch, input_length] -> [batch, target_length]."""
  source = input_length + (1 if config.has_length_slot else 0)
  encoder_layer = attention_flops(config, batch, source, source) + mlp_flops(config, batch * source)
  length_classifier = 0
  if config.is_padir:
    classes = config.num_length_classes
    if config.has_length_slot:  # slot . table^T
      length_classifier = matmul(batch, classes, config.emb_dim)
    else:  # pooled -> hidden -> classes
      hidden = config.length_hidden_dim or config.emb_dim
      length_classifier = matmul(batch, hidden, config.emb_dim) + matmul(batch, classes, hidden)
  decoder_layer = attention_flops(config, batch, target_length, target_length)
  if config.is_padir and config.positional_attention:
    decoder_layer += attention_flops(config, batch, target_length, target_length)
  decoder_layer += attention_flops(config, batch, target_length, source)  # cross-attention
  decoder_layer += mlp_flops(config, batch * target_length)
  logits = matmul(batch * target_length, config.vocab_size, config.emb_dim)
  return ForwardFlops(
      encoder=config.num_encoder_layers * encoder_layer,
      length_classifier=length_classifier,
      decoder_pass=config.num_decoder_layers * decoder_layer + logits,
  )


def training_step_flops(
    config: TransformerConfig,
    batch: int,
    input_length: int,
    target_length: int,
    num_stages: int,
    forward_only_decoder_passes: int = 0,
) -> int:
  """Forward + backward matmul FLOPs of one training step (see the module docstring).

  Args:
    config: the network.
    batch: examples per step (rows; T5X's BATCH_SIZE), each padded to the lengths below.
    input_length / target_length: padded source / target positions per example.
    num_stages: decoder passes with a loss (PaDIR's NUM_STAGES; 1 for the AR twin).
    forward_only_decoder_passes: decoder passes without gradient (1 for glancing training).
  """
  if not config.is_padir and num_stages != 1:
    raise ValueError(f"the autoregressive twin trains one decoder pass, got {num_stages}")
  parts = forward_flops(config, batch, input_length, target_length)
  trained = parts.encoder + parts.length_classifier + num_stages * parts.decoder_pass
  return 3 * trained + forward_only_decoder_passes * parts.decoder_pass


def hours(total_flops: float, peak_flops_per_s: float, utilisation: float) -> float:
  """Wall-clock hours for `total_flops` at `utilisation` of a peak throughput."""
  return total_flops / (peak_flops_per_s * utilisation) / 3600.0


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A training run to project: network, padded batch shape, stages, steps."""

  config: TransformerConfig
  batch: int
  input_length: int
  target_length: int
  num_stages: int
  steps: int


def recipe_table(recipes: dict[str, Recipe], utilisation: float = 0.4) -> str:
  """Markdown table: tokens and FLOPs per step, total FLOPs, hours on each of PEAK_FLOPS."""
  devices = list(PEAK_FLOPS)
  lines = [
      "| run | tokens / step (src + tgt, padded) | FLOPs / step | total FLOPs | "
      + " | ".join(f"hours, {name}" for name in devices)
      + " |",
      "|---" * (4 + len(devices)) + "|",
  ]
  for name, recipe in recipes.items():
    step = training_step_flops(
        recipe.config, recipe.batch, recipe.input_length, recipe.target_length, recipe.num_stages
    )
    total = step * recipe.steps
    tokens = recipe.batch * (recipe.input_length + recipe.target_length)
    cells = [name, f"{tokens:,}", f"{step:.3e}", f"{total:.3e}"]
    cells += [f"{hours(total, PEAK_FLOPS[d], utilisation):,.1f}" for d in devices]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def paper_recipes() -> dict[str, Recipe]:
  """The paper's recipe (gin/experiments/recipe/train.gin, gin/models/padir_base.gin), AR twin.

  Base, 2048 examples per step padded to 128 source + 128 target positions (no packing), 500k
  steps; PaDIR with 2 stages.
  """
  shape = dict(batch=2048, input_length=128, target_length=128, steps=500_000)
  return {
      "PaDIR Base, 2 stages": Recipe(network_base(), num_stages=2, **shape),
      "AR twin Base": Recipe(network_base(decoder_mode="autoregressive"), num_stages=1, **shape),
  }
