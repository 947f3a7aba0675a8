"""Tests for padir_t5x.data.pipelines: validated parallel files, datasets, distilled shards."""

import json
import os

import pytest
import tensorflow as tf

from padir_t5x.data import pipelines, textio


def _write(path, data):
  with open(path, "wb") as f:
    f.write(data.encode("utf-8") if isinstance(data, str) else data)
  return str(path)


@pytest.fixture
def pair(tmp_path):
  src = _write(tmp_path / "a.de", "eins\tzwei\r\nhallo welt\nletzte zeile")
  tgt = _write(tmp_path / "a.en", "one\ttwo\nhello world\nlast line\n")
  return src, tgt


def test_read_parallel_files_keeps_tabs_and_handles_crlf(pair):
  assert textio.read_parallel_files(*pair) == [
      ("eins\tzwei", "one\ttwo"),
      ("hallo welt", "hello world"),
      ("letzte zeile", "last line"),
  ]


def test_only_newline_splits_lines(tmp_path):
  # Form feed and U+2028 are not line breaks here (str.splitlines would split on them).
  src = _write(tmp_path / "s", "a\x0cb\u2028c\n")
  tgt = _write(tmp_path / "t", "x\n")
  assert textio.read_parallel_files(src, tgt) == [("a\x0cb\u2028c", "x")]


def test_missing_file(tmp_path, pair):
  with pytest.raises(ValueError, match=r"corpus file not found: .*nope\.en") as info:
    textio.read_parallel_files(pair[0], str(tmp_path / "nope.en"))
  assert isinstance(info.value, FileNotFoundError)


def test_empty_file(tmp_path, pair):
  empty = _write(tmp_path / "empty.en", "")
  with pytest.raises(ValueError, match=r"corpus file is empty: .*empty\.en"):
    textio.read_parallel_files(pair[0], empty)


def test_line_count_mismatch(tmp_path, pair):
  short = _write(tmp_path / "short.en", "one\ntwo\n")
  with pytest.raises(
      ValueError,
      match=r"line counts differ: .*a\.de has 3 lines, .*short\.en "
      r"has 2; .*short\.en ends at line 2",
  ):
    textio.read_parallel_files(pair[0], short)


def test_invalid_utf8_names_file_and_line(tmp_path, pair):
  bad = _write(tmp_path / "bad.en", b"one\ntwo\nthr\xe9e\n")
  with pytest.raises(ValueError, match=r"bad\.en: line 3 is not valid UTF-8"):
    textio.read_parallel_files(pair[0], bad)


def test_empty_line(tmp_path, pair):
  holes = _write(tmp_path / "holes.en", "one\n  \nthree\n")
  with pytest.raises(ValueError, match=r"holes\.en: line 2 is empty"):
    textio.read_parallel_files(pair[0], holes)
  assert textio.read_parallel_files(pair[0], holes, allow_empty_lines=True)[1][1] == "  "


def test_parallel_text_dataset_matches_reader(pair):
  ds = pipelines.parallel_text_dataset(*pair)
  got = [(ex["inputs"].decode(), ex["targets"].decode()) for ex in ds.as_numpy_iterator()]
  assert got == textio.read_parallel_files(*pair)


def test_parallel_text_dataset_validates(tmp_path, pair):
  with pytest.raises(ValueError, match="nope"):
    pipelines.parallel_text_dataset(pair[0], str(tmp_path / "nope"))


def test_translate_pair_and_prepend_text():
  ds = tf.data.Dataset.from_tensor_slices({"de": ["hallo"], "en": ["hello"]})
  out = list(pipelines.translate_pair(ds, "en", "de").as_numpy_iterator())
  assert out == [{"inputs": b"hello", "targets": b"hallo"}]
  tagged = pipelines.prepend_text(pipelines.translate_pair(ds, "en", "de"), "<2de> ")
  assert next(tagged.as_numpy_iterator())["inputs"] == b"<2de> hello"


PAIRS = [(f"quelle {i}\tmit tab", f"target {i}\nwith newline") for i in range(10)]


def test_distilled_round_trip(tmp_path):
  paths = textio.write_distilled_shards(str(tmp_path), "train", PAIRS, num_shards=4)
  assert [os.path.basename(p) for p in paths] == [f"train.jsonl-0000{k}-of-00004" for k in range(4)]
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
  assert textio.read_distilled_shards(str(tmp_path), "train") == PAIRS
  ds = pipelines.distilled_dataset(str(tmp_path), "train")
  assert [(e["inputs"].decode(), e["targets"].decode()) for e in ds.as_numpy_iterator()] == PAIRS
  first = json.loads(open(paths[0], encoding="utf-8").readline())
  assert first == {"index": 0, "source": PAIRS[0][0], "target": PAIRS[0][1]}


def test_distilled_rewrite_removes_stale_shards(tmp_path):
  textio.write_distilled_shards(str(tmp_path), "train", PAIRS, num_shards=4)
  textio.write_distilled_shards(str(tmp_path), "train", PAIRS[:3], num_shards=2)
  assert sorted(os.listdir(tmp_path)) == [
      "train.jsonl-00000-of-00002",
      "train.jsonl-00001-of-00002",
  ]
  assert textio.read_distilled_shards(str(tmp_path), "train") == PAIRS[:3]


def test_distilled_missing_shards(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"no distilled shards 'train"):
    pipelines.distilled_dataset(str(tmp_path), "train")
  paths = textio.write_distilled_shards(str(tmp_path), "train", PAIRS, num_shards=3)
  os.remove(paths[1])
  with pytest.raises(ValueError, match=r"missing distilled shard\(s\): .*00001-of-00003"):
    textio.read_distilled_shards(str(tmp_path), "train")


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", r"line 2 is not valid JSON"),
        ('["a"]', r"line 2 is not a JSON object"),
        ('{"index": 1, "source": "a"}', r"line 2: field 'target' missing or not a str"),
        ('{"index": "1", "source": "a", "target": "b"}', r"line 2: field 'index' missing"),
        ('{"index": 5, "source": "a", "target": "b"}', r"line 2: index 5, expected 1"),
    ],
)
def test_distilled_bad_records(tmp_path, line, message):
  path = tmp_path / "dev.jsonl-00000-of-00001"
  _write(path, json.dumps({"index": 0, "source": "s", "target": "t"}) + "\n" + line + "\n")
  with pytest.raises(ValueError, match=r"dev\.jsonl-00000-of-00001: " + message):
    textio.read_distilled_shards(str(tmp_path), "dev")


# ---------------------------------------------------------------------------------------------
# Issue 15: over-long examples are counted and logged, not cut silently.
class _Feature:
  add_eos = True


def _token_dataset(lengths):
  return tf.data.Dataset.from_generator(
      lambda: ({"targets": list(range(4, n + 4)), "targets_pretokenized": "x"} for n in lengths),
      output_signature={
          "targets": tf.TensorSpec([None], tf.int32),
          "targets_pretokenized": tf.TensorSpec([], tf.string),
      },
  )


def test_count_truncated_logs_the_count_and_keeps_the_examples(capfd):
  # Feature length 5 with EOS: 4 tokens fit; the 9, 12 and 5-token examples are cut later.
  lengths = [3, 9, 2, 12, 4, 5]
  with pipelines.dataset_label("my_task validation"):
    dataset = pipelines.count_truncated(
        _token_dataset(lengths), {"targets": 5}, {"targets": _Feature()}
    )
  assert [len(x["targets"]) for x in dataset.as_numpy_iterator()] == lengths
  err = capfd.readouterr().err
  assert "my_task validation: 1 of 2 examples truncated to 5 target tokens" in err
  # The end of a finite dataset: the final count.
  assert "my_task validation: 3 of 6 examples truncated to 5 target tokens" in err


def test_count_truncated_is_silent_when_everything_fits(capfd):
  dataset = pipelines.count_truncated(
      _token_dataset([1, 2, 3]), {"targets": 8}, {"targets": _Feature()}, label="fits"
  )
  assert len(list(dataset.as_numpy_iterator())) == 3
  assert "truncated" not in capfd.readouterr().err
  # No sequence length (no trimming): the dataset itself comes back.
  plain = _token_dataset([1])
  assert pipelines.count_truncated(plain, None, {"targets": _Feature()}) is plain
