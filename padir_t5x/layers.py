"""Flax building blocks of the PaDIR network: projections, LayerNorm, embeddings, attention.

Each parameter is created with `param_with_axes` (t5x's 'params_axes' collection, for its
partitioner) and each activation is constrained with `with_sharding_constraint`, under the logical
axis names of padir_t5x.network.LOGICAL_AXIS_NAMES. No t5x import. Masks are flax's
(`nn.make_attention_mask`, `nn.combine_masks`) as bool arrays [batch, 1, len_q, len_kv].
"""

from __future__ import annotations

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

# Large negative attention bias for masked keys; attention logits are always float32.
MASK_BIAS = -1e10


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
    return (
        jnp.moveaxis(key, -1, -3),
        jnp.moveaxis(value, -1, -3),
        nn.combine_masks(mask, step_mask, dtype=jnp.bool_),
    )

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
      logits = jnp.where(mask, logits, MASK_BIAS)
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
