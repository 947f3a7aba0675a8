"""The length predictor of the PaDIR network: logits over the target lengths from the encoder.

The length predictor has two choices (TransformerConfig.length_pooling and .length_target):

* what it reads. 'mean' (the default): the mean of the encoder output over the non-PAD source
  positions, then an MLP. 'token' (Mask-Predict, Ghazvininejad et al. 2019, and the released PaDIR
  code): a learned [LENGTH] vector enters the encoder at an extra first position, attends and is
  attended to like any source token (it is never padding), and its output h is scored against a
  length-embedding table, logits = h . E^T / sqrt(emb_dim) + bias (scaled as the tied token
  logits). The slot is added inside the network, not to the data: the seqio `inputs` feature stays
  exactly the AR twin's, so the tasks, feature converters and the distillation teacher are shared
  unchanged. The slot's vector is its own learned embedding, with no row of the encoder's position
  table: a slot that is always first needs no separate position (token + position of a constant
  slot would be one learned vector anyway), the table keeps max_input_length rows (a source can
  still be that long, and the table has the shape a 'mean' model's has). `encode` then returns
  [batch, 1 + input_length, embed], row 0 the slot; `decode` drops row 0, so the decoder's
  cross-attention sees the source positions only (as in Mask-Predict): the slot holds no source
  content, and the cross mask, the attention analyses and every [batch, input_length] shape
  downstream stay as they are.
* what it classifies. 'absolute' (the default): one class per length 1..max_target_length.
  'offset': one class per offset target length - source length in [-K, K] (K =
  max_length_offset, source length = non-PAD encoder tokens), turned into logits over absolute
  lengths by `layout.offset_length_logits` (DISALLOWED_LENGTH_LOGIT outside the window or
  outside 1..max_target_length), so that decoding, the loss and scoring read the same
  [batch, max_target_length] logits either way.

Both choices apply to decoder_mode='padir' only (the AR twin has no length predictor).

`LengthPredictor` ('mean') and `LengthTokenPredictor` ('token') compute the classifier's own
logits (lengths or offsets); `network.Transformer.predict_length` picks one by the config, and
turns offsets into lengths. Activations are constrained through `layers.with_sharding_constraint`,
looked up at each call, so that a test substituting a recorder for it sees these axis names too.
"""

from __future__ import annotations

from flax import linen as nn
import jax.numpy as jnp

from padir_t5x.core import layers
from padir_t5x.core.layers import DenseGeneral
from padir_t5x.core.layers import param_with_axes
from padir_t5x.core.network_config import TransformerConfig

Array = jnp.ndarray


class LengthPredictor(nn.Module):
  """Length classifier on the mean-pooled encoder output (length_pooling='mean').

  Returns `config.num_length_classes` logits: class j stands for a target of length j + 1 (EOS
  included), or for offset j - K with length_target='offset' (Transformer.predict_length turns
  those into logits over lengths).
  """

  config: TransformerConfig

  @nn.compact
  def __call__(self, encoded: Array, encoder_input_tokens: Array) -> Array:
    """encoded [batch, input_length, embed], tokens [batch, input_length] -> f32 [batch, C]."""
    cfg = self.config
    valid = (encoder_input_tokens > 0)[..., None].astype(jnp.float32)
    # Guard an all-padding row (eval padding) against 0 / 0.
    pooled = jnp.sum(encoded.astype(jnp.float32) * valid, axis=1) / jnp.maximum(
        jnp.sum(valid, axis=1), 1.0
    )
    pooled = layers.with_sharding_constraint(pooled, ("batch", "embed"))
    hidden = DenseGeneral(
        features=(cfg.length_hidden_dim or cfg.emb_dim,),
        kernel_axes=("embed", "mlp"),
        use_bias=True,
        bias_axis="mlp",
        dtype=jnp.float32,
        name="hidden",
    )(pooled)
    hidden = getattr(nn, cfg.mlp_activation)(hidden)
    hidden = layers.with_sharding_constraint(hidden, ("batch", "mlp"))
    logits = DenseGeneral(
        features=(cfg.num_length_classes,),
        kernel_axes=("mlp", "length_classes"),
        use_bias=True,
        bias_axis="length_classes",
        dtype=jnp.float32,
        name="logits",
    )(hidden)
    return layers.with_sharding_constraint(logits, ("batch", "length_classes"))


class LengthTokenPredictor(nn.Module):
  """The [LENGTH] slot's encoder output scored against a length-embedding table ('token').

  logits = h . E^T / sqrt(emb_dim) + bias, E [C, emb_dim] (C = `config.num_length_classes`
  lengths or offsets, as LengthPredictor), scaled as the tied token logits (TokenEmbed.attend) so
  that the initial logits are of order 1.
  """

  config: TransformerConfig

  @nn.compact
  def __call__(self, slot: Array) -> Array:
    """slot [batch, embed] (the encoder output at the [LENGTH] position) -> f32 [batch, C]."""
    cfg = self.config
    table = param_with_axes(
        "length_embedding",
        nn.initializers.normal(stddev=1.0),
        (cfg.num_length_classes, cfg.emb_dim),
        jnp.float32,
        axes=("length_classes", "embed"),
    )
    bias = param_with_axes(
        "bias",
        nn.initializers.zeros,
        (cfg.num_length_classes,),
        jnp.float32,
        axes=("length_classes",),
    )
    slot = layers.with_sharding_constraint(slot.astype(jnp.float32), ("batch", "embed"))
    logits = jnp.dot(slot, table.T) / jnp.sqrt(jnp.float32(cfg.emb_dim)) + bias
    return layers.with_sharding_constraint(logits, ("batch", "length_classes"))
