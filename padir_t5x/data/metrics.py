"""Translation metrics as seqio metric functions: fn(targets, predictions) -> dict.

* BLEU and chrF via sacrebleu (corpus level, one reference). BLEU uses the 'zh' tokenizer when
  the target language is Chinese and '13a' otherwise, as in the WMT papers.
* Stutter rate: how often the output repeats the previous word where the reference does not
  (the typical failure of non-autoregressive decoders).
* BLEURT, when the optional `bleurt` package and a checkpoint are available.

Inputs are corpus-aligned lists of decoded strings: targets[i] is the reference for
predictions[i].
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterable, Sequence

import sacrebleu

from padir_t5x import EOS_ID, PAD_ID

MetricFn = Callable[[Sequence[str], Sequence[str]], dict[str, object]]


def bleu_tokenizer(target_language: str) -> str:
  """sacrebleu tokenizer for a target language code: 'zh' for Chinese, else '13a'."""
  return "zh" if target_language.lower().split("-")[0] in ("zh", "cmn") else "13a"


def _check_lengths(targets: Sequence[str], predictions: Sequence[str]) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")


def _bleu(target_language: str):
  return sacrebleu.metrics.BLEU(tokenize=bleu_tokenizer(target_language))


def bleu_signature(target_language: str = "en") -> str:
  """sacrebleu's signature for the BLEU configuration used for `target_language`.

  E.g. 'nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0'.
  """
  metric = _bleu(target_language)
  # sacrebleu only knows the number of references after scoring something.
  metric.corpus_score(["x"], [["x"]])
  return str(metric.get_signature())


def corpus_bleu(targets: Sequence[str], predictions: Sequence[str], target_language: str = "en"):
  """Corpus SacreBLEU (one reference per prediction, the language's tokenizer) as a float."""
  _check_lengths(targets, predictions)
  return float(_bleu(target_language).corpus_score(list(predictions), [list(targets)]).score)


def make_bleu_metric(target_language: str = "en") -> MetricFn:
  """Returns a seqio metric fn giving {'bleu': float, 'bleu_signature': seqio Text}."""

  def bleu(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, object]:
    _check_lengths(targets, predictions)
    metric = _bleu(target_language)
    score = metric.corpus_score(list(predictions), [list(targets)]).score
    # seqio's loggers write metrics_lib.Text values to TensorBoard and the JSON log, so the
    # signature travels with every reported score.
    import seqio

    return {
        "bleu": score,
        "bleu_signature": seqio.metrics.Text(textdata=str(metric.get_signature())),
    }

  bleu.__name__ = f"bleu_{target_language}"
  return bleu


def chrf(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Corpus chrF (sacrebleu defaults: char order 6, beta 2) -> {'chrf': float}."""
  _check_lengths(targets, predictions)
  return {"chrf": sacrebleu.metrics.CHRF().corpus_score(list(predictions), [list(targets)]).score}


# ---------------------------------------------------------------------------------------------
# Stutter.
def _adjacent_repeats(tokens: Sequence) -> collections.Counter:
  """Counter of tokens t over positions i >= 1 with tokens[i] == tokens[i-1] == t."""
  return collections.Counter(b for a, b in zip(tokens, tokens[1:]) if a == b)


def stutter_counts(reference: Sequence, prediction: Sequence) -> tuple[int, int]:
  """(unexplained repeats, prediction length) for one sentence given as token sequences.

  A repeat is a position i >= 1 of the prediction with prediction[i] == prediction[i-1]. For
  each token t, the first r_t repeats of t are explained by the reference, where r_t is the
  number of repeats of t in the reference ("very very" in the reference licenses one "very
  very" in the output, wherever it occurs); the rest count as stutter. So "the the cat" vs
  reference "the cat" gives 1 and "very very good" vs reference "very very good" gives 0.
  """
  pred_repeats = _adjacent_repeats(prediction)
  ref_repeats = _adjacent_repeats(reference)
  unexplained = sum(max(0, n - ref_repeats.get(t, 0)) for t, n in pred_repeats.items())
  return unexplained, len(prediction)


def stutter_rate_from_tokens(
    references: Iterable[Sequence], predictions: Iterable[Sequence]
) -> float:
  """Corpus stutter rate: sum of unexplained repeats / sum of prediction lengths (0 if empty)."""
  total_repeats = total_length = 0
  references, predictions = list(references), list(predictions)
  if len(references) != len(predictions):
    raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
  for reference, prediction in zip(references, predictions):
    repeats, length = stutter_counts(reference, prediction)
    total_repeats += repeats
    total_length += length
  return total_repeats / total_length if total_length else 0.0


def stutter_rate(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Word-level stutter (seqio metric fn): words are whitespace-separated, compared exactly.

  A repeat is a whole word equal to the word before it (the unit of DecodingConfig's
  stutter_unit='word'); equal pieces inside a word ("apples" = `▁a p p le s`) never count.
  `token_stutter_rate` counts repeated pieces instead.

  Returns {'stutter_rate': fraction in [0, 1]} (see `stutter_counts`).
  """
  _check_lengths(targets, predictions)
  return {
      "stutter_rate": stutter_rate_from_tokens(
          [t.split() for t in targets], [p.split() for p in predictions]
      )
  }


def strip_ids(ids: Sequence[int]) -> list[int]:
  """Token ids up to the first EOS, with PAD removed (model outputs are padded)."""
  out = []
  for i in ids:
    i = int(i)
    if i == EOS_ID:
      break
    if i != PAD_ID:
      out.append(i)
  return out


def token_stutter_rate(
    target_ids: Iterable[Sequence[int]], prediction_ids: Iterable[Sequence[int]]
) -> float:
  """Token-level stutter rate on id sequences ([batch, length] arrays or lists).

  Each row is cut at its first EOS and stripped of PAD before counting (see `stutter_counts`).
  """
  return stutter_rate_from_tokens(
      [strip_ids(t) for t in target_ids], [strip_ids(p) for p in prediction_ids]
  )


# ---------------------------------------------------------------------------------------------
# BLEURT.
BLEURT_INSTALL_HINT = (
    "BLEURT needs the `bleurt` package (pip install "
    "git+https://github.com/google-research/bleurt, or the padir-t5x[bleurt] "
    "extra) and a downloaded checkpoint directory, e.g. BLEURT-20 from "
    "https://github.com/google-research/bleurt/blob/master/checkpoints.md"
)


def make_bleurt_metric(checkpoint: str | None, batch_size: int = 64) -> MetricFn:
  """Returns a seqio metric fn giving {'bleurt': mean BLEURT score}.

  Checks at configuration time (here, not at the first evaluation hours later) that the
  package imports and the checkpoint directory exists; raises ImportError / ValueError with
  install instructions otherwise. The scorer itself is built lazily on first use.
  """
  try:
    from bleurt import score as bleurt_score  # pytype: disable=import-error
  except ImportError as e:
    raise ImportError(f"{BLEURT_INSTALL_HINT}. Import failed: {e}") from None
  if not checkpoint or not os.path.isdir(checkpoint):
    raise ValueError(
        f"BLEURT checkpoint directory not found: {checkpoint!r}. " f"{BLEURT_INSTALL_HINT}"
    )
  scorer = []

  def bleurt(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    _check_lengths(targets, predictions)
    if not scorer:
      scorer.append(bleurt_score.BleurtScorer(checkpoint))
    scores = scorer[0].score(
        references=list(targets), candidates=list(predictions), batch_size=batch_size
    )
    return {"bleurt": float(sum(scores) / len(scores)) if scores else 0.0}

  return bleurt


def translation_metric_fns(target_language: str) -> list[MetricFn]:
  """The default metric fns of every padir task: BLEU (right tokenizer), chrF, stutter."""
  return [make_bleu_metric(target_language), chrf, stutter_rate]
