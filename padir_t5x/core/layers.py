"""Flax building blocks of the PaDIR network: projections, LayerNorm, embeddings, attention.

Each parameter is created with `param_with_axes` (t5x's 'params_axes' collection, for its
partitioner) and each activation is constrained with `with_sharding_constraint`, under the logical
axis names of padir_t5x.core.network.LOGICAL_AXIS_NAMES. No t5x import. Masks are flax's
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


def _heads_dense(
    num_heads: int,
    head_dim: int,
    dtype: jnp.dtype,
    kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "normal"),
    **kwargs,
) -> DenseGeneral:
  """A query/key/value projection [..., embed] -> [..., heads, kv] of MultiHeadAttention."""
  return DenseGeneral(
      features=(num_heads, head_dim),
      kernel_axes=("embed", "joined_kv"),
      dtype=dtype,
      kernel_init=kernel_init,
      **kwargs,
  )


def project_heads(
    projection_params, inputs: Array, num_heads: int, head_dim: int, dtype: jnp.dtype
) -> Array:
  """[batch, length, embed] -> [batch, length, heads, kv] with one projection's parameters.

  `projection_params`: the 'query', 'key' or 'value' subtree of a MultiHeadAttention's params.
  Computes what the module's own projection computes, outside it: for work done once per
  decode instead of once per pass (network.decoder_invariants).
  """
  dense = _heads_dense(num_heads, head_dim, dtype, parent=None)
  return dense.apply({"params": projection_params}, inputs)


def attention_logits(query: Array, key: Array) -> Array:
  """Scaled float32 query-key logits q.k / sqrt(kv), whatever the activation dtype (bfloat16
  overflows): query [b, q, heads, kv], key [b, k, heads, kv] -> [b, heads, q, k]."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", query.astype(jnp.float32), key.astype(jnp.float32))
  return logits / np.sqrt(query.shape[-1]).astype(np.float32)


def dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None,
    dtype: jnp.dtype,
    dropout: Callable[[Array], Array] | None = None,
) -> Array:
  """Scaled dot-product attention, float32 logits and softmax whatever `dtype`.

  Without dropout it is `jax.nn.dot_product_attention` (XLA's fused attention on CPU and TPU,
  cuDNN's kernel on a GPU where the shapes allow); with dropout on the probabilities (training
  only) the same arithmetic spelled out, since the fused call has no dropout.

  Args:
    query: [batch, q_length, heads, kv].
    key, value: [batch, kv_length, heads, kv].
    mask: bool broadcastable to [batch, heads, q_length, kv_length] (True: may attend) or None.
    dtype: the activation dtype of the output.
    dropout: maps float32 probabilities [batch, heads, q, kv] to dropped-out ones, or None.

  Returns:
    [batch, q_length, heads, kv] in `dtype`.
  """
  if dropout is None:
    out = jax.nn.dot_product_attention(
        query.astype(dtype),
        key.astype(dtype),
        value.astype(dtype),
        mask=None if mask is None else mask.astype(jnp.bool_),
        scale=float(1.0 / np.sqrt(query.shape[-1])),
    )
    return out.astype(dtype)
  return weighted_values(attention_logits(query, key), value, mask, dtype, dropout)


def weighted_values(
    logits: Array,
    value: Array,
    mask: Array | None,
    dtype: jnp.dtype,
    dropout: Callable[[Array], Array] | None = None,
) -> Array:
  """softmax(masked logits) . value: float32 logits [b or 1, heads, q, kv] -> [b, q, heads, kv]."""
  if mask is not None:
    logits = jnp.where(mask, logits, MASK_BIAS)
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # [b, heads, q, kv]
  if dropout is not None:
    probs = dropout(probs)
  return jnp.einsum("bhqk,bkhd->bqhd", probs.astype(dtype), value.astype(dtype))


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention with separate query, key and value inputs.

  Separate key and value inputs let positional attention take keys from position embeddings and
  values from hidden states. With `decode=True` it keeps t5x's key/value cache
  (cached_key / cached_value as [batch, heads, kv, length], cache_index): the first call
  initialises it, each later call appends one position and attends causally to the cache.

  Work that does not change between calls can come in precomputed (network.decoder_invariants):
  `key_value`, the projected keys and values (cross-attention to a fixed encoder output), and
  `logits`, query-key logits shared by every row (positional attention: positions only).

  Rows grouped per example: the keys and values may have fewer rows than the queries, b against
  n = b * c (the c hypotheses of each of b sources, in flat_batch_beam_expand order). Each
  example's c query rows are then folded into one row of c * q queries against its keys, so the
  encoder output is never copied c times; the mask must then be [b, 1, 1, kv_length].
  """

  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(1.0, "fan_in", "normal")

  def _project(self, x: Array, name: str) -> Array:
    """[batch, length, embed] -> [batch, length, heads, kv]."""
    y = _heads_dense(self.num_heads, self.head_dim, self.dtype, self.kernel_init, name=name)(x)
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
      inputs_q: Array | None,
      inputs_k: Array | None,
      inputs_v: Array,
      mask: Array | None = None,
      *,
      decode: bool = False,
      deterministic: bool = True,
      key_value: tuple[Array, Array] | None = None,
      logits: Array | None = None,
  ) -> Array:
    """Attends queries to keys/values.

    Args:
      inputs_q: [batch, q_length, q_features] (not read with `logits`).
      inputs_k: [kv_batch, kv_length, k_features] (not read with `key_value` or `logits`).
      inputs_v: [kv_batch, kv_length, v_features] (not read with `key_value`).
      mask: bool [batch, 1, q_length, kv_length] (True: may attend), [kv_batch, 1, 1,
        kv_length] when rows are grouped (see the class docstring), or None.
      decode: use/initialise the autoregressive cache (self-attention only).
      deterministic: disable attention-probability dropout.
      key_value: precomputed projections (key, value) of inputs_k / inputs_v, each
        [kv_batch, kv_length, heads, kv].
      logits: precomputed float32 [heads, q_length, kv_length] scaled query-key logits, the
        same for every row (kv_batch = batch).

    Returns:
      [batch, q_length, v_features] (the output projection keeps the embedding width).
    """
    dropout = None
    if not deterministic and self.dropout_rate > 0.0:
      rate = self.dropout_rate
      dropout_rng = self.make_rng("dropout")

      def dropout(probs: Array) -> Array:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - rate, probs.shape)
        return jnp.where(keep, probs / (1.0 - rate), 0.0)

    if key_value is None:
      key = self._project(inputs_k, "key")
      value = self._project(inputs_v, "value")
    else:
      key, value = key_value
    if logits is not None:
      # Positional attention from its pass-invariant logits: only the values are per-call.
      x = weighted_values(logits[None], value, mask, self.dtype, dropout)
    else:
      query = self._project(inputs_q, "query")
      if decode:
        key, value, mask = self._update_cache(key, value, mask)
      rows, q_length = query.shape[:2]
      kv_rows = key.shape[0]
      if rows != kv_rows:
        # Grouped rows: each example's c query rows become one row of c * q queries.
        if rows % kv_rows:
          raise ValueError(f"{rows} query rows cannot be grouped over {kv_rows} key rows")
        query = query.reshape((kv_rows, -1) + query.shape[2:])  # [b, c * q, heads, kv]
      x = dot_product_attention(query, key, value, mask, self.dtype, dropout)
      x = x.reshape((rows, q_length) + x.shape[2:])  # [n, q, heads, kv]
    x = with_sharding_constraint(x, ("batch", "length", "heads", "kv"))
    out = DenseGeneral(
        features=(inputs_v.shape[-1] if inputs_q is None else inputs_q.shape[-1],),
        in_axes=2,
        kernel_axes=("joined_kv", "embed"),
        dtype=self.dtype,
        kernel_init=self.kernel_init,
        name="out",
    )(x)
    return with_sharding_constraint(out, ("batch", "length", "embed"))
