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
  is mostly [MASK]), then cross-attention to the encoder, then the FFN. A length predictor reads
  the encoder output and returns logits over the target lengths: class j stands for length j + 1.
* decoder_mode='autoregressive': a causal decoder with a key/value cache implementing the module
  interface t5x's `EncoderDecoderModel` calls (`__call__`, `encode`, `decode` with `decode=True`
  and `max_decode_length`, the 'cache' collection), so the same code trains the AR twin/teacher.

The length predictor (what it reads, 'mean' or 'token', and what it classifies, 'absolute' or
'offset') is padir_t5x/core/length_predictor.py; the layers are padir_t5x/core/transformer_layers.py
and the hyperparameters `TransformerConfig` padir_t5x/core/network_config.py.

Every parameter is created with `flax.linen.partitioning.param_with_axes` (so t5x's
'params_axes' collection exists for its partitioner) and activations are constrained with
`with_sharding_constraint`; all logical axis names used are in `LOGICAL_AXIS_NAMES`.
"""

from __future__ import annotations

import dataclasses

from flax import linen as nn
import jax.numpy as jnp

from padir_t5x.core import layout
from padir_t5x.core import masks
from padir_t5x.core.layers import DenseGeneral
from padir_t5x.core.layers import LayerNorm
from padir_t5x.core.layers import PositionEmbedder
from padir_t5x.core.layers import TokenEmbed
from padir_t5x.core.layers import attention_logits
from padir_t5x.core.layers import param_with_axes
from padir_t5x.core.layers import project_heads
from padir_t5x.core.length_predictor import LengthPredictor
from padir_t5x.core.length_predictor import LengthTokenPredictor
from padir_t5x.core.modes import LengthPooling
from padir_t5x.core.modes import LengthTarget
from padir_t5x.core.network_config import TransformerConfig
from padir_t5x.core.transformer_layers import CROSS_ATTENTION
from padir_t5x.core.transformer_layers import POSITIONAL_ATTENTION
from padir_t5x.core.transformer_layers import DecoderLayer
from padir_t5x.core.transformer_layers import EncoderLayer
from padir_t5x.core.transformer_layers import LayerInvariants

Array = jnp.ndarray

# Module-level alias (not `nn_partitioning.with_sharding_constraint` at each call) so that a test
# can substitute a recorder and check every activation axis name (padir_t5x.core.layers has its
# own).
with_sharding_constraint = nn.partitioning.with_sharding_constraint

# Every logical axis name a parameter or an activation of this network uses. 'length_classes' is
# the length classifier's output axis (max_target_length classes, or 2K + 1 offsets; also the rows
# of the [LENGTH] token's length-embedding table); the rest are t5x's names.
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


def _check_length(tokens: Array, table_size: int, what: str):
  if tokens.shape[-1] > table_size:
    raise ValueError(
        f"{what} length {tokens.shape[-1]} exceeds its position table "
        f"({table_size}); raise max_{what}_length in TransformerConfig"
    )


class Encoder(nn.Module):
  """Token + position embedding, encoder layers, final LayerNorm.

  With `config.has_length_slot` the [LENGTH] vector is prepended to the embedded tokens: the
  output (and the mask the caller passes) then has 1 + length positions, the slot first.
  """

  config: TransformerConfig
  shared_embedding: TokenEmbed

  @nn.compact
  def __call__(
      self, tokens: Array, mask: Array, positions: Array | None = None, deterministic: bool = True
  ) -> Array:
    """tokens int [batch, length], mask bool [batch, 1, n, n] -> [b, n, embed] (n: see class)."""
    cfg = self.config
    _check_length(tokens, cfg.max_input_length, "input")
    x = self.shared_embedding(tokens) + PositionEmbedder(
        cfg.max_input_length, cfg.emb_dim, cfg.activation_dtype, name="position_embedder"
    )(tokens, positions)
    if cfg.has_length_slot:
      # The [LENGTH] slot: one learned vector (its own position, see
      # padir_t5x/core/length_predictor.py).
      slot = param_with_axes(
          "length_token",
          nn.initializers.normal(stddev=1.0),
          (cfg.emb_dim,),
          jnp.float32,
          axes=("embed",),
      )
      slot = jnp.broadcast_to(jnp.asarray(slot, x.dtype), (x.shape[0], 1, cfg.emb_dim))
      x = jnp.concatenate([slot, x], axis=1)
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
      invariants: tuple[LayerInvariants, ...] | None = None,
  ) -> Array:
    """Decoder stack.

    Args:
      encoded: [batch, input_length, embed], or [b, input_length, embed] with the batch rows
        grouped per example (batch = b * c; see layers.MultiHeadAttention).
      tokens: int [batch, length] decoder input tokens (length 1 per cached decode step).
      self_mask: bool [batch, 1, length, length] or None.
      cross_mask: bool [batch, 1, length, input_length] ([b, 1, 1, input_length] grouped).
      positions: optional int [batch, length] positions (default 0..length-1).
      deterministic: disable dropout.
      decode: autoregressive cache mode.
      invariants: `decoder_invariants` (one per layer), positional logits over at least
        `length` positions (cut here); needs the default positions.

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
    if invariants is not None:
      if positions is not None:
        raise ValueError("decoder invariants assume the default positions 0..length-1")
      invariants = [layer.cut_to(tokens.shape[1]) for layer in invariants]
    for i in range(cfg.num_decoder_layers):
      x = DecoderLayer(cfg, name=f"layers_{i}")(
          x,
          encoded,
          pos,
          self_mask,
          cross_mask,
          deterministic,
          decode,
          None if invariants is None else invariants[i],
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


def _check_length_slot(config: TransformerConfig, encoded: Array, encoder_input_tokens: Array):
  """ValueError unless `encoded` has the positions `encode` gives for these tokens."""
  expected = encoder_input_tokens.shape[1] + int(config.has_length_slot)
  if encoded.shape[1] != expected:
    slot = " (1 [LENGTH] slot + the source)" if config.has_length_slot else ""
    raise ValueError(
        f"encoded has {encoded.shape[1]} positions but Transformer.encode gives {expected}{slot} "
        f"for {encoder_input_tokens.shape[1]} input tokens: pass the output of `encode`"
    )


def source_states(config: TransformerConfig, encoded: Array) -> Array:
  """The encoder output at the source positions: [b, n, embed] -> [b, input_length, embed].

  `encoded` as `Transformer.encode` returns it: with the [LENGTH] slot (config.has_length_slot)
  its row 0 is dropped; otherwise it is returned as is. What the decoder cross-attends to.
  """
  return encoded[:, 1:] if config.has_length_slot else encoded


# ------------------------------------------------------------------------------------------------
# The model.
# ------------------------------------------------------------------------------------------------
class Transformer(nn.Module):
  """Encoder-decoder with t5x's EncoderDecoderModel module interface.

  Methods: `encode`, `predict_length` (padir mode), `decode`, `__call__`. Parameter tree:
  token_embedder, encoder (with encoder/length_token for length_pooling='token'), decoder, and
  length_predictor in padir mode (hidden + logits for 'mean', length_embedding + bias for
  'token').
  """

  config: TransformerConfig

  def setup(self):
    cfg = self.config
    self.token_embedder = TokenEmbed(cfg.vocab_size, cfg.emb_dim, cfg.activation_dtype)
    self.encoder = Encoder(cfg, shared_embedding=self.token_embedder)
    self.decoder = Decoder(cfg, shared_embedding=self.token_embedder)
    if cfg.is_padir:
      if cfg.length_pooling is LengthPooling.TOKEN:
        self.length_predictor = LengthTokenPredictor(cfg)
      else:
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
    its segment (packed examples). With the [LENGTH] slot (length_pooling='token', padir mode)
    the result is [batch, 1 + input_length, embed], the slot first: it is never masked, so it
    attends to every source token and every source token attends to it. `decode` and
    `predict_length` take this output as it is (`source_states` drops the slot).
    """
    if encoder_input_tokens.ndim != 2:
      raise ValueError(
          f"encoder_input_tokens must be [batch, length], got " f"{encoder_input_tokens.shape}"
      )
    if self.config.has_length_slot:
      if encoder_segment_ids is not None:
        raise NotImplementedError("packed examples (segment ids) are unsupported for PaDIR")
      # The slot is a valid position: a nonzero stand-in token makes its row and column unmasked.
      slot = jnp.ones((encoder_input_tokens.shape[0], 1), encoder_input_tokens.dtype)
      mask = masks.encoder_mask(jnp.concatenate([slot, encoder_input_tokens], axis=1))
    else:
      mask = masks.encoder_mask(encoder_input_tokens, encoder_segment_ids)
    return self.encoder(
        encoder_input_tokens, mask, encoder_positions, deterministic=not enable_dropout
    )

  def predict_length(self, encoded: Array, encoder_input_tokens: Array) -> Array:
    """Length logits float32 [batch, max_target_length]; class j means length j + 1.

    Args:
      encoded: `encode`'s output ([batch, 1 + input_length, embed] with the [LENGTH] slot).
      encoder_input_tokens: int [batch, input_length] (padding, and the source length of the
        'offset' target).

    With length_target='offset' the lengths out of reach (offset outside [-K, K]) have logit
    layout.DISALLOWED_LENGTH_LOGIT.
    """
    cfg = self.config
    if not cfg.is_padir:
      raise ValueError("predict_length needs decoder_mode='padir'")
    _check_length_slot(cfg, encoded, encoder_input_tokens)
    if cfg.has_length_slot:
      logits = self.length_predictor(encoded[:, 0])
    else:
      logits = self.length_predictor(encoded, encoder_input_tokens)
    if cfg.length_target is LengthTarget.OFFSET:
      logits = layout.offset_length_logits(
          logits, layout.sequence_lengths(encoder_input_tokens), cfg.max_target_length
      )
      logits = with_sharding_constraint(logits, ("batch", "length_classes"))
    return logits

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
      invariants: tuple[LayerInvariants, ...] | None = None,
  ) -> Array:
    """Decoder logits float32 [batch, target_length, vocab].

    The decoder rows may be grouped per source: `encoded` and `encoder_input_tokens` then have
    b rows and the decoder arrays n = b * c (each example's c hypotheses or beams, in
    flat_batch_beam_expand order), and the encoder output is read without c copies.

    Args:
      encoded: from `encode` ([batch, input_length, embed], or [batch, 1 + input_length, embed]
        with the [LENGTH] slot, which the decoder does not see: `source_states`).
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
      invariants: `decoder_invariants(config, params, encoded)`, computed once for a decode
        whose passes (or steps) all read the same encoder output: the decoder then skips the
        cross-attention key/value projections and positional attention's query/key work.
    """
    del max_decode_length  # the cache shape (set at initialisation) determines it
    cfg = self.config
    if cfg.is_padir:
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
      _check_length_slot(cfg, encoded, encoder_input_tokens)
      self_mask, cross_mask = masks.padir_decoder_masks(encoder_input_tokens, decoder_target_tokens)
    else:
      self_mask, cross_mask = masks.autoregressive_decoder_masks(
          encoder_input_tokens,
          decoder_target_tokens,
          encoder_segment_ids,
          decoder_segment_ids,
          decode,
      )
    if not decode:
      _check_length(decoder_input_tokens, cfg.max_target_length, "target")
    return self.decoder(
        source_states(cfg, encoded),
        decoder_input_tokens,
        self_mask,
        cross_mask,
        decoder_positions,
        deterministic=not enable_dropout,
        decode=decode,
        invariants=invariants,
    )

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


def with_activation_dtype(module: Transformer, dtype: str) -> Transformer:
  """The same network computing its activations in `dtype` ('float32' or 'bfloat16').

  The parameters are float32 whatever the dtype, so one checkpoint serves both: bfloat16
  inference on an accelerator (attention logits, softmax and output logits stay float32).
  """
  if not isinstance(module, Transformer):
    raise TypeError(f"with_activation_dtype needs a network.Transformer, got {type(module)}")
  return Transformer(dataclasses.replace(module.config, dtype=dtype))


def encode_and_predict_length(
    module: nn.Module,
    params,
    encoder_input_tokens: Array,
    *,
    enable_dropout: bool = False,
    dropout_rng: Array | None = None,
) -> tuple[Array, Array]:
  """Encodes once and predicts the length: how training, decoding and scoring all start.

  Works with any module that has Transformer's `encode(tokens, enable_dropout=...)` and
  `predict_length(encoded, tokens)` methods (tests use small fakes).

  Args:
    module: the network.
    params: its 'params' collection.
    encoder_input_tokens: int [batch, input_length].
    enable_dropout: encoder dropout (the length classifier has none).
    dropout_rng: the encoder's 'dropout' key, needed with enable_dropout.

  Returns:
    (encoded [batch, input_length, embed] ([batch, 1 + input_length, embed] with the [LENGTH]
     slot: pass it on to `decode` as it is), length_logits float32 [batch, max_target_length]).
  """
  variables = {"params": params}
  rngs = None if dropout_rng is None else {"dropout": dropout_rng}
  encoded = module.apply(
      variables, encoder_input_tokens, enable_dropout=enable_dropout, method="encode", rngs=rngs
  )
  length_logits = module.apply(variables, encoded, encoder_input_tokens, method="predict_length")
  return encoded, length_logits


# ------------------------------------------------------------------------------------------------
# Work done once per decode, not once per pass.
# ------------------------------------------------------------------------------------------------
def decoder_invariants(
    config: TransformerConfig, params, encoded: Array, target_length: int | None = None
) -> tuple[LayerInvariants, ...]:
  """What each decoder layer computes identically at every pass of a decode, computed once.

  * Cross-attention keys and values depend only on the encoder output: one projection per
    example (not per hypothesis row, not per pass).
  * Positional attention's query-key logits depend only on the positions (its queries and keys
    are position embeddings): one [heads, t, t] table shared by every row; the length mask and
    the softmax stay per pass, since rows differ in length.

  Pass the result to `Transformer.decode(..., invariants=...)`: the logits equal a plain
  decode's (tests/test_network.py). The projections run with the module's own parameters
  through `layers.project_heads`, so they are the module's arithmetic, not a copy of it.

  Args:
    config: the network's TransformerConfig.
    params: its 'params' collection.
    encoded: `Transformer.encode`'s output [b, (1 +) input_length, embed].
    target_length: t, positions covered by the positional logits (default max_target_length;
      a decode over fewer positions cuts them).

  Returns:
    One LayerInvariants per decoder layer.
  """
  cfg = config
  t = target_length or cfg.max_target_length
  dtype = cfg.activation_dtype
  decoder = params["decoder"]
  source = source_states(cfg, encoded)  # [b, s, d]

  def project(projection_params, x: Array) -> Array:
    return project_heads(projection_params, x, cfg.num_heads, cfg.head_dim, dtype)

  positions = None
  if cfg.is_padir and cfg.positional_attention:
    embedder = PositionEmbedder(cfg.max_target_length, cfg.emb_dim, dtype, parent=None)
    positions = embedder.apply(
        {"params": decoder["position_embedder"]}, jnp.zeros((1, t), jnp.int32)
    )  # [1, t, d]
  layers = []
  for i in range(cfg.num_decoder_layers):
    layer = decoder[f"layers_{i}"]
    logits = None
    if positions is not None:
      query = project(layer[POSITIONAL_ATTENTION]["query"], positions)  # [1, t, h, kv]
      key = project(layer[POSITIONAL_ATTENTION]["key"], positions)  # [1, t, h, kv]
      logits = attention_logits(query, key)[0]  # [h, t, t]
    cross = layer[CROSS_ATTENTION]
    layers.append(
        LayerInvariants(
            cross_key=project(cross["key"], source),  # [b, s, h, kv]
            cross_value=project(cross["value"], source),  # [b, s, h, kv]
            positional_logits=logits,
        )
    )
  return tuple(layers)
