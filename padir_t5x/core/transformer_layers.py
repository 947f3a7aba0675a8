"""One encoder layer and one decoder layer of the PaDIR network, pre-LayerNorm residual.

An encoder layer is bidirectional self-attention then the FFN. A decoder layer is self-attention
(bidirectional in 'padir' mode, causal and cached in 'autoregressive' mode), then in 'padir' mode
positional attention (queries and keys from the decoder position embeddings, values from the
hidden states), then cross-attention to the encoder, then the FFN. `LayerInvariants` is what a
decoder layer can be handed precomputed once per decode (network.decoder_invariants). The stacks
and the model that hold these layers are padir_t5x/core/network.py.

Activations are constrained through `layers.with_sharding_constraint`, looked up at each call,
so that a test substituting a recorder for it sees these layers' axis names too.
"""

from __future__ import annotations

from typing import NamedTuple

from flax import linen as nn
import jax.numpy as jnp

from padir_t5x.core import layers
from padir_t5x.core.layers import DenseGeneral
from padir_t5x.core.layers import LayerNorm
from padir_t5x.core.layers import MultiHeadAttention
from padir_t5x.core.network_config import TransformerConfig

Array = jnp.ndarray

# Decoder sublayer names (parameter paths), read again by `network.decoder_invariants`.
SELF_ATTENTION = "self_attention"
POSITIONAL_ATTENTION = "positional_attention"
CROSS_ATTENTION = "encoder_decoder_attention"


class LayerInvariants(NamedTuple):
  """One decoder layer's work that every refinement pass (or AR step) of a decode repeats."""

  cross_key: Array  # [b, input_length, heads, kv] cross-attention keys of the encoder output
  cross_value: Array  # [b, input_length, heads, kv] and values
  positional_logits: Array | None  # float32 [heads, t, t]; None without positional attention

  def cut_to(self, length: int) -> LayerInvariants:
    """The same with positional logits over the first `length` positions (a length bucket)."""
    if self.positional_logits is None:
      return self
    if self.positional_logits.shape[-1] < length:
      raise ValueError(
          f"decoder invariants cover {self.positional_logits.shape[-1]} positions, "
          f"the decoder input has {length}"
      )
    return self._replace(positional_logits=self.positional_logits[:, :length, :length])


class MlpBlock(nn.Module):
  """FFN: Dense(mlp_dim) -> activation -> dropout -> Dense(embed)."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = True) -> Array:
    """[batch, length, embed] -> [batch, length, embed]."""
    cfg = self.config
    h = DenseGeneral(
        features=(cfg.mlp_dim,), kernel_axes=("embed", "mlp"), dtype=cfg.activation_dtype, name="wi"
    )(x)
    h = getattr(nn, cfg.mlp_activation)(h)
    h = nn.Dropout(rate=cfg.dropout_rate)(h, deterministic=deterministic)
    h = layers.with_sharding_constraint(h, ("batch", "length", "mlp"))
    out = DenseGeneral(
        features=(x.shape[-1],), kernel_axes=("mlp", "embed"), dtype=cfg.activation_dtype, name="wo"
    )(h)
    return layers.with_sharding_constraint(out, ("batch", "length", "embed"))


def _attention(cfg: TransformerConfig, name: str) -> MultiHeadAttention:
  return MultiHeadAttention(
      num_heads=cfg.num_heads,
      head_dim=cfg.head_dim,
      dropout_rate=cfg.dropout_rate,
      dtype=cfg.activation_dtype,
      name=name,
  )


def _residual(cfg: TransformerConfig, x: Array, update: Array, deterministic: bool) -> Array:
  """Pre-LayerNorm residual: x + dropout(update) (update = sublayer(LayerNorm(x)))."""
  update = nn.Dropout(rate=cfg.dropout_rate)(update, deterministic=deterministic)
  return layers.with_sharding_constraint(x + update, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
  """Bidirectional self-attention then FFN, both pre-LayerNorm residual."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool = True) -> Array:
    """x [batch, length, embed], mask bool [batch, 1, length, length] -> [batch, length, embed]."""
    cfg = self.config
    norm = lambda name: LayerNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name=name)
    h = norm("pre_attention_layer_norm")(x)
    h = _attention(cfg, "attention")(h, h, h, mask, deterministic=deterministic)
    x = _residual(cfg, x, h, deterministic)
    h = norm("pre_mlp_layer_norm")(x)
    h = MlpBlock(cfg, name="mlp")(h, deterministic=deterministic)
    return _residual(cfg, x, h, deterministic)


class DecoderLayer(nn.Module):
  """Self-attention [-> positional attention] -> cross-attention -> FFN, pre-LayerNorm.

  In 'padir' mode self-attention is bidirectional (the caller passes a padding mask) and,
  with `config.positional_attention`, a positional-attention sublayer follows. In
  'autoregressive' mode the caller passes a causal mask (or None with the decode cache).
  """

  config: TransformerConfig

  @nn.compact
  def __call__(
      self,
      x: Array,
      encoded: Array,
      position_embeddings: Array,
      self_mask: Array | None,
      cross_mask: Array,
      deterministic: bool = True,
      decode: bool = False,
      invariants: LayerInvariants | None = None,
  ) -> Array:
    """Applies one decoder layer.

    Args:
      x: [batch, length, embed] hidden states.
      encoded: [batch, input_length, embed] encoder output, or [b, input_length, embed] for
        batch = b * c rows grouped per example (not read with `invariants`).
      position_embeddings: [batch, length, embed] decoder position embeddings (positional
        attention's queries and keys).
      self_mask: bool [batch, 1, length, length] or None.
      cross_mask: bool [batch, 1, length, input_length] ([b, 1, 1, input_length] grouped).
      deterministic: disable dropout.
      decode: autoregressive cache mode.
      invariants: this layer's `decoder_invariants`, its positional logits cut to `length`.

    Returns:
      [batch, length, embed].
    """
    cfg = self.config
    norm = lambda name: LayerNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name=name)
    h = norm("pre_self_attention_layer_norm")(x)
    h = _attention(cfg, SELF_ATTENTION)(
        h, h, h, self_mask, decode=decode, deterministic=deterministic
    )
    x = _residual(cfg, x, h, deterministic)
    if cfg.is_padir and cfg.positional_attention:
      h = norm("pre_positional_attention_layer_norm")(x)
      h = _attention(cfg, POSITIONAL_ATTENTION)(
          position_embeddings,
          position_embeddings,
          h,
          self_mask,
          deterministic=deterministic,
          logits=None if invariants is None else invariants.positional_logits,
      )
      x = _residual(cfg, x, h, deterministic)
    h = norm("pre_cross_attention_layer_norm")(x)
    h = _attention(cfg, CROSS_ATTENTION)(
        h,
        encoded,
        encoded,
        cross_mask,
        deterministic=deterministic,
        key_value=None if invariants is None else (invariants.cross_key, invariants.cross_value),
    )
    x = _residual(cfg, x, h, deterministic)
    h = norm("pre_mlp_layer_norm")(x)
    h = MlpBlock(cfg, name="mlp")(h, deterministic=deterministic)
    return _residual(cfg, x, h, deterministic)
