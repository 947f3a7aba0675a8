"""The PaDIR encoder-decoder Transformer (Flax linen, no t5x import).

PaDIR (Li et al. 2024, "Promises and Pitfalls of Generative Masked Language Modeling", Sec. 3 and
App. L) decodes every target position at once and refines its own output over a few passes. The
network is a pre-LayerNorm Transformer with learned absolute position embeddings and a token
embedding shared by the encoder input, the decoder input and (when `logits_via_embedding`) the
output logits. Two decoder modes share the same stacks:

* decoder_mode='padir': each decoder layer is bidirectional self-attention (padding mask from
  `decoder_target_tokens > 0`), then positional attention (queries and keys computed from the
  decoder position embeddings, values from the hidden states: it lets a position gather content
  by where it sits rather than by what it currently holds, which matters when the decoder input
  is mostly [MASK]), then cross-attention to the encoder, then the FFN. A length classifier reads
  the encoder output: class j stands for a target of length j + 1.
* decoder_mode='autoregressive': a causal decoder with a key/value cache implementing the module
  interface t5x's `EncoderDecoderModel` calls (`__call__`, `encode`, `decode` with `decode=True`
  and `max_decode_length`, the 'cache' collection), so the same code trains the AR twin/teacher.

Why the length classifier mean-pools the encoder output instead of reading a [LENGTH] token
prepended to the source: with pooling the encoder input is exactly the AR twin's (the plain
seqio `inputs` feature), so the tasks, the feature converters and the distillation teacher share
the same data unchanged; a [LENGTH] token would make every PaDIR example differ from the AR one.

Every parameter is created with `flax.linen.partitioning.param_with_axes` (so t5x's
'params_axes' collection exists for its partitioner) and activations are constrained with
`with_sharding_constraint`; all logical axis names used are in `LOGICAL_AXIS_NAMES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from flax import linen as nn
from flax.linen import partitioning as nn_partitioning
import jax
import jax.numpy as jnp
import numpy as np

Array = jnp.ndarray
Initializer = Callable[..., Array]

param_with_axes = nn_partitioning.param_with_axes
# Module-level alias (not `nn_partitioning.with_sharding_constraint` at each call) so that a test
# can substitute a recorder and check every activation axis name.
with_sharding_constraint = nn_partitioning.with_sharding_constraint

# Every logical axis name a parameter or an activation of this network uses. 'length_classes' is
# the length classifier's output axis (max_target_length classes); the rest are t5x's names.
LOGICAL_AXIS_NAMES = (
    "batch",
    "length",
    "embed",
    "mlp",
    "heads",
    "kv",
    "joined_kv",
    "vocab",
    "abspos_buckets",
    "length_classes",
)

DECODER_MODES = ("padir", "autoregressive")
# Large negative attention bias for masked keys; attention logits are always float32.
_MASK_BIAS = -1e10


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
    length_hidden_dim: hidden width of the length classifier (None: emb_dim).
    layer_norm_epsilon: LayerNorm epsilon.
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
  decoder_mode: str = "padir"
  positional_attention: bool = True
  length_hidden_dim: int | None = None
  layer_norm_epsilon: float = 1e-6

  def __post_init__(self):
    if self.decoder_mode not in DECODER_MODES:
      raise ValueError(f"decoder_mode must be one of {DECODER_MODES}, got {self.decoder_mode!r}")
    if self.dtype not in ("float32", "bfloat16"):
      raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
    if not hasattr(nn, self.mlp_activation):
      raise ValueError(f"unknown flax.linen activation {self.mlp_activation!r}")

  @property
  def activation_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def is_padir(self) -> bool:
    return self.decoder_mode == "padir"


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


# ------------------------------------------------------------------------------------------------
# Masks.
# ------------------------------------------------------------------------------------------------
def make_attention_mask(
    query_input: Array, key_input: Array, pairwise_fn: Callable = jnp.logical_and
) -> Array:
  """[batch, len_q], [batch, len_kv] -> bool [batch, 1, len_q, len_kv] (1: broadcast heads)."""
  mask = pairwise_fn(query_input[..., :, None], key_input[..., None, :])
  return mask[..., None, :, :].astype(bool)


def make_causal_mask(tokens: Array) -> Array:
  """[batch, len] -> bool [batch, 1, len, len], query i may attend to keys j <= i."""
  idxs = jnp.broadcast_to(jnp.arange(tokens.shape[-1], dtype=jnp.int32), tokens.shape)
  return make_attention_mask(idxs, idxs, jnp.greater_equal)


def combine_masks(*masks: Array | None) -> Array | None:
  """Logical AND of the masks that are not None (None if all are)."""
  masks = [m for m in masks if m is not None]
  if not masks:
    return None
  mask = masks[0]
  for other in masks[1:]:
    mask = jnp.logical_and(mask, other)
  return mask


# ------------------------------------------------------------------------------------------------
# Building blocks.
# ------------------------------------------------------------------------------------------------
class DenseGeneral(nn.Module):
  """Linear map of the last axis (or last two, `in_axes=2`) to `features`, float32 kernel.

  The kernel is stored 2-D ([prod(in), prod(out)]) with `kernel_axes`, as t5x does, so that
  'joined_kv' names the fused heads * head_dim axis.
  """

  features: tuple[int, ...]
  kernel_axes: tuple[str, str]
  in_axes: int = 1
  use_bias: bool = False
  bias_axis: str | None = None
  dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    """[..., *in] -> [..., *features]."""
    in_shape = inputs.shape[-self.in_axes :]
    kernel = param_with_axes(
        "kernel",
        self.kernel_init,
        (int(np.prod(in_shape)), int(np.prod(self.features))),
        jnp.float32,
        axes=self.kernel_axes,
    )
    x = jnp.asarray(inputs, self.dtype).reshape(inputs.shape[: -self.in_axes] + (-1,))
    y = jnp.dot(x, jnp.asarray(kernel, self.dtype))
    if self.use_bias:
      bias = param_with_axes(
          "bias",
          nn.initializers.zeros,
          (int(np.prod(self.features)),),
          jnp.float32,
          axes=(self.bias_axis,),
      )
      y = y + jnp.asarray(bias, self.dtype)
    return y.reshape(inputs.shape[: -self.in_axes] + tuple(self.features))


class LayerNorm(nn.Module):
  """Standard LayerNorm (mean and variance, scale and bias) over the last axis, in float32."""

  epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., embed] -> [..., embed] in `dtype`."""
    features = x.shape[-1]
    x = jnp.asarray(x, jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
    scale = param_with_axes(
        "scale", nn.initializers.ones, (features,), jnp.float32, axes=("embed",)
    )
    bias = param_with_axes("bias", nn.initializers.zeros, (features,), jnp.float32, axes=("embed",))
    return jnp.asarray(y * scale + bias, self.dtype)


class TokenEmbed(nn.Module):
  """The shared token embedding: lookup, and `attend` for tied output logits."""

  num_embeddings: int
  features: int
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    # stddev 1 (as T5): tied logits are divided by sqrt(emb_dim) in `attend`.
    self.embedding = param_with_axes(
        "embedding",
        nn.initializers.normal(stddev=1.0),
        (self.num_embeddings, self.features),
        jnp.float32,
        axes=("vocab", "embed"),
    )

  def __call__(self, tokens: Array) -> Array:
    """[batch, length] token ids (any dtype, cast to int32) -> [batch, length, embed]."""
    # t5x's get_initial_variables feeds float ones unless input types are given (as T5 does).
    tokens = tokens.astype(jnp.int32)
    out = jnp.take(jnp.asarray(self.embedding, self.dtype), tokens, axis=0)
    return with_sharding_constraint(out, ("batch", "length", "embed"))

  def attend(self, query: Array) -> Array:
    """[batch, length, embed] -> float32 [batch, length, vocab] (scaled by 1/sqrt(embed))."""
    query = jnp.asarray(query, jnp.float32)
    logits = jnp.dot(query, jnp.asarray(self.embedding, jnp.float32).T)
    return logits / np.sqrt(self.features).astype(np.float32)


class PositionEmbedder(nn.Module):
  """Learned absolute position embeddings, with the decode-time position index in 'cache'.

  In decode mode the first call (cache initialisation, full length) creates the scalar cache
  variable 'position_embedder_index' = 0; each later call (one token) embeds that index and
  increments it. The name matches what t5x's decoding.cache_map leaves out of beam expansion.
  """

  num_positions: int
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
      self, tokens: Array, positions: Array | None = None, *, decode: bool = False
  ) -> Array:
    """tokens [batch, length] (for the shape) -> [batch, length, embed]."""
    table = param_with_axes(
        "embedding",
        nn.initializers.normal(stddev=1.0),
        (self.num_positions, self.features),
        jnp.float32,
        axes=("abspos_buckets", "embed"),
    )
    batch, length = tokens.shape
    cache_ready = decode and self.has_variable("cache", "position_embedder_index")
    if decode:
      index = self.variable(
          "cache", "position_embedder_index", lambda: jnp.array(0, dtype=jnp.int32)
      )
    if cache_ready:
      positions = jnp.broadcast_to(
          index.value + jnp.arange(length, dtype=jnp.int32), (batch, length)
      )
      index.value = index.value + length
    elif positions is None:
      if length > self.num_positions:
        raise ValueError(
            f"sequence length {length} exceeds the position table size "
            f"{self.num_positions} (max_input_length / max_target_length)"
        )
      positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    out = jnp.take(jnp.asarray(table, self.dtype), positions, axis=0)
    return with_sharding_constraint(out, ("batch", "length", "embed"))


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention with separate query, key and value inputs.

  Separate key and value inputs let positional attention take keys from position embeddings and
  values from hidden states. With `decode=True` it keeps t5x's key/value cache
  (cached_key / cached_value as [batch, heads, kv, length], cache_index): the first call
  initialises it, each later call appends one position and attends causally to the cache.
  """

  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "normal")

  def _project(self, x: Array, name: str) -> Array:
    """[batch, length, embed] -> [batch, length, heads, kv]."""
    y = DenseGeneral(
        features=(self.num_heads, self.head_dim),
        kernel_axes=("embed", "joined_kv"),
        dtype=self.dtype,
        kernel_init=self.kernel_init,
        name=name,
    )(x)
    return with_sharding_constraint(y, ("batch", "length", "heads", "kv"))

  def _update_cache(self, key: Array, value: Array, mask: Array | None):
    """Appends this step's key/value to the cache; returns full key, value, causal mask."""
    cache_ready = self.has_variable("cache", "cached_key")
    # [batch, length, heads, kv] is cached as [batch, heads, kv, length], as t5x does, so one
    # step is written by a one-hot broadcast instead of a scatter.
    swap = lambda s: s[:-3] + (s[-2], s[-1], s[-3])
    cached_key = self.variable("cache", "cached_key", jnp.zeros, swap(key.shape), key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, swap(value.shape), value.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, dtype=jnp.int32))
    if not cache_ready:
      return key, value, mask
    batch, num_heads, head_dim, length = cached_key.value.shape
    if key.shape != (batch, 1, num_heads, head_dim):
      raise ValueError(
          f"autoregressive cache expects one position per step: key shape "
          f"{(batch, 1, num_heads, head_dim)}, got {key.shape}"
      )
    cur_index = cache_index.value
    one_hot = jax.nn.one_hot(cur_index, length, dtype=key.dtype)
    key = cached_key.value + jnp.moveaxis(key, -3, -1) * one_hot
    value = cached_value.value + jnp.moveaxis(value, -3, -1) * one_hot
    cached_key.value, cached_value.value = key, value
    cache_index.value = cur_index + 1
    # The single query may only see positions already written.
    step_mask = jnp.broadcast_to(jnp.arange(length) <= cur_index, (batch, 1, 1, length))
    return jnp.moveaxis(key, -1, -3), jnp.moveaxis(value, -1, -3), combine_masks(mask, step_mask)

  @nn.compact
  def __call__(
      self,
      inputs_q: Array,
      inputs_k: Array,
      inputs_v: Array,
      mask: Array | None = None,
      *,
      decode: bool = False,
      deterministic: bool = True,
  ) -> Array:
    """Attends queries to keys/values.

    Args:
      inputs_q: [batch, q_length, q_features].
      inputs_k: [batch, kv_length, k_features].
      inputs_v: [batch, kv_length, v_features].
      mask: bool [batch, 1, q_length, kv_length] (True: may attend) or None.
      decode: use/initialise the autoregressive cache (self-attention only).
      deterministic: disable attention-probability dropout.

    Returns:
      [batch, q_length, q_features].
    """
    query = self._project(inputs_q, "query")
    key = self._project(inputs_k, "key")
    value = self._project(inputs_v, "value")
    if decode:
      key, value, mask = self._update_cache(key, value, mask)

    # Logits and softmax in float32 whatever the activation dtype (bfloat16 overflows).
    logits = jnp.einsum("bqhd,bkhd->bhqk", query.astype(jnp.float32), key.astype(jnp.float32))
    logits = logits / np.sqrt(self.head_dim).astype(np.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, _MASK_BIAS)
    probs = jax.nn.softmax(logits, axis=-1)
    if not deterministic and self.dropout_rate > 0.0:
      keep = jax.random.bernoulli(self.make_rng("dropout"), 1.0 - self.dropout_rate, probs.shape)
      probs = jnp.where(keep, probs / (1.0 - self.dropout_rate), 0.0)
    x = jnp.einsum("bhqk,bkhd->bqhd", probs.astype(self.dtype), value)
    x = with_sharding_constraint(x, ("batch", "length", "heads", "kv"))
    out = DenseGeneral(
        features=(inputs_q.shape[-1],),
        in_axes=2,
        kernel_axes=("joined_kv", "embed"),
        dtype=self.dtype,
        kernel_init=self.kernel_init,
        name="out",
    )(x)
    return with_sharding_constraint(out, ("batch", "length", "embed"))


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
    h = with_sharding_constraint(h, ("batch", "length", "mlp"))
    out = DenseGeneral(
        features=(x.shape[-1],), kernel_axes=("mlp", "embed"), dtype=cfg.activation_dtype, name="wo"
    )(h)
    return with_sharding_constraint(out, ("batch", "length", "embed"))


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
  return with_sharding_constraint(x + update, ("batch", "length", "embed"))


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
  ) -> Array:
    """Applies one decoder layer.

    Args:
      x: [batch, length, embed] hidden states.
      encoded: [batch, input_length, embed] encoder output.
      position_embeddings: [batch, length, embed] decoder position embeddings (positional
        attention's queries and keys).
      self_mask: bool [batch, 1, length, length] or None.
      cross_mask: bool [batch, 1, length, input_length].
      deterministic: disable dropout.
      decode: autoregressive cache mode.

    Returns:
      [batch, length, embed].
    """
    cfg = self.config
    norm = lambda name: LayerNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name=name)
    h = norm("pre_self_attention_layer_norm")(x)
    h = _attention(cfg, "self_attention")(
        h, h, h, self_mask, decode=decode, deterministic=deterministic
    )
    x = _residual(cfg, x, h, deterministic)
    if cfg.is_padir and cfg.positional_attention:
      h = norm("pre_positional_attention_layer_norm")(x)
      h = _attention(cfg, "positional_attention")(
          position_embeddings, position_embeddings, h, self_mask, deterministic=deterministic
      )
      x = _residual(cfg, x, h, deterministic)
    h = norm("pre_cross_attention_layer_norm")(x)
    h = _attention(cfg, "encoder_decoder_attention")(
        h, encoded, encoded, cross_mask, deterministic=deterministic
    )
    x = _residual(cfg, x, h, deterministic)
    h = norm("pre_mlp_layer_norm")(x)
    h = MlpBlock(cfg, name="mlp")(h, deterministic=deterministic)
    return _residual(cfg, x, h, deterministic)


def _check_length(tokens: Array, table_size: int, what: str):
  if tokens.shape[-1] > table_size:
    raise ValueError(
        f"{what} length {tokens.shape[-1]} exceeds its position table "
        f"({table_size}); raise max_{what}_length in TransformerConfig"
    )


class Encoder(nn.Module):
  """Token + position embedding, encoder layers, final LayerNorm."""

  config: TransformerConfig
  shared_embedding: TokenEmbed

  @nn.compact
  def __call__(
      self, tokens: Array, mask: Array, positions: Array | None = None, deterministic: bool = True
  ) -> Array:
    """tokens int [batch, length], mask bool [batch, 1, length, length] -> [b, length, embed]."""
    cfg = self.config
    _check_length(tokens, cfg.max_input_length, "input")
    x = self.shared_embedding(tokens) + PositionEmbedder(
        cfg.max_input_length, cfg.emb_dim, cfg.activation_dtype, name="position_embedder"
    )(tokens, positions)
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
    x = with_sharding_constraint(x.astype(cfg.activation_dtype), ("batch", "length", "embed"))
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, mask, deterministic)
    x = LayerNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="encoder_norm")(x)
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
    return with_sharding_constraint(x, ("batch", "length", "embed"))


class Decoder(nn.Module):
  """Token + position embedding, decoder layers, final LayerNorm, float32 vocabulary logits."""

  config: TransformerConfig
  shared_embedding: TokenEmbed

  @nn.compact
  def __call__(
      self,
      encoded: Array,
      tokens: Array,
      self_mask: Array | None,
      cross_mask: Array,
      positions: Array | None = None,
      deterministic: bool = True,
      decode: bool = False,
  ) -> Array:
    """Decoder stack.

    Args:
      encoded: [batch, input_length, embed].
      tokens: int [batch, length] decoder input tokens (length 1 per cached decode step).
      self_mask: bool [batch, 1, length, length] or None.
      cross_mask: bool [batch, 1, length, input_length].
      positions: optional int [batch, length] positions (default 0..length-1).
      deterministic: disable dropout.
      decode: autoregressive cache mode.

    Returns:
      float32 logits [batch, length, vocab].
    """
    cfg = self.config
    pos = PositionEmbedder(
        cfg.max_target_length, cfg.emb_dim, cfg.activation_dtype, name="position_embedder"
    )(tokens, positions, decode=decode)
    x = self.shared_embedding(tokens) + pos
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
    x = with_sharding_constraint(x.astype(cfg.activation_dtype), ("batch", "length", "embed"))
    for i in range(cfg.num_decoder_layers):
      x = DecoderLayer(cfg, name=f"layers_{i}")(
          x, encoded, pos, self_mask, cross_mask, deterministic, decode
      )
    x = LayerNorm(cfg.layer_norm_epsilon, cfg.activation_dtype, name="decoder_norm")(x)
    x = nn.Dropout(rate=cfg.dropout_rate)(x, deterministic=deterministic)
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(x)
    else:
      logits = DenseGeneral(
          features=(cfg.vocab_size,),
          kernel_axes=("embed", "vocab"),
          dtype=jnp.float32,
          name="logits_dense",
      )(x)
    return with_sharding_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))


class LengthPredictor(nn.Module):
  """Target-length classifier on the mean-pooled encoder output (see the module docstring).

  Class j stands for a target of length j + 1 (EOS included), j < max_target_length.
  """

  config: TransformerConfig

  @nn.compact
  def __call__(self, encoded: Array, encoder_input_tokens: Array) -> Array:
    """encoded [batch, input_length, embed], tokens [batch, input_length] -> f32 [batch, L]."""
    cfg = self.config
    valid = (encoder_input_tokens > 0)[..., None].astype(jnp.float32)
    # Guard an all-padding row (eval padding) against 0 / 0.
    pooled = jnp.sum(encoded.astype(jnp.float32) * valid, axis=1) / jnp.maximum(
        jnp.sum(valid, axis=1), 1.0
    )
    pooled = with_sharding_constraint(pooled, ("batch", "embed"))
    hidden = DenseGeneral(
        features=(cfg.length_hidden_dim or cfg.emb_dim,),
        kernel_axes=("embed", "mlp"),
        use_bias=True,
        bias_axis="mlp",
        dtype=jnp.float32,
        name="hidden",
    )(pooled)
    hidden = getattr(nn, cfg.mlp_activation)(hidden)
    hidden = with_sharding_constraint(hidden, ("batch", "mlp"))
    logits = DenseGeneral(
        features=(cfg.max_target_length,),
        kernel_axes=("mlp", "length_classes"),
        use_bias=True,
        bias_axis="length_classes",
        dtype=jnp.float32,
        name="logits",
    )(hidden)
    return with_sharding_constraint(logits, ("batch", "length_classes"))


# ------------------------------------------------------------------------------------------------
# The model.
# ------------------------------------------------------------------------------------------------
class Transformer(nn.Module):
  """Encoder-decoder with t5x's EncoderDecoderModel module interface.

  Methods: `encode`, `predict_length` (padir mode), `decode`, `__call__`. Parameter tree:
  token_embedder, encoder, decoder, and length_predictor in padir mode.
  """

  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.token_embedder = TokenEmbed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype)
    self.encoder = Encoder(cfg, shared_embedding=self.token_embedder)
    self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)
    if cfg.is_padir:
      self.length_predictor = LengthPredictor(cfg)

  def encode(
      self,
      encoder_input_tokens: Array,
      encoder_segment_ids: Array | None = None,
      encoder_positions: Array | None = None,
      enable_dropout: bool = True,
  ) -> Array:
    """int [batch, input_length] -> [batch, input_length, embed].

    Bidirectional, padding (tokens > 0) masked; with segment ids a token attends only within
    its segment (packed examples).
    """
    if encoder_input_tokens.ndim != 2:
      raise ValueError(
          f"encoder_input_tokens must be [batch, length], got " f"{encoder_input_tokens.shape}"
      )
    valid = encoder_input_tokens > 0
    mask = make_attention_mask(valid, valid)
    if encoder_segment_ids is not None:
      mask = combine_masks(
          mask, make_attention_mask(encoder_segment_ids, encoder_segment_ids, jnp.equal)
      )
    return self.encoder(
        encoder_input_tokens, mask, encoder_positions, deterministic=not enable_dropout
    )

  def predict_length(self, encoded: Array, encoder_input_tokens: Array) -> Array:
    """Length logits float32 [batch, max_target_length]; class j means length j + 1."""
    if not self.config.is_padir:
      raise ValueError("predict_length needs decoder_mode='padir'")
    return self.length_predictor(encoded, encoder_input_tokens)

  def decode(
      self,
      encoded: Array,
      encoder_input_tokens: Array,
      decoder_input_tokens: Array,
      decoder_target_tokens: Array,
      encoder_segment_ids: Array | None = None,
      decoder_segment_ids: Array | None = None,
      decoder_positions: Array | None = None,
      enable_dropout: bool = True,
      decode: bool = False,
      max_decode_length: int | None = None,
  ) -> Array:
    """Decoder logits float32 [batch, target_length, vocab].

    Args:
      encoded: [batch, input_length, embed] from `encode`.
      encoder_input_tokens: int [batch, input_length], only for the padding mask.
      decoder_input_tokens: int [batch, target_length]: in padir mode the (partly masked or
        previous-pass) target; in AR mode the targets shifted right (BOS = 0); one token per
        step when decode=True.
      decoder_target_tokens: int [batch, target_length]; > 0 marks real positions (padding
        mask). Ignored for masking when decode=True.
      encoder_segment_ids / decoder_segment_ids: packing (AR mode only).
      decoder_positions: optional int [batch, target_length] positions.
      enable_dropout: apply dropout (needs a 'dropout' rng).
      decode: AR mode only: use the key/value cache ('cache' collection must be mutable).
      max_decode_length: accepted for t5x; the cache length already fixes it.
    """
    del max_decode_length  # the cache shape (set at initialisation) determines it
    cfg = self.config
    if cfg.is_padir:
      self_mask, cross_mask = self._padir_masks(
          encoder_input_tokens,
          decoder_target_tokens,
          encoder_segment_ids,
          decoder_segment_ids,
          decode,
      )
    else:
      self_mask, cross_mask = self._autoregressive_masks(
          encoder_input_tokens,
          decoder_target_tokens,
          encoder_segment_ids,
          decoder_segment_ids,
          decode,
      )
    if not decode:
      _check_length(decoder_input_tokens, cfg.max_target_length, "target")
    return self.decoder(
        encoded,
        decoder_input_tokens,
        self_mask,
        cross_mask,
        decoder_positions,
        deterministic=not enable_dropout,
        decode=decode,
    )

  def _padir_masks(
      self,
      encoder_input_tokens,
      decoder_target_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      decode,
  ):
    """Bidirectional decoder padding mask and encoder-padding cross mask."""
    if decode:
      raise ValueError(
          "decode=True (autoregressive cache) is not available with "
          "decoder_mode='padir': PaDIR decodes all positions in parallel"
      )
    if decoder_segment_ids is not None or encoder_segment_ids is not None:
      raise NotImplementedError(
          "packed examples (segment ids) are unsupported for PaDIR: the length classifier and "
          "the parallel decoder need one example per row; set pack=False"
      )
    valid_target = decoder_target_tokens > 0
    self_mask = make_attention_mask(valid_target, valid_target)
    cross_mask = make_attention_mask(valid_target, encoder_input_tokens > 0)
    return self_mask, cross_mask

  def _autoregressive_masks(
      self,
      encoder_input_tokens,
      decoder_target_tokens,
      encoder_segment_ids,
      decoder_segment_ids,
      decode,
  ):
    """Causal+padding(+segment) self mask and cross mask, as t5x's Transformer.decode."""
    if decode:
      if encoder_segment_ids is not None:
        raise ValueError("packing is not used while decoding, but encoder_segment_ids was given")
      # The cache enforces causality; every decoded position is a query.
      return None, make_attention_mask(
          jnp.ones_like(decoder_target_tokens) > 0, encoder_input_tokens > 0
      )
    valid_target = decoder_target_tokens > 0
    self_mask = combine_masks(
        make_causal_mask(decoder_target_tokens), make_attention_mask(valid_target, valid_target)
    )
    cross_mask = make_attention_mask(valid_target, encoder_input_tokens > 0)
    if decoder_segment_ids is not None:
      self_mask = combine_masks(
          self_mask, make_attention_mask(decoder_segment_ids, decoder_segment_ids, jnp.equal)
      )
    if encoder_segment_ids is not None:
      cross_mask = combine_masks(
          cross_mask, make_attention_mask(decoder_segment_ids, encoder_segment_ids, jnp.equal)
      )
    return self_mask, cross_mask

  def __call__(
      self,
      encoder_input_tokens: Array,
      decoder_input_tokens: Array,
      decoder_target_tokens: Array,
      encoder_segment_ids: Array | None = None,
      decoder_segment_ids: Array | None = None,
      encoder_positions: Array | None = None,
      decoder_positions: Array | None = None,
      *,
      enable_dropout: bool = True,
      decode: bool = False,
      return_length_logits: bool = False,
  ):
    """Full forward pass (t5x signature): logits float32 [batch, target_length, vocab].

    In padir mode the length classifier also runs (so `init` creates its parameters); with
    `return_length_logits` the result is (logits, length_logits [batch, max_target_length]).
    In AR mode, decode=True with mutable=['cache'] initialises the cache (t5x's
    `_compute_kv_cache`).
    """
    cfg = self.config
    if cfg.is_padir and decode:
      raise ValueError("decode=True is not available with decoder_mode='padir'")
    if return_length_logits and not cfg.is_padir:
      raise ValueError("return_length_logits needs decoder_mode='padir'")
    encoded = self.encode(
        encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout=enable_dropout
    )
    logits = self.decode(
        encoded,
        encoder_input_tokens,
        decoder_input_tokens,
        decoder_target_tokens,
        encoder_segment_ids=encoder_segment_ids,
        decoder_segment_ids=decoder_segment_ids,
        decoder_positions=decoder_positions,
        enable_dropout=enable_dropout,
        decode=decode,
    )
    if not cfg.is_padir:
      return logits
    length_logits = self.predict_length(encoded, encoder_input_tokens)
    return (logits, length_logits) if return_length_logits else logits
