"""Tests for padir_t5x.data.metrics: BLEU/chrF against sacrebleu, stutter, BLEURT errors."""

import pytest
import sacrebleu

from padir_t5x.data import metrics

REFS = ["The cat sat on the mat.", "He bought forty-two red apples today.", "Very very good."]
HYPS = ["The cat sat on the the mat.", "He bought forty two apples today.", "Very very good."]


def test_bleu_matches_sacrebleu():
  result = metrics.make_bleu_metric("en")(REFS, HYPS)
  expected = sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="13a")
  assert result["bleu"] == pytest.approx(expected.score)
  assert 0 < result["bleu"] < 100
  assert "tok:13a" in result["bleu_signature"].textdata
  assert result["bleu_signature"].textdata == metrics.bleu_signature("en")


def test_bleu_uses_zh_tokenizer_for_chinese():
  refs = ["我今天买了四十二个红苹果。", "猫坐在垫子上。"]
  hyps = ["我今天买了四十二个苹果。", "猫坐在垫子上。"]
  assert metrics.bleu_tokenizer("zh") == "zh"
  assert metrics.bleu_tokenizer("de") == "13a"
  result = metrics.make_bleu_metric("zh")(refs, hyps)
  zh = sacrebleu.corpus_bleu(hyps, [refs], tokenize="zh").score
  assert result["bleu"] == pytest.approx(zh)
  # The 13a tokenizer sees each unsegmented sentence as about one word: a different score.
  assert zh != pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a").score)
  assert "tok:zh" in metrics.bleu_signature("zh")


def test_chrf_matches_sacrebleu():
  assert metrics.chrf(REFS, HYPS)["chrf"] == pytest.approx(
      sacrebleu.corpus_chrf(HYPS, [REFS]).score
  )


def test_length_mismatch():
  with pytest.raises(ValueError, match="2 targets but 1 predictions"):
    metrics.chrf(["a", "b"], ["a"])


@pytest.mark.parametrize(
    "reference, prediction, repeats",
    [
        ("the cat sat", "the the cat sat", 1),  # One stutter.
        ("the cat sat", "the the the cat", 2),  # A triple is two repeats.
        ("very very good", "very very good", 0),  # Licensed by the reference.
        ("very very good", "very very very good", 1),  # One more than the reference has.
        ("a b a b", "a a b b", 2),  # Same words, but no repeats in the reference.
        ("the cat", "cat the cat", 0),  # Not adjacent: no stutter.
    ],
)
def test_stutter_counts(reference, prediction, repeats):
  assert metrics.stutter_counts(reference.split(), prediction.split()) == (
      repeats,
      len(prediction.split()),
  )


def test_stutter_rate_corpus():
  targets = ["the cat sat", "very very good"]
  predictions = ["the the cat sat", "very very good"]  # 1 repeat over 4 + 3 words.
  assert metrics.stutter_rate(targets, predictions) == {"stutter_rate": pytest.approx(1 / 7)}
  assert metrics.stutter_rate(["x"], [""]) == {"stutter_rate": 0.0}


def test_token_stutter_rate_strips_eos_and_pad():
  # Rows are [length] id arrays: PAD=0 removed, everything from EOS=1 on ignored.
  targets = [[5, 6, 7, 1, 0, 0], [8, 8, 9, 1, 0, 0]]
  predictions = [[5, 5, 6, 7, 1, 7], [8, 8, 9, 1, 9, 9]]
  # Row 1: one repeat (5 5) over 4 tokens; row 2: "8 8" licensed, "9 9" after EOS ignored.
  assert metrics.token_stutter_rate(targets, predictions) == pytest.approx(1 / 7)
  assert metrics.strip_ids([4, 0, 5, 1, 6]) == [4, 5]


def test_translation_metric_fns_keys():
  results = {}
  for fn in metrics.translation_metric_fns("en"):
    results.update(fn(REFS, HYPS))
  assert set(results) == {"bleu", "bleu_signature", "chrf", "stutter_rate"}
  assert results["stutter_rate"] == pytest.approx(1 / 16)  # "the the" over 7 + 6 + 3 words.


def test_bleurt_missing_package_or_checkpoint(tmp_path):
  try:
    import bleurt  # noqa: F401

    have_bleurt = True
  except ImportError:
    have_bleurt = False
  if have_bleurt:
    with pytest.raises(ValueError, match="checkpoint directory not found"):
      metrics.make_bleurt_metric(str(tmp_path / "missing"))
  else:
    with pytest.raises(
        ImportError, match=r"pip install git\+https://github.com/google-research/bleurt"
    ):
      metrics.make_bleurt_metric(str(tmp_path))
