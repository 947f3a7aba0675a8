"""T5X adapter: `PadirModel`, a t5x `EncoderDecoderModel` that trains and decodes PaDIR.

This module and padir_t5x/t5x_adapter/restore.py are the only ones that import t5x (gin files and
users reach it as `padir_t5x.models`). It wires the core (padir_t5x.core.network, .corruption,
.losses; padir_t5x.decoders.decoding) into t5x's model interface, so that t5x's train.py, eval.py
and infer.py (and gin configs under gin/) run PaDIR like any other encoder-decoder:

* `loss_fn` / `eval_fn`: the core multi-stage loss (stage 1 on a corrupted target, later stages
  on the previous stage's argmax, plus the length cross-entropy) under one `PadirLossConfig`;
  metrics are t5x's own `_compute_metrics` plus the per-stage and length scalars.
* `predict_batch_with_aux`: the injectable `decode_fn` (default `decoding.decode_with_network`:
  length beam, iterative refinement) under a `DecodingConfig`.
* `score_batch`: length log-prob + token log-probs under a fixed, target-independent decoder
  input (see `score_batch`).

The autoregressive twin/teacher needs no adapter: use `t5x.models.EncoderDecoderModel` with
`padir_t5x.core.network.Transformer(config=TransformerConfig(decoder_mode='autoregressive'))`
(gin/models/ar_base.gin).

Packing is not supported (one example per row: the length classifier and the parallel decoder
need it): batches with `*_segment_ids` or `*_positions` raise ValueError; set pack=False.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar
from collections.abc import Callable, Mapping, MutableMapping

import clu.metrics as clu_metrics
from flax import core as flax_core
import jax
import jax.numpy as jnp
import seqio
from t5x import losses as t5x_losses
from t5x import metrics as metrics_lib
from t5x import models as t5x_models
from t5x import optimizers

from padir_t5x import PAD_ID
from padir_t5x.decoders import decoding
from padir_t5x.core import layout
from padir_t5x.core import losses
from padir_t5x.core import scoring
from padir_t5x import vocab as vocab_lib
from padir_t5x.core.modes import DecoderMode
from padir_t5x.core.modes import FillMode
from padir_t5x.core.modes import UnmaskingRateMode
from padir_t5x.t5x_adapter.restore import load_for_inference
from padir_t5x.t5x_adapter.restore import model_from_gin

Array = jnp.ndarray
PyTree = Any

_Config = TypeVar("_Config", losses.PadirLossConfig, decoding.DecodingConfig)


# Logical axis names of padir_t5x.core.network that t5x's standard rules do not know, and how to
# treat them. Partitioning: the length classifier's output axis is small, replicate it.
ADDITIONAL_LOGICAL_AXIS_RULES = (("length_classes", None),)


def config_from_fields(cls: type[_Config], value: _Config | Mapping[str, Any] | None) -> _Config:
  """A loss or decoding config from itself, a dict of its fields (the gin form) or None.

  Raises:
    ValueError: a field `cls` does not have (named, with the fields it has), or a bad value.
  """
  if isinstance(value, cls):
    return value
  fields = dict(value or {})
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(fields) - names)
  if unknown:
    raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; expected some of {sorted(names)}")
  factor = fields.get("loss_normalizing_factor")
  if isinstance(factor, t5x_losses.SpecialLossNormalizingFactor):
    fields["loss_normalizing_factor"] = factor.name
  return cls(**fields)


def split_decoder_params(
    decoder_params: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], jax.Array | None]:
  """t5x's per-call decoder_params -> (DecodingConfig overrides, decode_rng or None).

  t5x callers may add 'decode_rng' (an RNG for this call) and 'eos_id' (PaDIR's EOS is fixed:
  padir_t5x.EOS_ID); every other key must be a DecodingConfig field.
  """
  overrides = dict(decoder_params or {})
  decode_rng = overrides.pop("decode_rng", None)
  overrides.pop("eos_id", None)
  names = {f.name for f in dataclasses.fields(decoding.DecodingConfig)}
  unknown = sorted(set(overrides) - names)
  if unknown:
    raise ValueError(
        f"unknown decoder_params {unknown}; PaDIR accepts DecodingConfig fields "
        f"{sorted(names)} and 'decode_rng', 'eos_id'"
    )
  return overrides, decode_rng


class PadirModel(t5x_models.EncoderDecoderModel):
  """PaDIR for t5x: multi-stage refinement training, length-beam iterative-refinement decoding.

  Gin-able arguments (besides t5x's module / vocabularies / optimizer_def):

  loss_config: a `losses.PadirLossConfig` or a dict of its fields (the gin form:
    {'num_stages': 2, 'unmasking_rate': 0.25}; its defaults fill the rest).
    loss_normalizing_factor may also be t5x's SpecialLossNormalizingFactor.
  decoding_config: a `decoding.DecodingConfig` or a dict of its fields, the default decoder
    settings; each field can be overridden per call through
    `predict_batch_with_aux(decoder_params={...})`.
  Both configs' vocab_high (random tokens are drawn from [FIRST_ORDINARY_ID, vocab_high)) is,
    unless given, the real output vocabulary size `output_vocabulary.vocab_size`, read lazily on
    first use so that a model can be built before its vocabulary file exists. So is the decoding
    config's word_starts (for stutter_unit='word', the default): the word-start table of a
    SentencePiece output vocabulary (`vocab.word_start_table`); other vocabularies (e.g.
    seqio.PassThroughVocabulary) have none, so decode with stutter_unit='piece' there.
  decode_fn: a `decoding.PadirDecodeFn`, the whole decode from source tokens; default
    `decoding.decode_with_network`.
  eval_corruption_seed: eval_fn (dropout off) corrupts targets with
    jax.random.PRNGKey(eval_corruption_seed), the same key for every eval batch, so that eval
    losses are comparable between checkpoints.
  score_decoder_input / score_seed: see `score_batch`.
  default_decoder_params: t5x's DecoderParams. PaDIR's number of decodes is its number of
    candidates (DecodingConfig.num_candidates: the length beam, times 2 * length_offsets + 1,
    times inits_per_length), whose one source is decoding_config: num_decodes must be 1 (t5x's
    default) or equal to it.
  """

  FEATURE_CONVERTER_CLS = seqio.EncDecFeatureConverter

  def __init__(
      self,
      module,
      input_vocabulary: seqio.Vocabulary,
      output_vocabulary: seqio.Vocabulary,
      optimizer_def: optimizers.OptimizerDefType,
      loss_config: losses.PadirLossConfig | Mapping[str, Any] | None = None,
      decoding_config: decoding.DecodingConfig | Mapping[str, Any] | None = None,
      decode_fn: decoding.PadirDecodeFn = decoding.decode_with_network,
      eval_corruption_seed: int = 0,
      score_decoder_input: str | None = None,
      score_seed: int = 0,
      feature_converter_cls: Callable[..., seqio.FeatureConverter] | None = None,
      default_decoder_params: t5x_models.DecoderParams | None = None,
  ):
    config = getattr(module, "config", None)
    mode = getattr(config, "decoder_mode", DecoderMode.PADIR)
    if DecoderMode(mode) is not DecoderMode.PADIR:
      raise ValueError(
          f"PadirModel needs a network with decoder_mode='padir', got {str(mode)!r}; for the "
          "autoregressive twin use t5x.models.EncoderDecoderModel"
      )
    # Validated here, once; vocab_high may stay None until the vocabulary is read.
    self._loss_config = config_from_fields(losses.PadirLossConfig, loss_config)
    self._decoding_config = config_from_fields(decoding.DecodingConfig, decoding_config)
    if (
        self._loss_config.unmasking_rate_mode is UnmaskingRateMode.GLANCING
        and self._loss_config.glancing_anneals
    ):
      raise ValueError(
          "glancing_ratio_end / glancing_anneal_steps anneal the glancing ratio by training "
          "step, which T5X's loss_fn does not get: under T5X the ratio is fixed "
          "(glancing_ratio); set glancing_ratio_end=None and glancing_anneal_steps=0"
      )
    self._score_decoder_input = (
        None
        if score_decoder_input is None
        else FillMode.coerce(score_decoder_input, "score_decoder_input")
    )
    if default_decoder_params is not None and default_decoder_params.num_decodes not in (
        1,
        self._decoding_config.num_candidates,
    ):
      raise ValueError(
          f"default_decoder_params.num_decodes={default_decoder_params.num_decodes} contradicts "
          f"decoding_config's length_beam={self._decoding_config.length_beam} "
          f"({self._decoding_config.num_candidates} candidates): PaDIR's decodes are its "
          "candidates; set length_beam (gin LENGTH_BEAM) instead"
      )
    self._vocab_high = None
    self._word_starts = None
    self._eval_corruption_seed = eval_corruption_seed
    self._score_seed = score_seed
    super().__init__(
        module=module,
        input_vocabulary=input_vocabulary,
        output_vocabulary=output_vocabulary,
        optimizer_def=optimizer_def,
        decode_fn=decode_fn,
        feature_converter_cls=feature_converter_cls,
        label_smoothing=self._loss_config.label_smoothing,
        z_loss=self._loss_config.z_loss,
        loss_normalizing_factor=self._loss_config.loss_normalizing_factor,
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

  def _with_vocab_high(self, config: _Config) -> _Config:
    if config.vocab_high is not None:
      return config
    return dataclasses.replace(config, vocab_high=self.vocab_high)

  @property
  def loss_config(self) -> losses.PadirLossConfig:
    """The loss config, vocab_high filled in from the vocabulary when not given."""
    return self._with_vocab_high(self._loss_config)

  @property
  def word_starts(self) -> layout.WordStarts | None:
    """The output vocabulary's word-start table; None unless it is a SentencePiece model."""
    if self._word_starts is None:
      if not isinstance(self.output_vocabulary, seqio.SentencePieceVocabulary):
        return None
      table = vocab_lib.word_start_table(self.output_vocabulary.tokenizer, size=self.vocab_high)
      self._word_starts = layout.WordStarts(table)
    return self._word_starts

  @property
  def decoding_config(self) -> decoding.DecodingConfig:
    """The default DecodingConfig, vocab_high and word_starts filled in from the vocabulary
    when not given."""
    config = self._with_vocab_high(self._decoding_config)
    if config.word_starts is None and self.word_starts is not None:
      config = dataclasses.replace(config, word_starts=self.word_starts)
    return config

  def resolve_decoding_config(
      self, decoder_params: Mapping[str, Any] | None = None, num_decodes: int | None = None
  ) -> decoding.DecodingConfig:
    """The default DecodingConfig with per-call overrides.

    Args:
      decoder_params: DecodingConfig field -> value (static Python values: the config is a
        jit-static argument); t5x's 'decode_rng' and 'eos_id' keys are accepted and ignored
        here (see `split_decoder_params`).
      num_decodes: number of returned hypotheses = num_candidates: sets length_beam to
        num_decodes / (candidates per length), which must divide it.

    Raises:
      ValueError: unknown field, or num_decodes contradicting decoder_params['length_beam'] or
        not a multiple of the candidates per length.
    """
    overrides, _ = split_decoder_params(decoder_params)
    return self._resolve_decoding_config(overrides, num_decodes)

  def _resolve_decoding_config(
      self, overrides: Mapping[str, Any], num_decodes: int | None
  ) -> decoding.DecodingConfig:
    overrides = dict(overrides)
    if num_decodes is not None:
      # Candidates per length (1 unless length_offsets / inits_per_length are set).
      per_length = dataclasses.replace(
          self.decoding_config, **{**overrides, "length_beam": 1, "refine_top_k": None}
      )
      beam, rest = divmod(int(num_decodes), per_length.num_candidates)
      if rest:
        raise ValueError(
            f"num_decodes={num_decodes} is not a multiple of the {per_length.num_candidates} "
            "candidates per length (length_offsets, inits_per_length)"
        )
      if "length_beam" in overrides and overrides["length_beam"] != beam:
        raise ValueError(
            f"num_decodes={num_decodes} contradicts decoder_params['length_beam']="
            f"{overrides['length_beam']}: num_decodes is the length beam times the "
            f"{per_length.num_candidates} candidates per length"
        )
      overrides["length_beam"] = beam
    return dataclasses.replace(self.decoding_config, **overrides)

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
    losses.check_batch(
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
    losses.check_batch(
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
    losses.check_batch(batch)
    if dropout_rng is None:
      rng, enable_dropout = jax.random.PRNGKey(self._eval_corruption_seed), False
    else:
      rng, enable_dropout = dropout_rng, True
    config = self.loss_config
    outputs = losses.multi_stage_forward(
        self.module, params, batch, rng, config, enable_dropout=enable_dropout
    )
    loss, core_metrics = losses.loss_from_outputs(outputs, batch, config)
    return loss, self._compute_padir_metrics(core_metrics, batch, outputs.stage_logits[-1])

  def eval_fn(self, params: PyTree, batch: Mapping[str, Array]) -> tuple[Array, Mapping[str, Any]]:
    """loss_fn without dropout, corruption from PRNGKey(eval_corruption_seed)."""
    return self.loss_fn(params, batch, dropout_rng=None)

  def _compute_padir_metrics(
      self, m: Mapping[str, Array], batch: Mapping[str, Array], last_stage_logits: Array
  ) -> Mapping[str, Any]:
    """t5x's own `_compute_metrics` on the last stage, plus the PaDIR scalars.

    t5x's entries (loss, z_loss, cross_ent_loss, accuracy, timing/*, ...) describe the last
    stage, what decoding converges to, with `loss` the whole multi-stage loss; added:
    length_loss, length_accuracy, length_accuracy_within_1, stage{s}/loss, stage{s}/accuracy for
    every stage, and the scalars of the training options in use (losses.option_metric_names).
    Ratios accumulate across batches as sum(correct) / sum(count) (clu Average).
    """
    targets = batch["decoder_target_tokens"]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    # As t5x's loss_fn for unpacked batches: padding masks stand in for segment ids.
    segment_ids = {
        k: batch[k] != 0 for k in ("encoder_input_tokens", "decoder_target_tokens") if k in batch
    }
    metrics = dict(
        self._compute_metrics(
            logits=last_stage_logits,
            targets=targets,
            mask=weights,
            loss=m["loss"],
            z_loss=m["z_loss"],
            segment_ids=segment_ids,
        )
    )
    metrics["length_loss"] = metrics_lib.AveragePerStep(total=m["length_loss"])
    metrics["length_accuracy"] = clu_metrics.Average(
        total=m["length_correct"], count=m["num_examples"]
    )
    metrics["length_accuracy_within_1"] = clu_metrics.Average(
        total=m["length_within_1_correct"], count=m["num_examples"]
    )
    for s in range(1, self._loss_config.num_stages + 1):
      metrics[f"stage{s}/loss"] = metrics_lib.AveragePerStep(total=m[f"stage{s}_loss"])
      metrics[f"stage{s}/accuracy"] = clu_metrics.Average(
          total=m[f"stage{s}_correct"], count=m["num_tokens"]
      )
    # The training options' own scalars (unmasking rate, glancing fractions, ...), per step.
    for name in losses.option_metric_names(self._loss_config):
      metrics[name] = metrics_lib.AveragePerStep(total=m[name])
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
    """Decodes a batch with the model's `decode_fn` (default: `decoding.decode_with_network`).

    Args:
      params: model parameters.
      batch: 'encoder_input_tokens' [b, s] and 'decoder_input_tokens' (or
        'decoder_target_tokens') [b, t], whose length t is the output length (as t5x). Lengths
        are decoded up to min(t, the network's max_target_length); the output is PAD-padded to t.
      rng: PRNG key for the random initial tokens (init='random'); None uses
        decoder_params['decode_rng'] if given, else PRNGKey(0) (deterministic).
      decoder_params: per-call overrides of any DecodingConfig field, e.g.
        {'max_passes': 10, 'length_beam': 3}; static Python values.
      return_all_decodes: return every candidate ([b, c, t], c = DecodingConfig.num_candidates,
        best last) instead of the best ([b, t]). None: the default_decoder_params' value (False
        by default).
      num_decodes: number of returned hypotheses c, which for PaDIR is the length beam l times
        the candidates per length (sets DecodingConfig.length_beam; None keeps it).
      prompt_with_targets: unsupported (PaDIR has no decoder prompt): must be False.

    Returns:
      (tokens, aux): tokens [b, t] (or [b, c, t]) int32, content then EOS then PAD, after the
      configured de-duplication. aux: 'scores' [b] (or [b, c], increasing), 'lengths' [b] (or
      [b, c]) hypothesis lengths with EOS before de-duplication, 'passes' [b] refinement passes.
    """
    if prompt_with_targets:
      raise ValueError("prompt_with_targets is not supported by PaDIR (no decoder prompt)")
    length_key = (
        "decoder_input_tokens" if "decoder_input_tokens" in batch else "decoder_target_tokens"
    )
    losses.check_batch(batch, required=("encoder_input_tokens", length_key))
    if return_all_decodes is None:
      return_all_decodes = self._default_decoder_params.return_all_decodes
    overrides, decode_rng = split_decoder_params(decoder_params)
    config = self._resolve_decoding_config(overrides, num_decodes)
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
    result = self._decode_fn(
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
    """The fixed decoder input `score_batch` conditions on: [b, t] int32 (see
    scoring.score_decoder_inputs); the fill defaults to the decoding init (DecodingConfig.init).
    """
    config = self.decoding_config
    return scoring.score_decoder_inputs(
        decoder_target_tokens,
        fill=self._score_decoder_input or self._decoding_config.init,
        seed=self._score_seed,
        # The row is drawn over the whole position table and sliced, so that an example's
        # input depends only on its length.
        table_length=getattr(getattr(self.module, "config", None), "max_target_length", None)
        or jnp.shape(decoder_target_tokens)[1],
        vocab_low=config.vocab_low,
        vocab_high=config.vocab_high,
        mask_id=config.mask_id,
    )

  def score_batch(
      self, params: PyTree, batch: Mapping[str, Array], return_intermediates: bool = False
  ) -> Array | tuple[Array, Mapping[str, Any]]:
    """Log-likelihood of the given targets: length log-prob + content-token log-probs.

    The formula, and why it conditions on a fixed decoder input rather than the target, are
    padir_t5x.core.scoring's, which the core E-step (benchmarks/em_round.py) shares.

    Args:
      params: model parameters.
      batch: 'encoder_input_tokens', 'decoder_target_tokens', optional 'decoder_loss_weights'.
      return_intermediates: also return {'decoder': {...}} with per-token scores etc.

    Returns:
      [b] float32 scores (and intermediates).
    """
    losses.check_batch(batch)
    targets = jnp.asarray(batch["decoder_target_tokens"])
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else jnp.asarray(weights)
    decoder_inputs = self.score_decoder_inputs(targets)
    sequence_scores, token_scores, length_scores = scoring.score_targets(
        self.module, params, batch["encoder_input_tokens"], targets, decoder_inputs, weights
    )
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


__all__ = ["PadirModel", "model_from_gin", "load_for_inference", "ADDITIONAL_LOGICAL_AXIS_RULES"]
