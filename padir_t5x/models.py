"""T5X adapter: `PadirModel`, a t5x `EncoderDecoderModel` that trains and decodes PaDIR.

This is the only module of the project that imports t5x. It wires the core (padir_t5x.network,
.corruption, .losses, .decoding) into t5x's model interface, so that t5x's train.py, eval.py and
infer.py (and gin configs under gin/) run PaDIR like any other encoder-decoder:

* `loss_fn` / `eval_fn`: `losses.multi_stage_loss` (stage 1 on a corrupted target, later stages
  on the previous stage's argmax, plus the length cross-entropy), metrics as clu/t5x metrics.
* `predict_batch_with_aux`: `decoding.decode_with_network` (length beam, iterative refinement).
* `score_batch`: length log-prob + token log-probs under a fixed, target-independent decoder
  input (see `score_batch`).

The autoregressive twin/teacher needs no adapter: use `t5x.models.EncoderDecoderModel` with
`padir_t5x.network.Transformer(config=TransformerConfig(decoder_mode='autoregressive'))`
(gin/models/ar_base.gin).

Packing is not supported (one example per row: the length classifier and the parallel decoder
need it): batches with `*_segment_ids` or `*_positions` raise ValueError; set pack=False.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Callable, Mapping, MutableMapping

import clu.metrics as clu_metrics
from flax import core as flax_core
import jax
import jax.numpy as jnp
import seqio
from t5x import adafactor
from t5x import losses as t5x_losses
from t5x import metrics as metrics_lib
from t5x import models as t5x_models
from t5x import optimizers

from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x import MASK_ID
from padir_t5x import PAD_ID
from padir_t5x import decoding
from padir_t5x import losses

Array = jnp.ndarray
PyTree = Any

# Features a PaDIR batch may carry (seqio.EncDecFeatureConverter with pack=False).
_REQUIRED_TRAIN_FEATURES = ("encoder_input_tokens", "decoder_target_tokens")
_PACKING_FEATURES = (
    "encoder_segment_ids",
    "decoder_segment_ids",
    "encoder_positions",
    "decoder_positions",
)
SCORE_DECODER_INPUTS = ("mask", "random")
# decoder_params keys t5x callers may pass that are not DecodingConfig fields.
_T5X_DECODER_PARAM_KEYS = ("decode_rng", "eos_id")


# Logical axis names of padir_t5x.network that t5x's standard rules do not know, and how to treat
# them. Partitioning: the length classifier's output axis is small, replicate it.
ADDITIONAL_LOGICAL_AXIS_RULES = (("length_classes", None),)


def padir_logical_factor_rules():
  """Adafactor factoring rules: t5x's standard ones plus PaDIR's extra parameter axes.

  'abspos_buckets' (learned position tables [positions, embed]) factor like the vocabulary
  ([vocab, embed]); 'length_classes' (length classifier [mlp, classes] and its bias) is a column
  axis, which leaves those small parameters unfactored (no row axis).
  """
  rules = dict(adafactor.standard_logical_factor_rules())
  rules.setdefault("abspos_buckets", adafactor.FactorDim.COLUMN)
  rules.setdefault("length_classes", adafactor.FactorDim.COLUMN)
  return flax_core.freeze(rules)


def check_batch(
    batch: Mapping[str, Any], required=_REQUIRED_TRAIN_FEATURES, shapes: bool = False
) -> None:
  """Raises ValueError for packed batches, missing features or features not [batch, length].

  With shapes=True the values are shapes (t5x's input_shapes), not arrays.
  """
  packed = [k for k in _PACKING_FEATURES if k in batch]
  if packed:
    raise ValueError(
        f"PaDIR does not support packed examples, but the batch has {packed}: the length "
        "classifier and the parallel decoder need one example per row. Set pack=False in the "
        "DatasetConfig / feature converter."
    )
  missing = [k for k in required if k not in batch]
  if missing:
    raise ValueError(
        f"PaDIR batch lacks feature(s) {missing}; got {sorted(batch)}. Use "
        "seqio.EncDecFeatureConverter(pack=False) on a task with 'inputs' and "
        "'targets'."
    )
  for key in required:
    shape = tuple(batch[key]) if shapes else jnp.shape(batch[key])
    if len(shape) != 2:
      raise ValueError(f"{key!r} must be [batch, length], got shape {shape}")


class PadirModel(t5x_models.EncoderDecoderModel):
  """PaDIR for t5x: multi-stage refinement training, length-beam iterative-refinement decoding.

  Gin-able arguments (besides t5x's module / vocabularies / optimizer_def):

  Loss (`losses.PadirLossConfig`): num_stages, unmasking_rate, corruption ('random' or 'mask'),
  length_loss_weight, label_smoothing, z_loss, loss_normalizing_factor (as in t5x: None, a
  number, or 'NUM_REAL_TARGET_TOKENS' / 'NUM_TOTAL_TARGET_TOKENS'). Random corruption tokens
  are drawn from [FIRST_ORDINARY_ID, vocab_high) where vocab_high is the real output vocabulary
  size (`output_vocabulary.vocab_size`, read lazily on first use so that a model can be built
  before its vocabulary file exists), unless `vocab_high` is given.

  Decoding: `decoding_config`, a `decoding.DecodingConfig` or a dict of its fields (the gin
  form: {'length_beam': 5, 'max_passes': 4}; DecodingConfig's defaults fill the rest), holds the
  default decoder settings; vocab_high is filled in from the vocabulary when not given. Each
  field can be overridden per call through `predict_batch_with_aux(decoder_params={...})`.

  eval_corruption_seed: eval_fn (dropout off) corrupts targets with
    jax.random.PRNGKey(eval_corruption_seed), the same key for every eval batch, so that eval
    losses are comparable between checkpoints.
  score_decoder_input / score_seed: see `score_batch`.
  """

  FEATURE_CONVERTER_CLS = seqio.EncDecFeatureConverter

  def __init__(
      self,
      module,
      input_vocabulary: seqio.Vocabulary,
      output_vocabulary: seqio.Vocabulary,
      optimizer_def: optimizers.OptimizerDefType,
      num_stages: int = 2,
      unmasking_rate: float = 0.25,
      corruption: str = "random",
      length_loss_weight: float = 1.0,
      label_smoothing: float = 0.0,
      z_loss: float = 1e-4,
      loss_normalizing_factor: float | int | str | None = None,
      decoding_config: decoding.DecodingConfig | Mapping[str, Any] | None = None,
      vocab_high: int | None = None,
      eval_corruption_seed: int = 0,
      score_decoder_input: str | None = None,
      score_seed: int = 0,
      feature_converter_cls: Callable[..., seqio.FeatureConverter] | None = None,
      default_decoder_params: t5x_models.DecoderParams | None = None,
  ):
    config = getattr(module, "config", None)
    if config is not None and getattr(config, "decoder_mode", "padir") != "padir":
      raise ValueError(
          f"PadirModel needs a network with decoder_mode='padir', got "
          f"{config.decoder_mode!r}; for the autoregressive twin use "
          "t5x.models.EncoderDecoderModel"
      )
    if isinstance(loss_normalizing_factor, t5x_losses.SpecialLossNormalizingFactor):
      loss_normalizing_factor = loss_normalizing_factor.name
    if score_decoder_input is not None and score_decoder_input not in SCORE_DECODER_INPUTS:
      raise ValueError(
          f"score_decoder_input must be None or one of {SCORE_DECODER_INPUTS}, "
          f"got {score_decoder_input!r}"
      )
    self._loss_kwargs = dict(
        num_stages=num_stages,
        unmasking_rate=unmasking_rate,
        corruption=corruption,
        length_loss_weight=length_loss_weight,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        loss_normalizing_factor=loss_normalizing_factor,
    )
    # Validate now (a placeholder vocab_high stands in for the lazily read vocabulary size).
    losses.PadirLossConfig(vocab_high=vocab_high or FIRST_ORDINARY_ID + 1, **self._loss_kwargs)
    if isinstance(decoding_config, decoding.DecodingConfig):
      decoding_config = {
          f.name: getattr(decoding_config, f.name) for f in dataclasses.fields(decoding_config)
      }
    self._decoding_fields = dict(decoding_config or {})
    # Validate now, as for the loss (vocab_high may only be known once the vocabulary loads).
    self._build_decoding_config(self._decoding_fields, vocab_high or FIRST_ORDINARY_ID + 1)
    self._vocab_high = vocab_high
    self._eval_corruption_seed = eval_corruption_seed
    self._score_decoder_input = score_decoder_input
    self._score_seed = score_seed
    super().__init__(
        module=module,
        input_vocabulary=input_vocabulary,
        output_vocabulary=output_vocabulary,
        optimizer_def=optimizer_def,
        decode_fn=None,
        feature_converter_cls=feature_converter_cls,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        loss_normalizing_factor=loss_normalizing_factor,
        default_decoder_params=default_decoder_params,
    )

  # ----------------------------------------------------------------------------------------------
  # Configuration.

  @property
  def vocab_high(self) -> int:
    """Exclusive bound of ordinary ids: the real output vocabulary size (not the padded table)."""
    if self._vocab_high is None:
      vocab_high = int(self.output_vocabulary.vocab_size)
      table = getattr(getattr(self.module, "config", None), "vocab_size", None)
      if table is not None and vocab_high > table:
        raise ValueError(
            f"output vocabulary has {vocab_high} ids but the network's embedding "
            f"table only {table} rows: raise TransformerConfig.vocab_size"
        )
      self._vocab_high = vocab_high
    return self._vocab_high

  @property
  def loss_config(self) -> losses.PadirLossConfig:
    return losses.PadirLossConfig(vocab_high=self.vocab_high, **self._loss_kwargs)

  @staticmethod
  def _build_decoding_config(
      fields: Mapping[str, Any], vocab_high: int | None
  ) -> decoding.DecodingConfig:
    names = {f.name for f in dataclasses.fields(decoding.DecodingConfig)}
    unknown = sorted(set(fields) - names)
    if unknown:
      raise ValueError(
          f"unknown DecodingConfig field(s) {unknown}; expected some of " f"{sorted(names)}"
      )
    fields = dict(fields)
    if fields.get("vocab_high") is None:
      fields["vocab_high"] = vocab_high
    return decoding.DecodingConfig(**fields)

  @property
  def decoding_config(self) -> decoding.DecodingConfig:
    """The default DecodingConfig, vocab_high filled in from the vocabulary when not given."""
    return self._build_decoding_config(self._decoding_fields, self.vocab_high)

  def resolve_decoding_config(
      self, decoder_params: Mapping[str, Any] | None = None, num_decodes: int | None = None
  ) -> decoding.DecodingConfig:
    """Default DecodingConfig with per-call overrides.

    Args:
      decoder_params: DecodingConfig field -> value (static Python values: the config is a
        jit-static argument); t5x's 'decode_rng' and 'eos_id' keys are accepted and ignored
        here (see predict_batch_with_aux).
      num_decodes: number of returned hypotheses = length_beam.

    Raises:
      ValueError: unknown field, or num_decodes contradicting decoder_params['length_beam'].
    """
    overrides = {
        k: v for k, v in dict(decoder_params or {}).items() if k not in _T5X_DECODER_PARAM_KEYS
    }
    fields = {f.name for f in dataclasses.fields(decoding.DecodingConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
      raise ValueError(
          f"unknown decoder_params {unknown}; PaDIR accepts DecodingConfig fields "
          f"{sorted(fields)} and {list(_T5X_DECODER_PARAM_KEYS)}"
      )
    if num_decodes is not None:
      if "length_beam" in overrides and overrides["length_beam"] != num_decodes:
        raise ValueError(
            f"num_decodes={num_decodes} contradicts decoder_params['length_beam']="
            f"{overrides['length_beam']}: num_decodes is the length beam"
        )
      overrides["length_beam"] = int(num_decodes)
    return self._build_decoding_config({**self._decoding_fields, **overrides}, self.vocab_high)

  # ----------------------------------------------------------------------------------------------
  # Initialisation.

  def get_initial_variables(
      self,
      rng: jax.Array,
      input_shapes: Mapping[str, Any],
      input_types: Mapping[str, jnp.dtype] | None = None,
  ) -> flax_core.scope.FrozenVariableDict:
    """Initialises the network (length classifier included) on int32 dummy inputs.

    t5x's default input_shapes ({'encoder_input_tokens': ..., 'decoder_input_tokens': ...})
    suffice; token types default to int32 (t5x's default, float32, is not a token type).
    """
    check_batch(
        input_shapes, required=("encoder_input_tokens", "decoder_input_tokens"), shapes=True
    )
    input_types = dict(input_types or {})
    encoder_type = input_types.get("encoder_input_tokens", jnp.int32)
    decoder_type = input_types.get("decoder_input_tokens", jnp.int32)
    if not jnp.issubdtype(encoder_type, jnp.integer):
      encoder_type = jnp.int32
    if not jnp.issubdtype(decoder_type, jnp.integer):
      decoder_type = jnp.int32
    encoder_shape = tuple(input_shapes["encoder_input_tokens"])
    decoder_shape = tuple(input_shapes["decoder_input_tokens"])
    return flax_core.freeze(
        self.module.init(
            rng,
            jnp.ones(encoder_shape, encoder_type),
            jnp.ones(decoder_shape, decoder_type),
            jnp.ones(decoder_shape, decoder_type),
            enable_dropout=False,
        )
    )

  # ----------------------------------------------------------------------------------------------
  # Training and evaluation.

  def _compute_logits(self, params, batch, dropout_rng=None, mutable=False, other_variables=None):
    """Logits of one decoder pass on the batch's own decoder_input_tokens (t5x hook).

    Not used by PaDIR's loss (which runs the multi-stage forward); kept for t5x utilities that
    call it, e.g. for debugging.
    """
    check_batch(
        batch, required=("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
    )
    return super()._compute_logits(params, batch, dropout_rng, mutable, other_variables)

  def loss_fn(
      self, params: PyTree, batch: Mapping[str, Array], dropout_rng: jax.Array | None
  ) -> tuple[Array, Mapping[str, Any]]:
    """PaDIR multi-stage loss; corruption and dropout drawn from `dropout_rng`.

    With dropout_rng=None (eval), dropout is off and the corruption uses the fixed key
    PRNGKey(eval_corruption_seed).
    """
    check_batch(batch)
    if dropout_rng is None:
      rng, enable_dropout = jax.random.PRNGKey(self._eval_corruption_seed), False
    else:
      rng, enable_dropout = dropout_rng, True
    loss, core_metrics = losses.multi_stage_loss(
        self.module, params, batch, rng, self.loss_config, enable_dropout=enable_dropout
    )
    return loss, self._compute_padir_metrics(core_metrics, batch)

  def eval_fn(self, params: PyTree, batch: Mapping[str, Array]) -> tuple[Array, Mapping[str, Any]]:
    """loss_fn without dropout, corruption from PRNGKey(eval_corruption_seed)."""
    return self.loss_fn(params, batch, dropout_rng=None)

  def _compute_padir_metrics(
      self, m: Mapping[str, Array], batch: Mapping[str, Array]
  ) -> Mapping[str, Any]:
    """clu/t5x metrics from `losses.multi_stage_loss`'s scalars, as compute_base_metrics.

    Per-step averages (AveragePerStep) for the loss terms; ratios accumulated as
    sum(correct) / sum(count) across batches (clu Average) for accuracies.
    """
    targets = batch["decoder_target_tokens"]
    num_rows = jnp.array(targets.shape[0])
    num_positions = jnp.array(targets.size)
    num_devices = jax.device_count()
    loss, z_loss, num_tokens = m["loss"], m["z_loss"], m["num_tokens"]
    num_stages = self._loss_kwargs["num_stages"]
    metrics = {
        "loss": metrics_lib.AveragePerStep(total=loss),
        "z_loss": metrics_lib.AveragePerStep(total=z_loss),
        "cross_ent_loss": metrics_lib.AveragePerStep(total=loss - z_loss),
        "length_loss": metrics_lib.AveragePerStep(total=m["length_loss"]),
        "loss_per_nonpadding_target_token": clu_metrics.Average(total=loss, count=num_tokens),
        "loss_per_all_target_tokens": clu_metrics.Average(total=loss, count=num_positions),
        # Token accuracy of the last stage (what decoding converges to), and of every stage.
        "accuracy": clu_metrics.Average(total=m[f"stage{num_stages}_correct"], count=num_tokens),
        "length_accuracy": clu_metrics.Average(total=m["length_correct"], count=m["num_examples"]),
        "non_padding_fraction/loss_weights": clu_metrics.Average(
            total=num_tokens, count=num_positions
        ),
        "timing/seqs_per_second": metrics_lib.TimeRate.from_model_output(numerator=num_rows),
        "timing/steps_per_second": metrics_lib.StepsPerTime.from_model_output(),
        "timing/seconds": metrics_lib.Time(),
        "timing/seqs": metrics_lib.Sum(num_rows),
        "timing/seqs_per_second_per_core": metrics_lib.TimeRate.from_model_output(
            numerator=num_rows / num_devices
        ),
        "timing/target_tokens_per_second": metrics_lib.TimeRate.from_model_output(
            numerator=num_positions
        ),
        "timing/target_tokens_per_second_per_core": metrics_lib.TimeRate.from_model_output(
            numerator=num_positions / num_devices
        ),
    }
    for s in range(1, num_stages + 1):
      metrics[f"stage{s}/loss"] = metrics_lib.AveragePerStep(total=m[f"stage{s}_loss"])
      metrics[f"stage{s}/accuracy"] = clu_metrics.Average(
          total=m[f"stage{s}_correct"], count=num_tokens
      )
    return metrics

  # ----------------------------------------------------------------------------------------------
  # Inference.

  def predict_batch_with_aux(
      self,
      params: PyTree,
      batch: Mapping[str, Array],
      rng: jax.Array | None = None,
      decoder_params: MutableMapping[str, Any] | None = None,
      return_all_decodes: bool | None = None,
      num_decodes: int | None = None,
      prompt_with_targets: bool = False,
  ) -> tuple[Array, Mapping[str, Array]]:
    """Decodes a batch with length beam + iterative refinement (`decoding.decode_with_network`).

    Args:
      params: model parameters.
      batch: 'encoder_input_tokens' [b, s] and 'decoder_input_tokens' (or
        'decoder_target_tokens') [b, t], whose length t is the output length (as t5x). Lengths
        are decoded up to min(t, the network's max_target_length); the output is PAD-padded to t.
      rng: PRNG key for the random initial tokens (init='random'); None uses
        decoder_params['decode_rng'] if given, else PRNGKey(0) (deterministic).
      decoder_params: per-call overrides of any DecodingConfig field, e.g.
        {'max_passes': 10, 'length_beam': 3}; static Python values.
      return_all_decodes: return every length candidate ([b, l, t], best last) instead of the
        best ([b, t]). None: the default_decoder_params' value (False by default).
      num_decodes: number of returned hypotheses, which for PaDIR is the length beam l
        (overrides DecodingConfig.length_beam; None keeps it).
      prompt_with_targets: unsupported (PaDIR has no decoder prompt): must be False.

    Returns:
      (tokens, aux): tokens [b, t] (or [b, l, t]) int32, content then EOS then PAD, after the
      configured de-duplication. aux: 'scores' [b] (or [b, l], increasing), 'lengths' [b] (or
      [b, l]) hypothesis lengths with EOS before de-duplication, 'passes' [b] refinement passes.
    """
    if prompt_with_targets:
      raise ValueError("prompt_with_targets is not supported by PaDIR (no decoder prompt)")
    length_key = (
        "decoder_input_tokens" if "decoder_input_tokens" in batch else "decoder_target_tokens"
    )
    check_batch(batch, required=("encoder_input_tokens", length_key))
    if return_all_decodes is None:
      return_all_decodes = self._default_decoder_params.return_all_decodes
    config = self.resolve_decoding_config(decoder_params, num_decodes)
    decode_rng = (decoder_params or {}).get("decode_rng")
    if rng is not None and decode_rng is not None:
      raise ValueError("got an RNG both from `rng` and decoder_params['decode_rng']; give one")
    rng = rng if rng is not None else decode_rng
    if rng is None:
      rng = jax.random.PRNGKey(0)

    output_length = batch[length_key].shape[1]
    max_decode_length = output_length
    table = getattr(getattr(self.module, "config", None), "max_target_length", None)
    if table is not None:
      max_decode_length = min(output_length, table)
    result = decoding.decode_with_network(
        self.module, params, batch["encoder_input_tokens"], rng, config, max_decode_length
    )
    sequences = result.sequences
    if max_decode_length < output_length:
      sequences = jnp.pad(
          sequences,
          ((0, 0), (0, 0), (0, output_length - max_decode_length)),
          constant_values=PAD_ID,
      )
    if return_all_decodes:
      return sequences, {
          "scores": result.scores,
          "lengths": result.lengths,
          "passes": result.passes,
      }
    return sequences[:, -1, :], {
        "scores": result.scores[:, -1],
        "lengths": result.lengths[:, -1],
        "passes": result.passes,
    }

  def score_decoder_inputs(self, decoder_target_tokens: Array) -> Array:
    """The fixed decoder input `score_batch` conditions on: [b, t] int32.

    Content positions (before the target's EOS) hold [MASK] ('mask') or pseudo-random ordinary
    tokens ('random'); EOS sits at length - 1 and PAD after it, as in decoding's first pass.
    'random' tokens are a fixed row drawn once from PRNGKey(score_seed) over the network's
    max_target_length and sliced to t, so an example's input depends only on its length (not on
    its row, its batch or the batch's padding). The mode defaults to the decoding init
    (DecodingConfig.init).
    """
    mode = self._score_decoder_input or self._decoding_fields.get(
        "init", decoding.DecodingConfig.init
    )
    targets = jnp.asarray(decoder_target_tokens)
    batch_size, t = targets.shape
    lengths = losses.sequence_lengths(targets)
    content, eos, _ = decoding.length_layout(lengths, t)
    if mode == "mask":
      fill = jnp.full((batch_size, t), MASK_ID, jnp.int32)
    else:
      table = getattr(getattr(self.module, "config", None), "max_target_length", None) or t
      row = jax.random.randint(
          jax.random.PRNGKey(self._score_seed),
          (max(table, t),),
          FIRST_ORDINARY_ID,
          self.vocab_high,
          dtype=jnp.int32,
      )
      fill = jnp.broadcast_to(row[:t], (batch_size, t))
    return decoding.frame_tokens(fill, content, eos)

  def score_batch(
      self, params: PyTree, batch: Mapping[str, Array], return_intermediates: bool = False
  ) -> Array | tuple[Array, Mapping[str, Any]]:
    """Log-likelihood of the given targets: length log-prob + content-token log-probs.

    score = log p(length | x) + sum_{i < length-1} w_i log p(y_i | x, length, z), where
    length counts EOS (the classifier's class length - 1, softmax over all its classes), w are
    'decoder_loss_weights' (default: targets > 0), and z is a fixed decoder input that does not
    depend on the target's content (`score_decoder_inputs`): [MASK] or a fixed pseudo-random
    row at the content positions, EOS at length - 1. This is the distribution of PaDIR's first
    decoding pass, so the token terms are proper conditionals of y_i given (x, length) - unlike
    feeding the target itself, which would let each position read its own answer (the paper's
    model refines from random or masked input; later passes condition on its own guesses, which
    are not defined for a given target). EOS is not scored as a token: given the length its
    place is fixed, and the length term accounts for it. Token log-probs are over the full
    output layer (as the training loss), no z-loss, no de-duplication.

    Args:
      params: model parameters.
      batch: 'encoder_input_tokens', 'decoder_target_tokens', optional 'decoder_loss_weights'.
      return_intermediates: also return {'decoder': {...}} with per-token scores etc.

    Returns:
      [b] float32 scores (and intermediates).
    """
    check_batch(batch)
    inputs = jnp.asarray(batch["encoder_input_tokens"])
    targets = jnp.asarray(batch["decoder_target_tokens"])
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else jnp.asarray(weights)
    variables = {"params": params}
    module_cls = type(self.module)
    encoded = self.module.apply(variables, inputs, enable_dropout=False, method=module_cls.encode)
    length_logits = self.module.apply(variables, encoded, inputs, method=module_cls.predict_length)
    lengths = losses.sequence_lengths(targets)
    length_log_probs = jax.nn.log_softmax(length_logits.astype(jnp.float32), axis=-1)
    length_class = jnp.clip(lengths - 1, 0, length_logits.shape[-1] - 1)
    length_scores = jnp.take_along_axis(length_log_probs, length_class[:, None], axis=-1)[:, 0]
    length_scores = jnp.where(lengths > 0, length_scores, 0.0)

    decoder_inputs = self.score_decoder_inputs(targets)
    logits = self.module.apply(
        variables,
        encoded,
        inputs,
        decoder_inputs,
        targets,
        enable_dropout=False,
        method=module_cls.decode,
    )
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    token_log_probs = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[
        ..., 0
    ]
    content, _, _ = decoding.length_layout(lengths, targets.shape[1])
    token_scores = jnp.where(content, token_log_probs * weights.astype(jnp.float32), 0.0)
    sequence_scores = length_scores + jnp.sum(token_scores, axis=-1)
    if return_intermediates:
      intermediates = {
          "decoder": {
              "target_tokens": (targets,),
              "loss_weights": (weights,),
              "decoder_input_tokens": (decoder_inputs,),
              "token_scores": (token_scores,),
              "length_scores": (length_scores,),
          }
      }
      return sequence_scores, intermediates
    return sequence_scores


__all__ = [
    "PadirModel",
    "check_batch",
    "padir_logical_factor_rules",
    "ADDITIONAL_LOGICAL_AXIS_RULES",
    "SCORE_DECODER_INPUTS",
]
