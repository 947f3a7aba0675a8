"""Decodes that a second process neither traces nor lowers: `jax.export` programs kept on disk.

JAX's persistent compilation cache saves XLA's compile, but every process still traces the
Python decode to a jaxpr and lowers it to StableHLO before it can look the compile up: for PaDIR
(a refinement loop in each of ~6 length-bucket branches) that is 1-1.5 s per batch shape on a
2-core CPU, so a warm `translate` still spent 4.4 s "compiling" 1,014 captions. `ExportedDecoder`
wraps a `decoders.Decoder` and keeps, per input shape, the decode as a serialised
`jax.export.Exported` in a directory; a later process deserialises it (milliseconds) and calls
it under jit, whose lowering only wraps the stored module and whose compile the persistent cache
answers.

The programs take the decoder's parameters as arguments (never baked in as constants), and a
file's name is a hash of everything that shapes the program: the decoder with its parameters
replaced by their shapes and dtypes, the input's shape, JAX's and jaxlib's versions, the backend
and the source of padir_t5x itself (an edited checkout never reuses a stale program).

Every decoder of decoders.py is one jitted program and can be exported (`exportable`); a
decoder that runs Python between device calls could not be.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import os
import pathlib
import tempfile
import time
from typing import Any
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from padir_t5x.decoders import decoders

Array = jnp.ndarray

SUFFIX = ".jaxexport"


def exportable(decoder: Any) -> bool:
  """Whether `decoder` is one jitted program whose parameters are fields named *params."""
  kinds = (
      decoders.PadirDecoder,
      decoders.ArBeamDecoder,
      decoders.ArGreedyDecoder,
      decoders.DraftVerifyDecoder,
  )
  return isinstance(decoder, kinds)


def _param_fields(decoder: Any) -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(decoder) if f.name.endswith("params"))


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
  """sha256 of padir_t5x's Python sources (names and bytes): part of every program's key."""
  root = pathlib.Path(__file__).resolve().parents[1]
  digest = hashlib.sha256()
  for path in sorted(root.rglob("*.py")):
    digest.update(str(path.relative_to(root)).encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()


def describe(value: Any) -> str:
  """A text that is equal across processes exactly when `value` (a static part of a decoder:
  dataclasses, flax modules, enums, functions, numpy tables) would trace the same program.

  repr is not enough: a function's repr holds its address and WordStarts' only its counts.
  Attributes whose names start with '_' (cached Python hashes, which vary per process) are left
  out.
  """
  if value is None or isinstance(value, (bool, int, float, str, bytes, enum.Enum)):
    return repr(value)
  if isinstance(value, (tuple, list)):
    return type(value).__name__ + "(" + ", ".join(describe(v) for v in value) + ")"
  if isinstance(value, dict):
    return (
        "{"
        + ", ".join(f"{describe(k)}: {describe(v)}" for k, v in sorted(value.items(), key=str))
        + "}"
    )
  if isinstance(value, np.ndarray):
    return f"array({value.dtype}, {value.shape}, {hashlib.sha256(value.tobytes()).hexdigest()})"
  if isinstance(value, functools.partial):
    return f"partial({describe(value.func)}, {describe(value.args)}, {describe(value.keywords)})"
  if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__"):
    return f"{value.__module__}.{value.__qualname__}"
  name = f"{type(value).__module__}.{type(value).__qualname__}"
  if dataclasses.is_dataclass(value):
    names = [f.name for f in dataclasses.fields(value) if f.name not in ("parent", "name")]
  elif hasattr(value, "__slots__"):
    names = list(value.__slots__)
  else:
    names = sorted(vars(value))
  names = [n for n in names if not n.startswith("_")]
  return name + "(" + ", ".join(f"{n}={describe(getattr(value, n))}" for n in names) + ")"


def program_key(decoder: Any, shape: tuple[int, ...], dtype: Any) -> str:
  """The file name (hex sha256) of `decoder`'s program for an int input of `shape`: the
  decoder's static parts (`describe`), its parameters' paths, shapes and dtypes, the input's
  shape and dtype, JAX's and jaxlib's versions, the backend and padir_t5x's source."""
  params = {name: getattr(decoder, name) for name in _param_fields(decoder)}
  specs = [
      (jax.tree_util.keystr(path), tuple(np.shape(leaf)), str(jnp.result_type(leaf)))
      for path, leaf in jax.tree_util.tree_leaves_with_path(params)
  ]
  described = dataclasses.replace(decoder, **{name: None for name in params})
  text = "\n".join(
      (
          describe(described),
          repr(specs),
          repr((tuple(shape), str(np.dtype(dtype)))),
          jax.__version__,
          jaxlib.__version__,
          jax.default_backend(),
          source_digest(),
      )
  )
  return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass
class ExportedDecoder:
  """A `Decoder` whose program for each input shape is exported once to `directory` and loaded
  from there by every later process (see the module docstring).

  Attributes:
    decoder: an `exportable` decoder.
    directory: where the programs live (created on the first write).
    on_load: called with (start, end) perf_counter seconds of each program read from disk, so
      that a compile clock can count it.
  """

  decoder: Any
  directory: str
  on_load: Callable[[float, float], None] | None = None

  def __post_init__(self):
    if not exportable(self.decoder):
      raise TypeError(f"{type(self.decoder).__name__} is not one jitted program; cannot export it")
    self._fields = _param_fields(self.decoder)
    self._calls: dict[tuple, Callable] = {}

  @property
  def max_input_length(self) -> int:
    return self.decoder.max_input_length

  @property
  def max_decode_length(self) -> int:
    return self.decoder.max_decode_length

  def path(self, shape: tuple[int, ...], dtype: Any = np.int32) -> str:
    return os.path.join(self.directory, program_key(self.decoder, shape, dtype) + SUFFIX)

  def _decode_with(self, params: tuple, encoder_input_tokens: Array, rng: Array):
    """The wrapped decode with its parameter fields given as arguments; plain tuple out."""
    decoder = dataclasses.replace(self.decoder, **dict(zip(self._fields, params)))
    result = decoder.decode(encoder_input_tokens, rng)
    return result.sequences, result.scores, result.lengths, result.steps

  def _program(self, tokens: Array, rng: Array) -> Callable:
    key = (tokens.shape, str(tokens.dtype), rng.shape, str(rng.dtype))
    if key in self._calls:
      return self._calls[key]
    path = self.path(tokens.shape, tokens.dtype)
    exported = None
    if os.path.exists(path):
      start = time.perf_counter()
      try:
        exported = jax.export.deserialize(bytearray(pathlib.Path(path).read_bytes()))
      except Exception:  # pylint: disable=broad-except
        exported = None  # a truncated or foreign file: export again and replace it
      if self.on_load is not None:
        self.on_load(start, time.perf_counter())
    if exported is None:
      params = tuple(getattr(self.decoder, name) for name in self._fields)
      specs = jax.tree_util.tree_map(
          lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.result_type(x)), (params, tokens, rng)
      )
      exported = jax.export.export(jax.jit(self._decode_with))(*specs)
      _write_atomically(path, exported.serialize())
    self._calls[key] = jax.jit(exported.call)
    return self._calls[key]

  def decode(self, encoder_input_tokens: Array, rng: Array) -> decoders.Hypotheses:
    tokens = jnp.asarray(encoder_input_tokens)
    program = self._program(tokens, rng)
    params = tuple(getattr(self.decoder, name) for name in self._fields)
    return decoders.Hypotheses(*program(params, tokens, rng))


def _write_atomically(path: str, data: bytes | bytearray) -> None:
  """Writes `data` to `path` through a temporary file in the same directory and a rename, so
  that a reader (another process) never sees a partial program."""
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  handle, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
  try:
    with os.fdopen(handle, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
