"""Tests for the seqio tasks in `tasks`: registration, TFDS (mocked), distilled, own corpora."""

import os
import shutil

import gin
import pytest
import seqio
import tensorflow_datasets as tfds

import padir_t5x
import tasks
from padir_t5x import corpus, vocab
from padir_t5x.data import textio
from tasks import common, own_corpus, quickstart, shared_corpus

LENGTHS = {"inputs": 32, "targets": 32}
DIRECTIONS = ["de_en", "en_de", "ro_en", "en_ro", "zh_en", "en_zh"]
YEAR = {"de": 14, "ro": 16, "zh": 17}


def _first(dataset, n=2):
  return list(dataset.take(n).as_numpy_iterator())


@pytest.fixture
def vocab_dir(tmp_path, monkeypatch, tiny_vocab_path):
  """A vocabulary directory holding the tiny model under every WMT vocabulary name."""
  for name in ("de_en", "ro_en", "zh_en", "wmt_all"):
    shutil.copy(tiny_vocab_path, tmp_path / f"{name}.32k.model")
  monkeypatch.setenv("PADIR_VOCAB_DIR", str(tmp_path))
  return tmp_path


def test_registered_names():
  names = set(seqio.TaskRegistry.names())
  for direction in DIRECTIONS:
    other = direction.replace("en", "").strip("_")
    base = f"padir_wmt{YEAR[other]}_{direction}"
    assert base in names and f"{base}_distilled" in names
    assert f"padir_wmt_multi_{direction}" in names
  mixtures = set(seqio.MixtureRegistry.names())
  assert {
      "padir_wmt14_de_en_both",
      "padir_wmt16_ro_en_both",
      "padir_wmt17_zh_en_both",
      "padir_wmt14_de_en_distilled_both",
      "padir_wmt_all",
  } <= mixtures
  assert len(seqio.get_mixture_or_task("padir_wmt_all").tasks) == 6
  assert tasks.QUICKSTART_NAME == "padir_quickstart_de_en" in names
  # Registering again (re-import, repeated setup) is a no-op, not an error.
  assert tasks.wmt.register_wmt_tasks() == tasks.WMT_NAMES
  assert quickstart.register_quickstart_task() == "padir_quickstart_de_en"


def test_task_config():
  task = seqio.get_mixture_or_task("padir_wmt17_en_zh")
  assert task.source.tfds_dataset.name == "wmt17_translate/zh-en:1.0.0"
  assert all(f.add_eos for f in task.output_features.values())
  bleu = task.metric_fns[0](["我买了苹果。"], ["我买了苹果。"])
  assert "tok:zh" in bleu["bleu_signature"].textdata
  de = seqio.get_mixture_or_task("padir_wmt14_en_de").metric_fns[0](["a b"], ["a b"])
  assert "tok:13a" in de["bleu_signature"].textdata


def test_missing_vocabulary_message(tmp_path, monkeypatch):
  monkeypatch.setenv("PADIR_VOCAB_DIR", str(tmp_path))
  v = common.pair_vocabulary("de_en")  # Registration-time object: no file needed.
  with pytest.raises(FileNotFoundError, match=r"de_en\.32k\.model.*python -m padir_t5x\.vocab"):
    v.vocab_size


def test_vocab_dir_gin_binding(tmp_path, monkeypatch):
  monkeypatch.setenv("PADIR_VOCAB_DIR", "/from/env")
  assert common.padir_vocab_dir() == "/from/env"
  with gin.unlock_config():
    gin.bind_parameter("padir_vocab_dir.directory", str(tmp_path))
  try:
    assert common.padir_vocab_dir() == str(tmp_path)
  finally:
    gin.clear_config()


@pytest.mark.parametrize(
    "name, source_word_key", [("padir_wmt14_en_de", "en"), ("padir_wmt17_zh_en", "zh")]
)
def test_tfds_task_mocked(vocab_dir, name, source_word_key):
  task = seqio.get_mixture_or_task(name)
  with tfds.testing.mock_data(num_examples=4):
    examples = _first(
        task.get_dataset(LENGTHS, split="validation", shuffle=False, try_in_mem_cache=False)
    )
  assert len(examples) == 2
  for ex in examples:
    assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1  # EOS appended.
    assert ex["inputs_pretokenized"] and ex["targets_pretokenized"]


def test_mixtures_mocked(vocab_dir):
  with tfds.testing.mock_data(num_examples=4):
    both = seqio.get_mixture_or_task("padir_wmt16_ro_en_both")
    assert (
        len(
            _first(
                both.get_dataset(LENGTHS, split="train", shuffle=False, try_in_mem_cache=False), 4
            )
        )
        == 4
    )
    multi = seqio.get_mixture_or_task("padir_wmt_multi_en_ro")
    ex = _first(multi.get_dataset(LENGTHS, split="test", shuffle=False, try_in_mem_cache=False), 1)[
        0
    ]
    assert ex["inputs_pretokenized"].startswith(b"<2ro> ")


def test_distilled_task(vocab_dir, tmp_path, monkeypatch):
  pairs = corpus.generate_pairs(10, seed=9)
  textio.write_distilled_shards(
      str(tmp_path / "distilled" / "wmt14_de_en"), "train", pairs, num_shards=3
  )
  task = seqio.get_mixture_or_task("padir_wmt14_de_en_distilled")
  monkeypatch.delenv("PADIR_DISTILLED_DIR", raising=False)
  with pytest.raises(ValueError, match="PADIR_DISTILLED_DIR"):
    task.get_dataset(LENGTHS, split="train", shuffle=False)
  monkeypatch.setenv("PADIR_DISTILLED_DIR", str(tmp_path / "distilled"))
  examples = list(task.get_dataset(LENGTHS, split="train", shuffle=False).as_numpy_iterator())
  assert [
      (e["inputs_pretokenized"].decode(), e["targets_pretokenized"].decode()) for e in examples
  ] == pairs
  with tfds.testing.mock_data(num_examples=3):  # Validation: original TFDS references.
    assert (
        len(
            _first(
                task.get_dataset(
                    LENGTHS, split="validation", shuffle=False, try_in_mem_cache=False
                ),
                5,
            )
        )
        == 3
    )


@pytest.fixture
def own_files(tmp_path):
  return corpus.write_corpus(
      str(tmp_path / "own"), num_train=50, num_validation=10, num_test=5, seed=4
  )


def test_own_corpus_task(own_files, tiny_vocab_path):
  name = own_corpus.register_parallel_corpus_task(
      "test_own_de_en",
      train=own_files["train"],
      validation=own_files["validation"],
      source_language="de",
      target_language="en",
      vocabulary_path=tiny_vocab_path,
  )
  task = seqio.get_mixture_or_task(name)
  assert set(task.splits) == {"train", "validation"}
  assert task.num_input_examples("validation") == 10
  examples = list(task.get_dataset(LENGTHS, split="validation", shuffle=False).as_numpy_iterator())
  de = open(own_files["validation"][0], encoding="utf-8").read().splitlines()
  assert [e["inputs_pretokenized"].decode() for e in examples] == de
  # Same call again: no-op; other configuration under the same name: clear error.
  assert (
      tasks.register_parallel_corpus_task(
          "test_own_de_en",
          train=own_files["train"],
          validation=own_files["validation"],
          source_language="de",
          target_language="en",
          vocabulary_path=tiny_vocab_path,
      )
      == name
  )
  with pytest.raises(ValueError, match="registered already"):
    own_corpus.register_parallel_corpus_task(
        "test_own_de_en", train=own_files["test"], vocabulary_path=tiny_vocab_path
    )
  own_corpus.register_parallel_corpus_task(
      "test_own_de_en", train=own_files["test"], vocabulary_path=tiny_vocab_path, overwrite=True
  )
  assert list(seqio.get_mixture_or_task(name).splits) == ["train"]
  # The vocabulary builder reads a registered task's raw text.
  sentences = list(vocab.task_sentences(name))
  assert len(sentences) == 10


@pytest.mark.parametrize(
    "make_bad, message",
    [
        (lambda d: str(d / "missing.en"), r"corpus file not found: .*missing\.en"),
        (lambda d: _write(d / "empty.en", b""), r"corpus file is empty: .*empty\.en"),
        (lambda d: _write(d / "short.en", b"one\n"), r"line counts differ"),
        (lambda d: _write(d / "bad.en", b"a\nb\n\xff\n"), r"bad\.en: line 3 is not valid UTF-8"),
    ],
)
def test_own_corpus_bad_files_fail_at_registration(
    tmp_path, own_files, tiny_vocab_path, make_bad, message
):
  bad = make_bad(tmp_path)
  with pytest.raises(ValueError, match=message):
    own_corpus.register_parallel_corpus_task(
        "test_bad_files",
        train=own_files["train"],
        validation=(own_files["test"][0], bad),
        vocabulary_path=tiny_vocab_path,
    )
  assert "test_bad_files" not in seqio.TaskRegistry.names()


def _write(path, data):
  path.write_bytes(data)
  return str(path)


def test_own_corpus_via_gin(own_files, tiny_vocab_path):
  config = f"""
        register_parallel_corpus_task.name = "test_gin_de_en"
        register_parallel_corpus_task.train = {tuple(own_files['train'])!r}
        register_parallel_corpus_task.vocabulary_path = {tiny_vocab_path!r}
        register_parallel_corpus_task.target_language = "en"
    """
  with gin.unlock_config():
    gin.parse_config(config)
  try:
    assert own_corpus.register_parallel_corpus_task() == "test_gin_de_en"
  finally:
    gin.clear_config()
  assert seqio.get_mixture_or_task("test_gin_de_en").num_input_examples("train") == 50


@pytest.mark.parametrize("pair, src, tgt", [("ro-en", "ro", "en"), ("zh-en", "en", "zh")])
def test_own_corpus_on_real_data(data_dir, tiny_vocab_path, pair, src, tgt):
  files = tuple(os.path.join(data_dir, pair, f"dev.{lang}") for lang in (src, tgt))
  name = own_corpus.register_parallel_corpus_task(
      f"test_real_{src}_{tgt}",
      validation=files,
      source_language=src,
      target_language=tgt,
      vocabulary_path=tiny_vocab_path,
  )
  task = seqio.get_mixture_or_task(name)
  lines = textio.read_parallel_files(*files)
  assert task.num_input_examples("validation") == len(lines) > 1000
  examples = _first(task.get_dataset(LENGTHS, split="validation", shuffle=False), 3)
  assert [e["targets_pretokenized"].decode() for e in examples] == [t for _, t in lines[:3]]
  signature = task.metric_fns[0](["a"], ["a"])["bleu_signature"].textdata
  assert ("tok:zh" in signature) == (tgt == "zh")


def test_quickstart(tmp_path, monkeypatch):
  monkeypatch.setenv("PADIR_CACHE_DIR", str(tmp_path / "cache"))
  data_dir, vocab_path = tasks.ensure_quickstart_data()
  assert data_dir == str(tmp_path / "cache" / "quickstart" / quickstart.QUICKSTART_VERSION)
  assert (data_dir, vocab_path) == tasks.ensure_quickstart_data()  # Cached: same paths.
  config = quickstart.QUICKSTART_CONFIG
  train_en = open(os.path.join(data_dir, "train.en"), encoding="utf-8").read().splitlines()
  assert len(train_en) == config["num_train"]
  assert train_en[0] == corpus.generate_pairs(1, seed=config["seed"])[0][1]
  v = vocab.load_vocabulary(vocab_path)
  assert v.vocab_size == config["vocab_size"]
  assert v.tokenizer.piece_to_id("<mask>") == 3
  assert not [p for p in os.listdir(os.path.dirname(data_dir)) if p.startswith(".building")]

  task = seqio.get_mixture_or_task("padir_quickstart_de_en")
  ex = _first(task.get_dataset({"inputs": 64, "targets": 64}, split="test", shuffle=False), 1)[0]
  test_en = open(os.path.join(data_dir, "test.en"), encoding="utf-8").readline().strip()
  assert ex["targets_pretokenized"].decode() == test_en
  assert task.output_features["targets"].vocabulary.decode(ex["targets"].tolist()) == test_en


def test_quickstart_replaces_incomplete_cache(tmp_path):
  directory = quickstart.quickstart_dir(str(tmp_path))
  os.makedirs(directory)
  open(os.path.join(directory, "train.de"), "w").close()  # Interrupted build: no stamp.
  data_dir, vocab_path = quickstart.ensure_quickstart_data(str(tmp_path))
  assert data_dir == directory and os.path.exists(vocab_path)
  assert os.path.getsize(os.path.join(data_dir, "train.de")) > 0


def _write_shared_layout(root, pairs_by_stem):
  directory = root / "de-en"
  directory.mkdir(parents=True)
  for stem, pairs in pairs_by_stem.items():
    (directory / f"{stem}.de").write_text("".join(d + "\n" for d, _ in pairs), encoding="utf-8")
    (directory / f"{stem}.en").write_text("".join(e + "\n" for _, e in pairs), encoding="utf-8")
  return directory


def test_shared_task_reads_the_data_dir_and_builds_its_vocabulary(tmp_path, monkeypatch):
  pairs = corpus.generate_pairs(700, seed=3)
  _write_shared_layout(
      tmp_path / "data", {"train": pairs[:500], "dev-multi30k": pairs[500:600], "dev": pairs[600:]}
  )
  monkeypatch.setenv("PADIR_DATA_DIR", str(tmp_path / "data"))
  monkeypatch.setenv("PADIR_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(shared_corpus, "VOCAB_SIZE", 150)  # the synthetic text is small
  assert "padir_shared_de_en" in seqio.TaskRegistry.names()
  task = seqio.get_mixture_or_task("padir_shared_de_en")
  for split, first in (("train", pairs[0]), ("validation", pairs[500]), ("test", pairs[600])):
    ex = _first(task.get_dataset({"inputs": 64, "targets": 64}, split=split, shuffle=False), 1)[0]
    assert (ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode()) == first
    assert ex["targets"][-1] == padir_t5x.EOS_ID
    assert task.output_features["targets"].vocabulary.decode(ex["targets"].tolist()) == first[1]
  # Built from both sides of train.{de,en}, cached under $PADIR_CACHE_DIR/shared.
  model = tmp_path / "cache" / "shared" / "de_en.150.model"
  assert shared_corpus.vocabulary_path() == str(model) and model.exists()
  assert vocab.model_vocab_size(str(model)) == 150


def test_shared_task_errors_name_the_problem(tmp_path, monkeypatch):
  monkeypatch.setattr(shared_corpus.shared_data, "find_data_dir", lambda: None)
  with pytest.raises(FileNotFoundError, match="set \\$PADIR_DATA_DIR"):
    shared_corpus.vocabulary_path()
  pairs = corpus.generate_pairs(20, seed=3)
  directory = _write_shared_layout(tmp_path / "data", {"dev-multi30k": pairs})
  with open(directory / "dev-multi30k.en", "a", encoding="utf-8") as f:
    f.write("one line too many\n")
  monkeypatch.setattr(shared_corpus.shared_data, "find_data_dir", lambda: str(tmp_path / "data"))
  with pytest.raises(textio.CorpusFileError, match="dev-multi30k"):
    shared_corpus._dataset_fn("validation", shuffle_files=False)


def test_overlong_example_is_counted_per_split(tmp_path, tiny_vocab_path, capfd):
  """Issue 15: a 2,000-word line is cut to the feature length, and the log says so."""
  sources = ["ein kurzer satz", " ".join(["wort"] * 2000), "noch einer"]
  targets = ["a short sentence", "one", " ".join(["word"] * 2000)]
  (tmp_path / "t.de").write_text("".join(s + "\n" for s in sources))
  (tmp_path / "t.en").write_text("".join(t + "\n" for t in targets))
  name = own_corpus.register_parallel_corpus_task(
      "padir_test_overlong",
      validation=(str(tmp_path / "t.de"), str(tmp_path / "t.en")),
      vocabulary_path=tiny_vocab_path,
      overwrite=True,
  )
  try:
    task = seqio.get_mixture_or_task(name)
    examples = list(
        task.get_dataset(
            {"inputs": 16, "targets": 16}, split="validation", shuffle=False
        ).as_numpy_iterator()
    )
    assert [len(ex["targets"]) for ex in examples][2] == 16  # cut, with EOS last
    err = capfd.readouterr().err
    assert "padir_test_overlong validation: 1 of 2 examples truncated to 16 input tokens" in err
    assert "padir_test_overlong validation: 1 of 3 examples truncated to 16 input tokens" in err
    assert "padir_test_overlong validation: 1 of 3 examples truncated to 16 target tokens" in err
  finally:
    seqio.TaskRegistry.remove(name)


def test_the_suite_uses_a_temporary_cache(isolated_cache_dir):
  """Issue 15: no test reads or writes the user's ~/.cache (tests/conftest.py)."""
  home_cache = os.path.join(os.path.expanduser("~"), ".cache")
  for directory in (
      common.padir_cache_dir(),
      common.padir_vocab_dir(),
      quickstart.quickstart_dir(),
      os.environ["XDG_CACHE_HOME"],
  ):
    assert directory.startswith(isolated_cache_dir) and not directory.startswith(home_cache)
  data_dir, vocab_path = tasks.ensure_quickstart_data()
  assert data_dir.startswith(isolated_cache_dir) and vocab_path.startswith(isolated_cache_dir)
