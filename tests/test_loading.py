"""loading.load: one loader for core checkpoints (T5X ones: tests/test_translate_t5x.py)."""

import dataclasses
import json

import numpy as np
import pytest

from padir_t5x.core import checkpoints
from padir_t5x.core import loading
from padir_t5x import vocab
from tests.test_benchmarks import save_tiny_checkpoints


@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory, tiny_vocab_path):
  directory = tmp_path_factory.mktemp("ckpt")
  import sentencepiece as spm

  size = spm.SentencePieceProcessor(model_file=tiny_vocab_path).get_piece_size()
  save_tiny_checkpoints(directory, tiny_vocab_path, size)
  return directory


def test_padir_checkpoint_gets_its_decoding_defaults_and_vocabulary_fields(tiny_checkpoints):
  path = tiny_checkpoints / "padir"
  meta = json.loads((path / "config.json").read_text())
  meta["decoding"] = {"length_beam": 2, "max_passes": 3}
  (path / "config.json").write_text(json.dumps(meta))
  loaded = loading.load(str(path))
  assert loaded.kind == "padir" and loaded.path == str(path)
  assert loaded.vocab_high == loaded.vocabulary.get_piece_size()
  assert (loaded.decoding.length_beam, loaded.decoding.max_passes) == (2, 3)  # recorded
  assert loaded.decoding.vocab_high == loaded.vocab_high  # from the vocabulary
  table = vocab.word_start_table(loaded.vocabulary)
  np.testing.assert_array_equal(loaded.decoding.word_starts.table, table)
  _, params, _ = checkpoints.load_checkpoint(str(path))
  flat = checkpoints._flatten(params)  # pylint: disable=protected-access
  assert flat.keys() == checkpoints._flatten(loaded.params).keys()  # pylint: disable=protected-access
  for key, value in checkpoints._flatten(loaded.params).items():  # pylint: disable=protected-access
    np.testing.assert_array_equal(value, flat[key])


def test_ar_checkpoint_has_no_decoding_config(tiny_checkpoints):
  loaded = loading.load(str(tiny_checkpoints / "ar"), kind="ar")
  assert loaded.kind == "ar" and loaded.decoding is None
  assert loaded.module.config.decoder_mode.value == "autoregressive"


def test_kind_mismatch_names_config_json(tiny_checkpoints):
  with pytest.raises(checkpoints.CheckpointError, match=r"ar/config.json: holds an AR model"):
    loading.load(str(tiny_checkpoints / "ar"), kind="padir")
  assert loading.checkpoint_kind(str(tiny_checkpoints / "padir")) == "padir"


def test_activation_dtype_is_applied_at_load(tiny_checkpoints):
  loaded = loading.load(str(tiny_checkpoints / "padir"), dtype="bfloat16")
  assert loaded.module.config.dtype == "bfloat16"


def test_check_same_vocabulary_names_both(tiny_checkpoints, quickstart_vocab_path):
  ar = loading.load(str(tiny_checkpoints / "ar"))
  padir = loading.load(str(tiny_checkpoints / "padir"))
  loading.check_same_vocabulary(ar, padir)  # the same file: no error
  import sentencepiece as spm

  other = dataclasses.replace(
      padir, vocabulary=spm.SentencePieceProcessor(model_file=quickstart_vocab_path)
  )
  with pytest.raises(checkpoints.CheckpointError, match="ar and .*padir have different"):
    loading.check_same_vocabulary(ar, other)
