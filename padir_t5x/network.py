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

Every parameter is created with `flax.linen.partitioning.param_with_axes` (so t5x's
'params_axes' collection exists for its partitioner) and activations are constrained with
`with_sharding_constraint`; all logical axis names used are in `LOGICAL_AXIS_NAMES`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from flax import linen as nn
import jax.numpy as jnp

from padir_t5x import layout
from padir_t5x import masks
from padir_t5x.layers import DenseGeneral
from padir_t5x.layers import LayerNorm
from padir_t5x.layers import MultiHeadAttention
from padir_t5x.layers import PositionEmbedder
from padir_t5x.layers import TokenEmbed
from padir_t5x.layers import attention_logits
from padir_t5x.layers import param_with_axes
from padir_t5x.layers import project_heads
from padir_t5x.modes import DecoderMode
from padir_t5x.modes import LengthPooling
from padir_t5x.modes import LengthTarget

Array = jnp.ndarray

# Decoder sublayer names (parameter paths), read again by `decoder_invariants`.
SELF_ATTENTION = "self_attention"
POSITIONAL_ATTENTION = "positional_attention"
CROSS_ATTENTION = "encoder_decoder_attention"

# Module-level alias (not `nn_partitioning.with_sharding_constraint` at each call) so that a test
# can substitute a recorder and check every activation axis name (padir_t5x.layers has its own).
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
      the module docstring). PaDIR mode only.
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
      # The [LENGTH] slot: one learned vector (its own position, see the module docstring).
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
        features=(cfg.num_length_classes,),
        kernel_axes=("mlp", "length_classes"),
        use_bias=True,
        bias_axis="length_classes",
        dtype=jnp.float32,
        name="logits",
    )(hidden)
    return with_sharding_constraint(logits, ("batch", "length_classes"))


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
    slot = with_sharding_constraint(slot.astype(jnp.float32), ("batch", "embed"))
    logits = jnp.dot(slot, table.T) / jnp.sqrt(jnp.float32(cfg.emb_dim)) + bias
    return with_sharding_constraint(logits, ("batch", "length_classes"))


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
