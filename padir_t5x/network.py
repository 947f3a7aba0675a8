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

from flax import linen as nn
import jax.numpy as jnp

from padir_t5x import masks
from padir_t5x.layers import DenseGeneral
from padir_t5x.layers import LayerNorm
from padir_t5x.layers import MultiHeadAttention
from padir_t5x.layers import PositionEmbedder
from padir_t5x.layers import TokenEmbed
from padir_t5x.modes import DecoderMode

Array = jnp.ndarray

# Module-level alias (not `nn_partitioning.with_sharding_constraint` at each call) so that a test
# can substitute a recorder and check every activation axis name (padir_t5x.layers has its own).
with_sharding_constraint = nn.partitioning.with_sharding_constraint

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
  decoder_mode: DecoderMode = DecoderMode.PADIR
  positional_attention: bool = True
  length_hidden_dim: int | None = None
  layer_norm_epsilon: float = 1e-6

  def __post_init__(self):
    # Frozen: store the member, so a config built from the name equals one built from it.
    object.__setattr__(self, "decoder_mode", DecoderMode.coerce(self.decoder_mode, "decoder_mode"))
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
    mask = masks.encoder_mask(encoder_input_tokens, encoder_segment_ids)
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
        encoded,
        decoder_input_tokens,
        self_mask,
        cross_mask,
        decoder_positions,
        deterministic=not enable_dropout,
        decode=decode,
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
    (encoded [batch, input_length, embed], length_logits float32 [batch, max_target_length]).
  """
  variables = {"params": params}
  rngs = None if dropout_rng is None else {"dropout": dropout_rng}
  encoded = module.apply(
      variables, encoder_input_tokens, enable_dropout=enable_dropout, method="encode", rngs=rngs
  )
  length_logits = module.apply(variables, encoded, encoder_input_tokens, method="predict_length")
  return encoded, length_logits
