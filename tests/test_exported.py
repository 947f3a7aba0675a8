"""Exported decode programs (padir_t5x/decoders/exported.py): the same hypotheses as the decoder
they wrap, written once per input shape, read back by a later instance without tracing, and
keyed on everything that shapes the program."""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from padir_t5x.core import layout
from padir_t5x.decoders import decoders
from padir_t5x.decoders import draft_verify
from padir_t5x.decoders import drafters
from padir_t5x.decoders import exported
from test_draft_verify import AR, PADIR, VOCAB_HIGH, _decoding, _params, _sources


def _built():
  ar_params, padir_params = _params(AR, 1, eos_scale=3.0), _params(PADIR, 2)
  return {
      "padir": decoders.PadirDecoder(PADIR, padir_params, config=_decoding()),
      "beam": decoders.ArBeamDecoder(AR, ar_params, beam_size=3, vocab_high=VOCAB_HIGH),
      "greedy": decoders.ArGreedyDecoder(AR, ar_params, vocab_high=VOCAB_HIGH),
  }


def _equal(a: decoders.Hypotheses, b: decoders.Hypotheses) -> bool:
  fields = ("sequences", "scores", "lengths", "steps")
  pairs = [(getattr(a, f), getattr(b, f)) for f in fields]
  return all(
      (x is None and y is None) or np.array_equal(np.asarray(x), np.asarray(y)) for x, y in pairs
  )


@pytest.mark.parametrize("name", ["padir", "beam", "greedy"])
def test_exported_decode_equals_the_decoder_and_is_read_back_untraced(name, tmp_path, monkeypatch):
  decoder = _built()[name]
  sources, rng = _sources(0), jax.random.PRNGKey(3)
  plain = decoder.decode(sources, rng)
  first = exported.ExportedDecoder(decoder, str(tmp_path))
  assert _equal(first.decode(sources, rng), plain)
  files = sorted(os.listdir(tmp_path))
  assert files == [os.path.basename(first.path(sources.shape))]

  # A new instance (as a new process would) reads the file: no export, and the load is timed.
  def no_export(*args, **kwargs):
    raise AssertionError("exported again instead of reading the stored program")

  monkeypatch.setattr(jax.export, "export", no_export)
  loads = []
  second = exported.ExportedDecoder(
      decoder, str(tmp_path), on_load=lambda a, b: loads.append(b - a)
  )
  assert _equal(second.decode(sources, rng), plain)
  assert len(loads) == 1 and sorted(os.listdir(tmp_path)) == files
  # Other parameters (same shapes) go through the same program, as arguments.
  other = dataclasses.replace(decoder, params=_params(PADIR if name == "padir" else AR, 7))
  assert _equal(
      exported.ExportedDecoder(other, str(tmp_path)).decode(sources, rng),
      other.decode(sources, rng),
  )


def test_a_new_shape_is_a_new_program_and_a_damaged_file_is_replaced(tmp_path):
  decoder = _built()["padir"]
  wrapped = exported.ExportedDecoder(decoder, str(tmp_path))
  rng = jax.random.PRNGKey(0)
  sources = _sources(0)
  wrapped.decode(sources, rng)
  wrapped.decode(sources[:1], rng)
  assert len(os.listdir(tmp_path)) == 2
  path = wrapped.path(sources.shape)
  with open(path, "wb") as f:
    f.write(b"not a program")
  fresh = exported.ExportedDecoder(decoder, str(tmp_path))
  assert _equal(fresh.decode(sources, rng), decoder.decode(sources, rng))
  assert os.path.getsize(path) > 100  # exported again over the damaged file
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_the_key_follows_settings_parameters_and_shape():
  decoder = _built()["padir"]
  key = exported.program_key(decoder, (2, 8), np.int32)
  assert exported.program_key(dataclasses.replace(decoder), (2, 8), np.int32) == key
  assert exported.program_key(decoder, (2, 16), np.int32) != key
  changed = dataclasses.replace(decoder, config=dataclasses.replace(decoder.config, max_passes=1))
  assert exported.program_key(changed, (2, 8), np.int32) != key
  smaller = jax.tree_util.tree_map(lambda x: x[..., :1], decoder.params)
  assert exported.program_key(dataclasses.replace(decoder, params=smaller), (2, 8), np.int32) != key
  # Same values, new parameters: the same program.
  doubled = jax.tree_util.tree_map(lambda x: 2 * x, decoder.params)
  assert exported.program_key(dataclasses.replace(decoder, params=doubled), (2, 8), np.int32) == key


def test_describe_reads_contents_not_addresses():
  one = layout.WordStarts(np.array([True, False, True]))
  other = layout.WordStarts(np.array([True, True, False]))  # the same counts as `one`
  assert exported.describe(one) != exported.describe(other)
  assert exported.describe(one) == exported.describe(
      layout.WordStarts(np.array([True, False, True]))
  )
  assert "0x" not in exported.describe(_built()["padir"])
  assert "0x" not in exported.describe(lambda x: x)


def test_the_key_is_the_same_in_another_process():
  """Python's str hashes and object addresses change per process; the key must not."""
  code = (
      "import sys; sys.path.insert(0, 'tests'); import numpy as np;"
      "from test_exported import _built; from padir_t5x.decoders import exported;"
      "print(exported.program_key(_built()['padir'], (2, 8), np.int32))"
  )
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  keys = {
      subprocess.run(
          [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
      ).stdout.strip()
      for _ in range(2)
  }
  assert keys == {exported.program_key(_built()["padir"], (2, 8), np.int32)}


def test_draft_verify_is_exported_with_both_parameter_sets(tmp_path):
  """Draft-and-verify holds two parameter sets (drafter_params, verifier_params): both are
  arguments of its program, and its output is the plain decoder's."""
  config = draft_verify.DraftVerifyConfig(_decoding())
  decoder = decoders.DraftVerifyDecoder(
      drafters.PadirDrafter(PADIR), _params(PADIR, 2), AR, _params(AR, 1, eos_scale=3.0), config
  )
  assert exported.exportable(decoder)
  sources, rng = _sources(0), jax.random.PRNGKey(1)
  wrapped = exported.ExportedDecoder(decoder, str(tmp_path))
  assert _equal(wrapped.decode(sources, rng), decoder.decode(sources, rng))
  assert wrapped._fields == ("drafter_params", "verifier_params")


def test_a_decoder_of_another_kind_is_refused():
  with pytest.raises(TypeError, match="str is not one jitted program"):
    exported.ExportedDecoder("not a decoder", "unused")
