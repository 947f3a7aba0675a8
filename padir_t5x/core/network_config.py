"""`TransformerConfig`, the hyperparameters of the PaDIR network, and its preset sizes.

Frozen and validated on construction, so that one config is a hashable flax attribute and a static
jit argument; the presets: `base_config` (Transformer-base, about 67M parameters), `tiny_config`
(unit tests, the quickstart) and `tiny_config_from_sizes` (the flat sizes of the command lines).
The network that reads it is padir_t5x/core/network.py.
"""

from __future__ import annotations

import dataclasses

from flax import linen as nn
import jax.numpy as jnp

from padir_t5x.core.modes import DecoderMode
from padir_t5x.core.modes import LengthPooling
from padir_t5x.core.modes import LengthTarget


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters of the encoder-decoder (frozen: hashable, usable as a flax attribute).

  Attributes:
    vocab_size: rows of the shared token embedding (may exceed the real vocabulary).
    dtype: activation dtype as a string, 'float32' or 'bfloat16' (parameters stay float32;
      attention logits, softmax and output logits are float32 regardless).
    emb_dim: model width.
    num_heads / head_dim: attention heads and the width of each.
    mlp_dim: FFN hidden width.
    num_encoder_layers / num_decoder_layers: stack depths.
    mlp_activation: name of a flax.linen activation ('relu', 'gelu', ...), also used by the
      length classifier.
    dropout_rate: residual, embedding, FFN-hidden and attention-probability dropout.
    logits_via_embedding: output logits are the shared embedding's transpose (tied).
    max_input_length / max_target_length: sizes of the encoder / decoder position tables; the
      length classifier has max_target_length classes.
    decoder_mode: 'padir' (parallel, bidirectional) or 'autoregressive' (causal, cached).
    positional_attention: add the positional-attention sublayer to PaDIR decoder layers.
    length_hidden_dim: hidden width of the length classifier (None: emb_dim); 'mean' pooling only.
    layer_norm_epsilon: LayerNorm epsilon.
    length_pooling: LengthPooling (or its name): what the length predictor reads, 'mean' (the
      mean-pooled encoder output) or 'token' (a [LENGTH] slot prepended to the encoder input; see
      padir_t5x/core/length_predictor.py). PaDIR mode only.
    length_target: LengthTarget (or its name): 'absolute' lengths or 'offset' (target - source
      length in [-max_length_offset, max_length_offset]). PaDIR mode only.
    max_length_offset: K of the 'offset' target (2K + 1 classes). A length beam wider than the
      lengths in reach (2K + 1, fewer near length 1 or max_target_length) fills up with lengths
      at DISALLOWED_LENGTH_LOGIT.
  """

  vocab_size: int = 32128
  dtype: str = "float32"
  emb_dim: int = 512
  num_heads: int = 8
  head_dim: int = 64
  mlp_dim: int = 2048
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  mlp_activation: str = "relu"
  dropout_rate: float = 0.1
  logits_via_embedding: bool = True
  max_input_length: int = 256
  max_target_length: int = 256
  decoder_mode: DecoderMode = DecoderMode.PADIR
  positional_attention: bool = True
  length_hidden_dim: int | None = None
  layer_norm_epsilon: float = 1e-6
  length_pooling: LengthPooling = LengthPooling.MEAN
  length_target: LengthTarget = LengthTarget.ABSOLUTE
  max_length_offset: int = 32

  def __post_init__(self):
    # Frozen: store the member, so a config built from the name equals one built from it.
    object.__setattr__(self, "decoder_mode", DecoderMode.coerce(self.decoder_mode, "decoder_mode"))
    object.__setattr__(
        self, "length_pooling", LengthPooling.coerce(self.length_pooling, "length_pooling")
    )
    object.__setattr__(
        self, "length_target", LengthTarget.coerce(self.length_target, "length_target")
    )
    offset = self.max_length_offset
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
      raise ValueError(f"max_length_offset must be an int >= 0, got {offset!r}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
    if not hasattr(nn, self.mlp_activation):
      raise ValueError(f"unknown flax.linen activation {self.mlp_activation!r}")

  @property
  def activation_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def is_padir(self) -> bool:
    return self.decoder_mode is DecoderMode.PADIR

  @property
  def has_length_slot(self) -> bool:
    """The encoder input starts with the [LENGTH] slot (PaDIR with length_pooling='token')."""
    return self.is_padir and self.length_pooling is LengthPooling.TOKEN

  @property
  def num_length_classes(self) -> int:
    """Classes of the length predictor's own output: lengths, or offsets -K..K."""
    if self.length_target is LengthTarget.OFFSET:
      return 2 * self.max_length_offset + 1
    return self.max_target_length


# Transformer-base sized (Vaswani et al.): about 67M parameters with the tied embedding counted
# once, positional attention and the length classifier included.
BASE_CONFIG = TransformerConfig()
# For unit tests and the quickstart: compiles in seconds on a CPU.
TINY_CONFIG = TransformerConfig(
    vocab_size=128,
    emb_dim=64,
    num_heads=4,
    head_dim=16,
    mlp_dim=256,
    num_encoder_layers=2,
    num_decoder_layers=2,
    max_input_length=64,
    max_target_length=64,
)


def base_config(**overrides) -> TransformerConfig:
  return dataclasses.replace(BASE_CONFIG, **overrides)


def tiny_config(**overrides) -> TransformerConfig:
  return dataclasses.replace(TINY_CONFIG, **overrides)


def tiny_config_from_sizes(
    vocab_size: int,
    emb_dim: int,
    num_heads: int,
    mlp_dim: int,
    num_layers: int,
    max_input_length: int,
    max_target_length: int,
    dropout_rate: float,
    decoder_mode: DecoderMode | str = DecoderMode.PADIR,
) -> TransformerConfig:
  """`tiny_config` from the flat sizes the command lines take.

  head_dim = emb_dim // num_heads (the attention width equals the model width) and the encoder
  and decoder have `num_layers` layers each: the quickstart's and the budget trainer's shape.
  """
  return tiny_config(
      vocab_size=vocab_size,
      emb_dim=emb_dim,
      num_heads=num_heads,
      head_dim=emb_dim // num_heads,
      mlp_dim=mlp_dim,
      num_encoder_layers=num_layers,
      num_decoder_layers=num_layers,
      max_input_length=max_input_length,
      max_target_length=max_target_length,
      dropout_rate=dropout_rate,
      decoder_mode=decoder_mode,
  )
