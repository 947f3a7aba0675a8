"""Export an AR core checkpoint to a CTranslate2 model directory (CPU deployment of AR models).

    python -m padir_t5x.export --ctranslate2 --checkpoint runs/budget/ar_800 --out ar_ct2

writes a CTranslate2 `TransformerSpec` model (model.bin, config.json, shared_vocabulary.json), the
checkpoint's SentencePiece model (vocab.model) and padir_export.json (the position-table limits
and the translate_batch options below). Translate with CTranslate2 (`pip install
'padir-t5x[ctranslate2]'`; no jax needed at run time):

    import ctranslate2, sentencepiece as spm
    from padir_t5x import export
    translator = export.ctranslate2_translator("ar_ct2", device="cpu", compute_type="int8")
    sp = spm.SentencePieceProcessor(model_file="ar_ct2/vocab.model")
    results = translator.translate_batch(
        [sp.encode(line, out_type=str) for line in lines], **export.greedy_options("ar_ct2")
    )
    texts = [sp.decode(r.hypotheses[0]) for r in results]

`greedy_options` (beam_size=1, min_decoding_length=0, the model's input and output lengths)
decodes as padir_t5x.decoders.ar_decoding.greedy_search does, token for token
(tests/test_export.py); beam_size > 1 is CTranslate2's own beam search (its length penalty differs
from ours).

How the network maps (padir_t5x/core/network.py -> ctranslate2.specs.TransformerSpec, pre-norm):
* token_embedder: the encoder and decoder embeddings and, with logits_via_embedding, the output
  projection (one tensor in model.bin: CTranslate2 aliases equal variables); no sqrt(d) input
  scaling (scale_embeddings False); the tied logits' 1/sqrt(emb_dim) is the decoder's
  `scale_outputs` (as CTranslate2's T5 converter does). Only the real vocabulary's rows are
  kept (vocab_high SentencePiece pieces, in id order): the padding rows are never an input and
  never an output (ar_decoding.allowed_token_mask).
* Learned absolute positions: position_embedder tables as `position_encodings` (position 0 is
  the decoder start token's, as ours).
* Attention: query/key/value kernels (no biases in ours, none in the spec) fused as CTranslate2
  fuses them; queries scaled by 1/sqrt(head_dim) on both sides (nothing to fold); a head_dim
  with head_dim * num_heads != emb_dim is written out (needs ctranslate2 >= 4.7).
* LayerNorms: scale -> gamma, bias -> beta, epsilon = layer_norm_epsilon (model config).
* Decoding: the decoder starts from id 0 (the PAD piece: `decoder_start_token`), stops at EOS
  (id 1); the source gets EOS appended (`add_source_eos`, truncation keeps it, as
  padir_t5x.translate does). ar_decoding never emits PAD, UNK or [MASK]: the output projection
  gets a bias of DISALLOWED_BIAS on those ids (0 elsewhere), so no decoding option is needed for
  it and CTranslate2's scores are the restricted log-probs ar_decoding's are.

A network held in memory (random weights for benchmarks/speed_map.py, no checkpoint and no
SentencePiece model) exports with `export_ctranslate2_params(params, config, tokens, out_dir)`,
e.g. tokens = synthetic_tokens(vocab_high): the same spec, without vocab.model.

Refused (exit status 2, one line): a PaDIR checkpoint, an activation CTranslate2 lacks, zero
layers, an --out that exists and is not empty (unless --force). The model directory is written
beside --out under a temporary name, then renamed: --out is the whole model or nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

from padir_t5x import EOS_ID
from padir_t5x import MASK_ID
from padir_t5x import PAD_ID
from padir_t5x import UNK_ID
from padir_t5x.core import checkpoints
from padir_t5x import cli
from padir_t5x.core import loading

INSTALL_HINT = "pip install 'padir-t5x[ctranslate2]'"
SIDECAR_FILE = "padir_export.json"
VOCAB_FILE = "vocab.model"
# Output-projection bias of the ids ar_decoding never emits (PAD, UNK, [MASK]): exp(logit + it)
# is exactly 0 in float32 for any realistic logit, and it is finite in float16 and bfloat16
# (quantized compute types).
DISALLOWED_BIAS = -1.0e4
NEVER_EMITTED = (PAD_ID, UNK_ID, MASK_ID)
# flax.linen activation name -> ctranslate2.specs.Activation member name. flax's gelu is the tanh
# approximation by default; swish is silu.
ACTIVATIONS = {
    "relu": "RELU",
    "gelu": "GELUTanh",
    "silu": "SWISH",
    "swish": "SWISH",
    "tanh": "Tanh",
    "sigmoid": "Sigmoid",
}


class ExportError(ValueError):
  """The checkpoint cannot be exported, or --out cannot be written; one line, naming the cause."""


def import_ctranslate2():
  """The ctranslate2 module; ExportError with the install command when it is not installed."""
  try:
    import ctranslate2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ExportError(f"the ctranslate2 package is not installed: {INSTALL_HINT}") from None
  return ctranslate2


def check_exportable(meta: dict, where: str) -> None:
  """ExportError naming the config field unless `meta` (read_config's) is an AR network that
  CTranslate2's TransformerSpec expresses exactly."""
  if meta["kind"] != "ar":
    raise ExportError(
        f"{where} is a PaDIR checkpoint: only AR checkpoints export to CTranslate2 (its "
        "parallel decoder and length predictor have no CTranslate2 equivalent)"
    )
  transformer = meta["transformer"]
  activation = transformer.get("mlp_activation", "relu")
  if activation not in ACTIVATIONS:
    raise ExportError(
        f"{where}: mlp_activation {activation!r} has no CTranslate2 equivalent (supported: "
        f"{', '.join(sorted(ACTIVATIONS))})"
    )
  for field in ("num_encoder_layers", "num_decoder_layers"):
    if transformer.get(field, 1) < 1:
      raise ExportError(f"{where}: {field} is {transformer[field]}, CTranslate2 needs >= 1")


def _transpose(kernel: np.ndarray) -> np.ndarray:
  """Our DenseGeneral kernel [in, out] -> CTranslate2's Linear weight [out, in], float32."""
  return np.ascontiguousarray(np.asarray(kernel, np.float32).T)


class _Params:
  """The checkpoint's params (nested dict) read by '/'-joined path; records which were read."""

  def __init__(self, params: dict):
    self.flat = checkpoints._flatten(params)  # pylint: disable=protected-access
    self.used: set[str] = set()

  def __call__(self, path: str) -> np.ndarray:
    self.used.add(path)
    return np.asarray(self.flat[path], np.float32)

  def unused(self) -> list[str]:
    return sorted(set(self.flat) - self.used)


def _layer_norm(spec, get: _Params, path: str) -> None:
  spec.gamma = get(f"{path}/scale")
  spec.beta = get(f"{path}/bias")


def _attention(spec, get: _Params, path: str, self_attention: bool) -> None:
  """Our MultiHeadAttention (query/key/value/out kernels, no bias) -> MultiHeadAttentionSpec.

  The heads are the contiguous head_dim-wide blocks of the fused output axis on both sides."""
  query, key, value = (
      _transpose(get(f"{path}/{name}/kernel")) for name in ("query", "key", "value")
  )
  if self_attention:
    spec.linear[0].weight = np.concatenate([query, key, value])
  else:
    spec.linear[0].weight = query
    spec.linear[1].weight = np.concatenate([key, value])
  spec.linear[-1].weight = _transpose(get(f"{path}/out/kernel"))


def _ffn(spec, get: _Params, path: str) -> None:
  _layer_norm(spec.layer_norm, get, f"{path}/pre_mlp_layer_norm")
  spec.linear_0.weight = _transpose(get(f"{path}/mlp/wi/kernel"))
  spec.linear_1.weight = _transpose(get(f"{path}/mlp/wo/kernel"))


def build_spec(config, params: dict, pieces: Sequence[str]):
  """The ctranslate2.specs.TransformerSpec of an AR network.

  Args:
    config: its network_config.TransformerConfig (decoder_mode 'autoregressive').
    params: its parameters (nested dict of arrays, as checkpoints.load_checkpoint returns them).
    pieces: the SentencePiece pieces in id order (the real vocabulary, vocab_high of them).

  Raises:
    ExportError: a parameter the spec has no place for (a sublayer CTranslate2 cannot express).
  """
  ctranslate2 = import_ctranslate2()
  specs = ctranslate2.specs
  if config.is_padir:
    raise ExportError("only AR networks (decoder_mode 'autoregressive') export to CTranslate2")
  vocab = len(pieces)
  if not 0 < vocab <= config.vocab_size:
    raise ExportError(f"{vocab} vocabulary pieces for {config.vocab_size} embedding rows")
  activation = getattr(specs.Activation, ACTIVATIONS[config.mlp_activation])
  common = dict(num_heads=config.num_heads, pre_norm=True, activation=activation)
  if config.head_dim * config.num_heads != config.emb_dim:
    # CTranslate2's default head width is emb_dim / num_heads: otherwise it is written out.
    common["head_dim"] = config.head_dim
  try:
    spec = specs.TransformerSpec(
        specs.TransformerEncoderSpec(config.num_encoder_layers, **common),
        specs.TransformerDecoderSpec(config.num_decoder_layers, **common),
    )
  except TypeError:  # the encoder spec takes head_dim from ctranslate2 4.7 on
    raise ExportError(
        f"head_dim {config.head_dim} x num_heads {config.num_heads} != emb_dim {config.emb_dim} "
        f"needs ctranslate2>=4.7 (installed: {ctranslate2.__version__})"
    ) from None
  get = _Params(params)
  embedding = get("token_embedder/embedding")[:vocab]

  encoder = spec.encoder
  encoder.scale_embeddings = False
  encoder.embeddings[0].weight = embedding
  encoder.position_encodings.encodings = get("encoder/position_embedder/embedding")
  for i, layer in enumerate(encoder.layer):
    path = f"encoder/layers_{i}"
    _layer_norm(layer.self_attention.layer_norm, get, f"{path}/pre_attention_layer_norm")
    _attention(layer.self_attention, get, f"{path}/attention", self_attention=True)
    _ffn(layer.ffn, get, path)
  _layer_norm(encoder.layer_norm, get, "encoder/encoder_norm")

  decoder = spec.decoder
  decoder.scale_embeddings = False
  decoder.embeddings.weight = embedding
  decoder.position_encodings.encodings = get("decoder/position_embedder/embedding")
  for i, layer in enumerate(decoder.layer):
    path = f"decoder/layers_{i}"
    _layer_norm(layer.self_attention.layer_norm, get, f"{path}/pre_self_attention_layer_norm")
    _attention(layer.self_attention, get, f"{path}/self_attention", self_attention=True)
    _layer_norm(layer.attention.layer_norm, get, f"{path}/pre_cross_attention_layer_norm")
    _attention(layer.attention, get, f"{path}/encoder_decoder_attention", self_attention=False)
    _ffn(layer.ffn, get, path)
  _layer_norm(decoder.layer_norm, get, "decoder/decoder_norm")
  if config.logits_via_embedding:
    # TokenEmbed.attend: x . E^T / sqrt(emb_dim).
    decoder.projection.weight = embedding
    decoder.scale_outputs = np.float32(1.0 / np.sqrt(config.emb_dim))
  else:
    decoder.projection.weight = _transpose(get("decoder/logits_dense/kernel"))[:vocab]
  bias = np.zeros((vocab,), np.float32)
  bias[[i for i in NEVER_EMITTED if i < vocab]] = DISALLOWED_BIAS
  decoder.projection.bias = bias

  unused = get.unused()
  if unused:
    raise ExportError(
        f"parameters CTranslate2's Transformer has no place for: {', '.join(unused[:3])}"
    )
  spec.config.unk_token = pieces[UNK_ID]
  spec.config.bos_token = pieces[PAD_ID]
  spec.config.eos_token = pieces[EOS_ID]
  spec.config.decoder_start_token = pieces[PAD_ID]
  spec.config.add_source_bos = False
  spec.config.add_source_eos = True
  spec.config.layer_norm_epsilon = float(config.layer_norm_epsilon)
  spec.register_source_vocabulary(list(pieces))
  spec.register_target_vocabulary(list(pieces))
  return spec


def check_out_dir(out_dir: str, force: bool) -> None:
  """ExportError unless `out_dir` is absent, an empty directory, or (with `force`) a directory;
  its parent directory must exist."""
  if os.path.exists(out_dir):
    if not os.path.isdir(out_dir):
      raise ExportError(f"{out_dir} exists and is not a directory")
    if os.listdir(out_dir) and not force:
      raise ExportError(f"{out_dir} exists and is not empty (pass --force to replace it)")
  parent = os.path.dirname(os.path.abspath(out_dir))
  if not os.path.isdir(parent):
    raise ExportError(f"directory not found: {parent}")


def load_for_export(checkpoint_dir: str, vocab_path: str | None = None):
  """(config, params, meta, SentencePiece processor) of an exportable checkpoint.

  Raises:
    ExportError: a PaDIR checkpoint or a network CTranslate2 cannot express (naming the field).
    checkpoints.CheckpointError: a missing or unreadable checkpoint or vocabulary.
  """
  meta = checkpoints.read_config(checkpoint_dir)
  check_exportable(meta, checkpoint_dir)
  loaded = loading.load(checkpoint_dir, vocab_path, kind="ar")
  return loaded.module.config, loaded.params, loaded.meta, loaded.vocabulary


def _write_directory(spec, out_dir: str, vocab_path: str | None, sidecar: dict) -> None:
  """Saves `spec` (+ vocab.model unless `vocab_path` is None, and the sidecar) under a temporary
  directory beside `out_dir`, then renames it to `out_dir` (replacing what is there)."""
  out_dir = os.path.abspath(out_dir)
  parent, name = os.path.split(out_dir)
  tmp = tempfile.mkdtemp(prefix=f".{name}.tmp", dir=parent)
  old = None
  try:
    spec.save(tmp)
    if vocab_path is not None:
      shutil.copyfile(vocab_path, os.path.join(tmp, VOCAB_FILE))
    with open(os.path.join(tmp, SIDECAR_FILE), "w", encoding="utf-8") as f:
      json.dump(sidecar, f, indent=2)
      f.write("\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0o700 -> what os.makedirs would have given
    if os.path.isdir(out_dir) and os.listdir(out_dir):
      old = tempfile.mkdtemp(prefix=f".{name}.old", dir=parent)
      os.replace(out_dir, old)
    os.replace(tmp, out_dir)  # onto nothing or an empty directory
  except BaseException:
    if old is not None and not os.path.exists(out_dir):
      os.replace(old, out_dir)
      old = None
    raise
  finally:
    for leftover in (tmp, old):
      if leftover is not None and os.path.exists(leftover):
        shutil.rmtree(leftover, ignore_errors=True)


def export_ctranslate2(
    checkpoint_dir: str, out_dir: str, vocab_path: str | None = None, force: bool = False
) -> str:
  """Converts the AR core checkpoint at `checkpoint_dir` to a CTranslate2 model in `out_dir`.

  `vocab_path`: a SentencePiece model to use instead of the checkpoint's. `force`: replace a
  non-empty `out_dir`. Returns `out_dir`. Raises ExportError (not exportable, ctranslate2
  missing, `out_dir` not empty) or checkpoints.CheckpointError (missing or unreadable
  checkpoint); nothing is written then.
  """
  import_ctranslate2()
  check_out_dir(out_dir, force)
  spec, sidecar, vocab_file = _prepare(checkpoint_dir, vocab_path)
  _write_directory(spec, out_dir, vocab_file, sidecar)
  return out_dir


def _prepare(checkpoint_dir: str, vocab_path: str | None):
  """(validated spec, sidecar dict, SentencePiece file) of the checkpoint; nothing written."""
  import_ctranslate2()
  config, params, meta, processor = load_for_export(checkpoint_dir, vocab_path)
  pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
  spec, sidecar = _spec_and_sidecar(config, params, pieces, os.path.abspath(checkpoint_dir))
  return spec, sidecar, vocab_path or meta["vocab_model"]


def _spec_and_sidecar(config, params: dict, pieces: Sequence[str], source: str | None):
  """(validated, optimized spec, sidecar dict) of an AR network; nothing written. `source`: the
  checkpoint it came from (None: parameters handed over in memory)."""
  ctranslate2 = import_ctranslate2()
  spec = build_spec(config, params, pieces)
  spec.validate()
  spec.optimize(quantization=None)  # aliases the tied embedding; compute_type picks at load
  sidecar = {
      "source_checkpoint": source,
      "ctranslate2_version": ctranslate2.__version__,
      "vocab_size": len(pieces),
      "max_input_length": config.max_input_length,
      "max_decoding_length": config.max_target_length,
      "greedy_options": _greedy_options(config.max_input_length, config.max_target_length),
  }
  return spec, sidecar


def synthetic_tokens(vocab_high: int) -> list[str]:
  """Token strings 't0' .. 't{vocab_high - 1}' standing for ids 0 .. vocab_high - 1: the
  vocabulary of a network without a SentencePiece model (random weights, benchmarks). Id i is
  the string f't{i}' both ways (the source tokens to pass, the output tokens to read)."""
  return [f"t{i}" for i in range(vocab_high)]


def export_ctranslate2_params(
    params: dict, config, tokens: Sequence[str], out_dir: str, force: bool = False
) -> str:
  """Converts an AR network held in memory to a CTranslate2 model in `out_dir` (no checkpoint,
  no SentencePiece model: model.bin, config.json, shared_vocabulary.json and padir_export.json).

  Args:
    params: the network's parameters (nested dict of arrays).
    config: its network_config.TransformerConfig (decoder_mode 'autoregressive').
    tokens: the vocabulary tokens in id order (the real vocabulary, vocab_high of them, at most
      config.vocab_size), e.g. synthetic_tokens(vocab_high); CTranslate2 reads and writes them.
    out_dir: absent, an empty directory, or (with `force`) a directory to replace.

  The same spec as export_ctranslate2 builds (build_spec), so greedy_options and
  ctranslate2_translator apply. Returns `out_dir`; raises ExportError as export_ctranslate2.
  """
  import_ctranslate2()
  check_out_dir(out_dir, force)
  if config.is_padir:
    raise ExportError("only AR networks (decoder_mode 'autoregressive') export to CTranslate2")
  check_exportable({"kind": "ar", "transformer": dataclasses.asdict(config)}, "config")
  spec, sidecar = _spec_and_sidecar(config, params, list(tokens), None)
  _write_directory(spec, out_dir, None, sidecar)
  return out_dir


def _greedy_options(max_input_length: int, max_decoding_length: int) -> dict:
  return {
      "beam_size": 1,
      "min_decoding_length": 0,  # EOS may come first, as in ar_decoding (CTranslate2's default 1)
      "max_decoding_length": max_decoding_length,  # the decoder's position table
      "max_input_length": max_input_length,  # truncate (EOS kept), as padir_t5x.translate
  }


def read_sidecar(out_dir: str) -> dict:
  """padir_export.json of an exported model directory; ExportError if absent or not JSON."""
  path = os.path.join(out_dir, SIDECAR_FILE)
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ExportError(
        f"{path} is missing or unreadable ({e}): not a model written by padir_t5x.export"
    ) from None


def greedy_options(out_dir: str, **overrides) -> dict:
  """translate_batch keyword arguments that decode as ar_decoding.greedy_search (with
  max_decode_length = the model's max_target_length unless overridden, at most it)."""
  sidecar = read_sidecar(out_dir)
  options = _greedy_options(sidecar["max_input_length"], sidecar["max_decoding_length"])
  options.update(overrides)
  return options


def ctranslate2_translator(out_dir: str, **kwargs):
  """ctranslate2.Translator(out_dir, **kwargs) for an exported directory (device 'cpu' unless
  given; e.g. compute_type='int8', intra_threads=4)."""
  ctranslate2 = import_ctranslate2()
  read_sidecar(out_dir)
  kwargs.setdefault("device", "cpu")
  return ctranslate2.Translator(out_dir, **kwargs)


# -------------------------------------------------------------------------------------------------
# The command.
def build_parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(
      description="Export an AR core checkpoint for another runtime (CTranslate2)."
  )
  formats = parser.add_mutually_exclusive_group(required=True)
  formats.add_argument(
      "--ctranslate2",
      action="store_true",
      help=f"write a CTranslate2 model directory (needs {INSTALL_HINT})",
  )
  parser.add_argument("--checkpoint", required=True, help="AR core checkpoint directory")
  parser.add_argument("--out", required=True, help="model directory to write (absent or empty)")
  parser.add_argument("--vocab", help="SentencePiece model to use instead of the checkpoint's")
  parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
  return parser


@cli.entry_point
def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  # Every refusal comes before any work: exit 2, one line naming the flag.
  try:
    import_ctranslate2()
  except ExportError as e:
    parser.error(f"argument --ctranslate2: {e}")
  if args.vocab is not None and not os.path.isfile(args.vocab):
    parser.error(f"argument --vocab: file not found: {args.vocab}")
  cli.check_output_path(
      parser,
      "--out",
      args.out,
      inputs={"--checkpoint": args.checkpoint, "--vocab": args.vocab},
      kind="dir",
      replaces=True,
  )
  try:
    check_out_dir(args.out, args.force)
  except ExportError as e:
    parser.error(f"argument --out: {e}")
  try:
    spec, sidecar, vocab_file = _prepare(args.checkpoint, args.vocab)
  except (ExportError, checkpoints.CheckpointError) as e:
    parser.error(f"argument --checkpoint: {e}")
  _write_directory(spec, args.out, vocab_file, sidecar)
  print(f"wrote the CTranslate2 model {args.out} (translate it as padir_t5x/export.py shows)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
