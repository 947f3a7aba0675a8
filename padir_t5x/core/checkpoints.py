"""The core checkpoint format: params.npz + config.json + the vocabulary, read with numpy alone.

A core checkpoint is a directory with
  params.npz    every parameter leaf, keyed by its '/'-joined path in the params tree;
  config.json   {"kind": "padir" | "ar", "transformer": TransformerConfig fields,
                 "vocab_model": the SentencePiece model, "vocab_high": real vocabulary size,
                 "decoding": optional DecodingConfig fields the model was evaluated with,
                 "train": free-form training record,
                 "vocab_sha256": the sha256 of the vocabulary's serialized SentencePiece model
                 (`vocabulary_sha256`; absent in older checkpoints),
                 "param_dtype": optional, "bfloat16" when params.npz holds bfloat16 bits,
                 "model_card": optional, a released model's description (MODEL_CARD_FIELDS)};
  vocab.model   the SentencePiece model, copied in by `save_checkpoint` so the directory is
                self-contained ("vocab_model" is then the relative name "vocab.model"; an
                absolute path, as older checkpoints have, is read where it points).

The quickstart, the budget trainer (benchmarks/train_budget.py) and `padir_t5x.translate` all
use this one implementation; no t5x, no orbax. `read_config` and `load_checkpoint` check what
they read (each "transformer" field's type, every array of params.npz) and raise
`CheckpointError` (a ValueError) with one message naming the file (and field) at fault;
`load_vocabulary` refuses a vocabulary whose sha256 is not the one config.json records.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import os
import shutil
import struct
import types
import typing
import warnings
import zipfile
import zlib
from typing import Any

import numpy as np

from padir_t5x import EOS_ID
from padir_t5x import PAD_ID
from padir_t5x import UNK_ID

# padir_t5x.core.network (jax, flax) is imported where a config is built, so that a command reading
# only config.json (translate's flag checks) does not pay for it.

KINDS = ("padir", "ar")
# How params.npz stores the parameters (config.json "param_dtype"; absent: float32).
PARAM_DTYPES = ("float32", "bfloat16")
CONFIG_FILE = "config.json"
PARAMS_FILE = "params.npz"
VOCAB_FILE = "vocab.model"
_DECODER_MODE = {"padir": "padir", "ar": "autoregressive"}


class CheckpointError(ValueError):
  """A checkpoint (or its vocabulary) is missing or unusable; the message names the file."""


def _flatten(tree: Any, prefix: str = "", leaf=np.asarray) -> dict[str, Any]:
  flat = {}
  for key, value in tree.items():
    path = f"{prefix}/{key}" if prefix else str(key)
    if hasattr(value, "items"):
      flat.update(_flatten(value, path, leaf))
    else:
      flat[path] = leaf(value)
  return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def save_checkpoint(
    directory: str,
    params: Any,
    config,
    kind: str,
    vocab_model: str | None = None,
    vocab_high: int | None = None,
    train_record: dict | None = None,
    decoding: dict | None = None,
    copy_vocabulary: bool = True,
    param_dtype: str = "float32",
    model_card: dict | None = None,
) -> None:
  """Writes params.npz and config.json (and vocab.model) under `directory` (created).

  With `copy_vocabulary` (the default) the SentencePiece model at `vocab_model` is copied into
  the directory; otherwise its absolute path is recorded. `decoding` holds DecodingConfig fields
  (by name) that the translator uses as its defaults. `param_dtype` 'bfloat16' stores every
  parameter rounded to bfloat16 (half the bytes: how the committed models stay small; the
  loader restores float32). `model_card` (checked by `check_model_card`) describes a model
  meant for others: its data, size, budget and dev scores.
  """
  if kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  if param_dtype not in PARAM_DTYPES:
    raise ValueError(f"param_dtype must be one of {PARAM_DTYPES}, got {param_dtype!r}")
  if model_card is not None:
    check_model_card(model_card, "model_card")
  expected = _DECODER_MODE[kind]
  if config.decoder_mode != expected:
    raise ValueError(
        f"kind {kind!r} needs decoder_mode {expected!r}, got " f"{config.decoder_mode!r}"
    )
  os.makedirs(directory, exist_ok=True)
  recorded_vocab = vocab_model
  vocab_sha256 = None
  if vocab_model is not None:
    try:
      vocab_sha256 = vocabulary_sha256(_sentencepiece_processor(vocab_model))
    except (RuntimeError, OSError):
      pass  # not a SentencePiece model: load_vocabulary names it when the checkpoint is used
  if vocab_model is not None:
    if copy_vocabulary:
      target = os.path.join(directory, VOCAB_FILE)
      if os.path.abspath(vocab_model) != os.path.abspath(target):
        shutil.copyfile(vocab_model, target)
      recorded_vocab = VOCAB_FILE
    else:
      recorded_vocab = os.path.abspath(vocab_model)
  flat = _flatten(params)
  if param_dtype == "bfloat16":
    # numpy has no bfloat16 of its own: the bit patterns are stored as uint16.
    flat = {k: _to_bfloat16_bits(v) for k, v in flat.items()}
  np.savez(os.path.join(directory, PARAMS_FILE), **flat)
  meta = {
      "kind": kind,
      "transformer": {k: _jsonable(v) for k, v in dataclasses.asdict(config).items()},
      "vocab_model": recorded_vocab,
      "vocab_high": vocab_high,
      **({"vocab_sha256": vocab_sha256} if vocab_sha256 is not None else {}),
      "decoding": {k: _jsonable(v) for k, v in (decoding or {}).items()},
      "train": train_record or {},
  }
  if param_dtype != "float32":
    meta["param_dtype"] = param_dtype
  if model_card is not None:
    meta["model_card"] = model_card
  tmp = os.path.join(directory, f".{CONFIG_FILE}.tmp{os.getpid()}")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  os.replace(tmp, os.path.join(directory, CONFIG_FILE))


def _sentencepiece_processor(path: str):
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  return spm.SentencePieceProcessor(model_file=path)


def vocabulary_sha256(processor) -> str:
  """The fingerprint config.json records of a vocabulary: the sha256 (hex) of its serialized
  SentencePiece model proto."""
  return hashlib.sha256(processor.serialized_model_proto()).hexdigest()


def _to_bfloat16_bits(value: np.ndarray) -> np.ndarray:
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (a jax dependency)

  return np.asarray(value, np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)


def _from_bfloat16_bits(bits: np.ndarray, path: str, key: str) -> np.ndarray:
  import ml_dtypes  # pylint: disable=g-import-not-at-top

  if bits.dtype != np.uint16:
    raise CheckpointError(f"{path}: {key} is {bits.dtype}, a bfloat16 checkpoint stores uint16")
  return bits.view(ml_dtypes.bfloat16).astype(np.float32)


# What a model card (config.json "model_card") holds: field -> the types its value may have.
MODEL_CARD_FIELDS = {
    "name": (str,),
    "description": (str,),  # what it translates, and what it does not
    "data": (str,),  # the training text, where it comes from
    "languages": (str,),  # e.g. 'de-en'
    "num_params": (int,),
    "size": (str,),  # e.g. 'd=256, 3+3 layers, 4 heads, FFN 1024'
    "steps": (int,),
    "train_minutes": (int, float),
    "machine": (str,),
    "dev_scores": (dict,),  # split -> {'bleu': float, 'chrf': float, 'setting': str}
}


def check_model_card(card: Any, where: str) -> None:
  """Raises CheckpointError naming `where` and the field unless `card` has every field of
  MODEL_CARD_FIELDS with a value of its type, and each dev score has a numeric bleu and chrf."""
  if not isinstance(card, dict):
    raise CheckpointError(f"{where} is not a JSON object")
  for field, types in MODEL_CARD_FIELDS.items():
    if field not in card:
      raise CheckpointError(f"{where} has no {field!r} field")
    if not isinstance(card[field], types) or isinstance(card[field], bool):
      raise CheckpointError(
          f"{where}: {field!r} is {card[field]!r}, not {' or '.join(t.__name__ for t in types)}"
      )
  for split, scores in card["dev_scores"].items():
    for metric in ("bleu", "chrf"):
      value = scores.get(metric) if isinstance(scores, dict) else None
      if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise CheckpointError(f"{where}: dev_scores[{split!r}] has no numeric {metric!r}")


def _jsonable(value):
  return value.value if hasattr(value, "value") else value  # enum members by name


def is_core_checkpoint(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, CONFIG_FILE)) and os.path.isfile(
      os.path.join(directory, PARAMS_FILE)
  )


def looks_like_t5x_checkpoint(directory: str) -> bool:
  """A t5x checkpoint_N directory (a 'checkpoint' file or orbax metadata), or a t5x model dir."""
  if not os.path.isdir(directory):
    return False
  names = set(os.listdir(directory))
  return bool(
      {"checkpoint", "_CHECKPOINT_METADATA", "config.gin", "_METADATA"} & names
      or any(n.startswith("checkpoint_") for n in names)
  )


# config.json's other fields and the JSON types their values may have.
_META_TYPES = {
    "vocab_model": (str, type(None)),
    "vocab_high": (int, type(None)),
    "vocab_sha256": (str,),
    "decoding": (dict, type(None)),
    "train": (dict, type(None)),
    "param_dtype": (str,),
}
_JSON_TYPE_NAMES = {str: "a string", int: "an integer", dict: "a JSON object", type(None): "null"}


def _matches(value: Any, annotation: Any) -> bool:
  """Whether a JSON value is one of a TransformerConfig field's annotated type (enums by name)."""
  if typing.get_origin(annotation) in (typing.Union, types.UnionType):
    return any(_matches(value, option) for option in typing.get_args(annotation))
  if annotation is type(None):
    return value is None
  if annotation is bool:
    return isinstance(value, bool)
  if annotation is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if annotation is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if annotation is str:
    return isinstance(value, str)
  if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
    return isinstance(value, str) and value in {member.value for member in annotation}
  return True  # a type config.json cannot hold: left to the config's own checks


def _describe(annotation: Any) -> str:
  if typing.get_origin(annotation) in (typing.Union, types.UnionType):
    return " or ".join(_describe(option) for option in typing.get_args(annotation))
  if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
    return "one of " + ", ".join(repr(member.value) for member in annotation)
  names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
  return names.get(annotation, "null" if annotation is type(None) else str(annotation))


def _check_config_types(meta: dict, path: str) -> None:
  """CheckpointError naming `path` and the field unless each field of config.json (the
  "transformer" ones against network.TransformerConfig's annotations) has a value of its type."""
  for field, allowed in _META_TYPES.items():
    value = meta.get(field)
    if field in meta and (not isinstance(value, allowed) or isinstance(value, bool)):
      wanted = " or ".join(_JSON_TYPE_NAMES[t] for t in allowed)
      raise CheckpointError(f"{path}: field {field!r} is {value!r}, not {wanted}")
  if not isinstance(meta["transformer"], dict):
    raise CheckpointError(f"{path}: field 'transformer' is not a JSON object")
  from padir_t5x.core import network  # pylint: disable=g-import-not-at-top

  hints = typing.get_type_hints(network.TransformerConfig)
  for name, value in meta["transformer"].items():
    if name not in hints:
      raise CheckpointError(
          f"{path}: unknown transformer field {name!r} (TransformerConfig has "
          f"{', '.join(hints)})"
      )
    if not _matches(value, hints[name]):
      raise CheckpointError(
          f"{path}: transformer field {name!r} is {value!r}, not {_describe(hints[name])}"
      )


def transformer_config(meta: dict):
  """The network.TransformerConfig of a config.json dict that `read_config` returned."""
  from padir_t5x.core import network  # pylint: disable=g-import-not-at-top

  return network.TransformerConfig(**meta["transformer"])


def read_config(directory: str) -> dict:
  """The config.json of a core checkpoint, checked; 'vocab_model' resolved to a path (or None).

  Raises CheckpointError naming the directory or file: missing, a t5x checkpoint (not read
  here), invalid JSON, a missing field, a field of the wrong type (naming it), an unknown kind,
  or a kind that contradicts the network's decoder_mode.
  """
  if not os.path.isdir(directory):
    raise CheckpointError(f"checkpoint directory not found: {directory}")
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isfile(path):
    if looks_like_t5x_checkpoint(directory):
      raise CheckpointError(
          f"{directory} is a T5X checkpoint; only core checkpoints ({PARAMS_FILE} + "
          f"{CONFIG_FILE} + {VOCAB_FILE}, written by `python -m padir_t5x.quickstart` and "
          "benchmarks/train_budget.py) are supported; translate a T5X checkpoint with t5x.infer "
          "(gin/experiments/quickstart_infer.gin)"
      )
    raise CheckpointError(
        f"{path} not found: {directory} is not a core checkpoint ({PARAMS_FILE} + {CONFIG_FILE}"
        f" + {VOCAB_FILE}, as written by `python -m padir_t5x.quickstart`)"
    )
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path} is not valid JSON ({e})") from None
  if not isinstance(meta, dict):
    raise CheckpointError(f"{path} is not a JSON object")
  for field in ("kind", "transformer"):
    if field not in meta:
      raise CheckpointError(f"{path} has no {field!r} field")
  if not isinstance(meta["kind"], str) or meta["kind"] not in KINDS:
    raise CheckpointError(f"{path}: kind {meta['kind']!r} is not one of {KINDS}")
  _check_config_types(meta, path)
  try:
    config = transformer_config(meta)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"{path}: bad 'transformer' config ({e})") from None
  if config.decoder_mode != _DECODER_MODE[meta["kind"]]:
    raise CheckpointError(
        f"{path}: kind {meta['kind']!r} contradicts decoder_mode {config.decoder_mode.value!r}"
    )
  if "model_card" in meta:
    check_model_card(meta["model_card"], f"{path}: model_card")
  vocab_model = meta.get("vocab_model")
  if vocab_model is not None and not os.path.isabs(vocab_model):
    vocab_model = os.path.join(directory, vocab_model)
  return {**meta, "vocab_model": vocab_model, "decoding": meta.get("decoding") or {}}


def load_checkpoint(directory: str) -> tuple[Any, dict, dict]:
  """Returns (module, params as a nested dict of numpy arrays, the config.json dict).

  The config dict is `read_config`'s ('vocab_model' resolved). The parameters are checked
  against the shapes the config's network has (jax.eval_shape, nothing is run), so a params.npz
  that belongs to another config fails here, naming it, not later inside jit.
  """
  from padir_t5x.core import network  # pylint: disable=g-import-not-at-top

  meta = read_config(directory)
  config = transformer_config(meta)
  path = os.path.join(directory, PARAMS_FILE)
  if not os.path.isfile(path):
    raise CheckpointError(f"{path} not found")
  flat = _read_arrays(path)
  param_dtype = meta.get("param_dtype", "float32")
  if param_dtype not in PARAM_DTYPES:
    raise CheckpointError(
        f"{directory}/{CONFIG_FILE}: param_dtype {param_dtype!r} is not one of {PARAM_DTYPES}"
    )
  if param_dtype == "bfloat16":
    flat = {k: _from_bfloat16_bits(v, path, k) for k, v in flat.items()}
  params = _unflatten(flat)
  module = network.Transformer(config)
  _check_params(module, params, path)
  return module, params, meta


def _read_arrays(path: str) -> dict[str, np.ndarray]:
  """Every array of the .npz file at `path`, read now; CheckpointError naming the file (and the
  array being read) when it is empty, truncated, damaged or not an .npz archive."""
  flat: dict[str, np.ndarray] = {}
  key = None
  try:
    data = np.load(path)
    if not isinstance(data, np.lib.npyio.NpzFile):
      raise CheckpointError(f"{path} is not a readable .npz file (it holds a single .npy array)")
    with data:
      for key in data.files:
        flat[key] = data[key]
  except CheckpointError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, struct.error) as e:
    if os.path.getsize(path) == 0:
      raise CheckpointError(f"{path} is not a readable .npz file (it is empty)") from None
    at = f", array {key!r}" if key is not None else ""
    raise CheckpointError(
        f"{path} is not a readable .npz file (truncated or damaged{at}: {type(e).__name__}: {e})"
    ) from None
  if not flat:
    raise CheckpointError(f"{path} is not a readable .npz file (it holds no arrays)")
  return flat


def abstract_params(module) -> dict:
  """`module`'s parameter tree as jax.ShapeDtypeStructs (jax.eval_shape: nothing is run)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  x = jnp.ones((1, 2), jnp.int32)
  return jax.eval_shape(
      lambda: module.init(jax.random.PRNGKey(0), x, x, x, enable_dropout=False)["params"]
  )


def _check_params(module, params: dict, path: str) -> None:
  want = _flatten(abstract_params(module), leaf=lambda v: tuple(v.shape))
  got = _flatten(params, leaf=lambda v: tuple(np.shape(v)))
  if want != got:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    details = []
    if missing:
      details.append(f"missing {missing[:3]}")
    if extra:
      details.append(f"unexpected {extra[:3]}")
    if wrong:
      details.append(
          ", ".join(f"{k} has shape {got[k]}, config needs {want[k]}" for k in wrong[:3])
      )
    raise CheckpointError(
        f"{path} does not match the network of {CONFIG_FILE}: " + "; ".join(details)
    )


def load_vocabulary(path: str, meta: dict, embedding_rows: int, config_path: str | None = None):
  """The SentencePiece processor at `path`, checked against the checkpoint; CheckpointError.

  `meta` is the checkpoint's config.json (`read_config`; {} for a T5X checkpoint), `config_path`
  where it was read, for the messages. A vocabulary whose sha256 (`vocabulary_sha256`) is not
  the "vocab_sha256" config.json records is refused, naming both files; where a checkpoint
  records none (older ones), a vocabulary file other than its own draws a warning, as only the
  size and special ids can be compared.
  """
  if path is None:
    raise CheckpointError("the checkpoint records no vocabulary: pass --vocab FILE.model")
  if not os.path.isfile(path):
    raise CheckpointError(f"vocabulary not found: {path}")
  try:
    processor = _sentencepiece_processor(path)
  except (RuntimeError, OSError) as e:
    raise CheckpointError(f"{path} is not a SentencePiece model ({e})") from None
  size = processor.get_piece_size()
  expected = meta.get("vocab_high")
  if size > embedding_rows or (expected is not None and size != expected):
    wanted = f"{expected} pieces" if expected is not None else f"at most {embedding_rows} pieces"
    raise CheckpointError(
        f"{path} has {size} pieces but the checkpoint's embedding was trained with {wanted} "
        f"({embedding_rows} embedding rows): not this model's vocabulary"
    )
  ids = (processor.pad_id(), processor.eos_id(), processor.unk_id())
  if ids != (PAD_ID, EOS_ID, UNK_ID):
    raise CheckpointError(
        f"{path} has pad/eos/unk ids {ids}, not ({PAD_ID}, {EOS_ID}, {UNK_ID}) as PaDIR models "
        "(build vocabularies with `python -m padir_t5x.vocab`)"
    )
  config = config_path or "the checkpoint's config.json"
  own = meta.get("vocab_model")
  recorded = meta.get("vocab_sha256")
  if recorded is not None:
    digest = vocabulary_sha256(processor)
    if digest != recorded:
      raise CheckpointError(
          f"{path} is not the vocabulary the checkpoint was trained with: its sha256 is "
          f"{digest[:16]}..., {config} records {recorded[:16]}... (of {own})"
      )
  elif own is not None and os.path.realpath(path) != os.path.realpath(own):
    warnings.warn(
        f"{config} records no vocab_sha256 (an older checkpoint): {path} cannot be checked to be "
        f"its vocabulary {own}, only its size and special ids were compared",
        stacklevel=2,
    )
  return processor


@dataclasses.dataclass(frozen=True)
class WarmStart:
  """What `warm_start` did: the new params and the '/'-joined paths (sorted) of each kind of leaf."""

  params: dict
  copied: tuple[str, ...]  # taken from the checkpoint (same path, same shape)
  fresh: tuple[str, ...]  # kept from the new initialisation (not in the checkpoint)
  unused: tuple[str, ...]  # in the checkpoint, not in the new network


def warm_start(params: Any, checkpoint_params: Any, checkpoint: str) -> WarmStart:
  """`params` with every leaf that `checkpoint_params` holds at the same path replaced by it.

  An AR checkpoint and a PaDIR network of the same sizes share every AR parameter (embeddings,
  encoder, decoder self- and cross-attention, MLPs, norms); the PaDIR-only ones (positional
  attention, the length predictor) keep their fresh initialisation. This is the NAT recipe of
  starting from the AR teacher (Guo et al. 2020, "Fine-Tuning by Curriculum Learning for
  Non-Autoregressive Neural Machine Translation"). The leaves of `params` may be arrays or
  jax.ShapeDtypeStructs (to check a warm start before anything is initialised).

  Raises CheckpointError naming `checkpoint` when a shared path has another shape (other sizes:
  the warm start would be meaningless) or when no path is shared at all.
  """
  new = _flatten(params, leaf=lambda v: v)
  old = _flatten(checkpoint_params, leaf=lambda v: v)
  wrong = [k for k in new if k in old and tuple(np.shape(old[k])) != tuple(new[k].shape)]
  if wrong:
    raise CheckpointError(
        f"{checkpoint} cannot warm-start this network: "
        + ", ".join(
            f"{k} has shape {tuple(np.shape(old[k]))}, the network needs {tuple(new[k].shape)}"
            for k in wrong[:3]
        )
        + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else "")
    )
  copied = tuple(sorted(k for k in new if k in old))
  if not copied:
    raise CheckpointError(f"{checkpoint} shares no parameter with this network")
  merged = {k: (np.asarray(old[k], dtype=new[k].dtype) if k in old else v) for k, v in new.items()}
  return WarmStart(
      params=_unflatten(merged),
      copied=copied,
      fresh=tuple(sorted(k for k in new if k not in old)),
      unused=tuple(sorted(k for k in old if k not in new)),
  )
