"""Tests for padir_t5x.corpus, the embedded synthetic German->English corpus."""

import os

import pytest

from padir_t5x import corpus


@pytest.mark.parametrize(
    "n, german, english",
    [
        (2, "zwei", "two"),
        (17, "siebzehn", "seventeen"),
        (21, "einundzwanzig", "twenty-one"),
        (42, "zweiundvierzig", "forty-two"),
        (60, "sechzig", "sixty"),
        (101, "einhunderteins", "one hundred one"),
        (305, "dreihundertfünf", "three hundred five"),
        (342, "dreihundertzweiundvierzig", "three hundred forty-two"),
        (999, "neunhundertneunundneunzig", "nine hundred ninety-nine"),
    ],
)
def test_number_words(n, german, english):
  assert corpus.german_number(n) == german
  assert corpus.english_number(n) == english


def test_number_out_of_range():
  with pytest.raises(ValueError, match="1..999"):
    corpus.german_number(1000)


def test_generate_pairs_deterministic_and_distinct():
  a = corpus.generate_pairs(500, seed=3)
  assert a == corpus.generate_pairs(500, seed=3)
  assert a != corpus.generate_pairs(500, seed=4)
  assert len(a) == 500 and len({de for de, _ in a}) == 500
  assert all(len(en.split()) <= 20 for _, en in a)


def test_pairs_need_reordering_and_length_change():
  pairs = corpus.generate_pairs(2000, seed=0)
  # V2 inversion: "heute kaufe ich ..." <-> "today i buy ...".
  assert any(
      de.startswith("heute kaufe ich ") and en.startswith("today i buy ") for de, en in pairs
  )
  # Verb-final subordinate clause: the German verb is the last word.
  assert any(
      ", dass wir " in de and de.endswith(" kaufen.") and " that we buy " in en for de, en in pairs
  )
  # Modal: infinitive last in German, right after the modal in English.
  assert any(
      de.startswith("ich will ") and de.endswith(" kaufen.") and en.startswith("i want to buy ")
      for de, en in pairs
  )
  # Compound number words make English longer on average.
  assert sum(len(en.split()) for _, en in pairs) > 1.1 * sum(len(de.split()) for de, _ in pairs)


def test_write_corpus_disjoint_aligned(tmp_path):
  paths = corpus.write_corpus(str(tmp_path), num_train=300, num_validation=40, num_test=30, seed=5)
  sides = {}
  for split, expected in (("train", 300), ("validation", 40), ("test", 30)):
    de_path, en_path = paths[split]
    assert de_path == os.path.join(str(tmp_path), f"{split}.de")
    de = open(de_path, encoding="utf-8").read().splitlines()
    en = open(en_path, encoding="utf-8").read().splitlines()
    assert len(de) == len(en) == expected
    sides[split] = set(zip(de, en))
  assert not sides["train"] & sides["validation"]
  assert not sides["train"] & sides["test"]
  assert not sides["validation"] & sides["test"]
  assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_cli(tmp_path):
  corpus.main(
      [
          "--output_dir",
          str(tmp_path),
          "--num_train",
          "20",
          "--num_validation",
          "5",
          "--num_test",
          "5",
          "--seed",
          "2",
      ]
  )
  assert sorted(os.listdir(tmp_path)) == sorted(
      f"{s}.{l}" for s in ("train", "validation", "test") for l in ("de", "en")
  )
  first = open(tmp_path / "train.en", encoding="utf-8").readline().rstrip("\n")
  assert first == corpus.generate_pairs(30, seed=2)[0][1]
