"""WMT14 en-de, WMT16 en-ro and WMT17 en-zh tasks (raw and distilled) and their mixtures.

Data come from TFDS (`wmt14_translate/de-en`, `wmt16_translate/ro-en`, `wmt17_translate/zh-en`,
all version 1.0.0); build them once with `tfds build` or let TFDS download on first use. The
TFDS builders' splits are used as they are:

| pair  | train               | validation    | test          |
|-------|---------------------|---------------|---------------|
| de-en | WMT14 training data | newstest2013  | newstest2014  |
| ro-en | WMT16 training data | newsdev2016   | newstest2016  |
| zh-en | WMT17 training data | newsdev2017   | newstest2017  |

(The builders list more dev/test sets, e.g. newsdev2014 or newstestB2017, but those exist only
for other language pairs, so TFDS drops them for these pairs.)

Names (src_tgt is one of de_en, en_de, ro_en, en_ro, zh_en, en_zh):

* padir_wmt{14,16,17}_{src}_{tgt}: raw TFDS data, vocabulary {pair}.32k.model (pair = de_en,
  ro_en or zh_en, shared by both directions).
* padir_wmt{..}_{src}_{tgt}_distilled: training targets from an autoregressive teacher, read
  from `{distilled dir}/wmt{..}_{src}_{tgt}/train.jsonl-*-of-*`; validation and test stay the
  original TFDS references (distillation replaces training data only).
* padir_wmt{..}_{pair}_both, padir_wmt{..}_{pair}_distilled_both: both directions, equal rates.
* padir_wmt_all: the six directions with a shared vocabulary wmt_all.32k.model; its tasks
  (padir_wmt_multi_{src}_{tgt}) prefix the input with a target tag '<2de>' etc., because en->de
  and en->ro inputs look alike. Build its vocabulary with
  `--user_defined_symbols '<2de>,<2en>,<2ro>,<2zh>'` so that each tag is one piece.
"""

from __future__ import annotations

import functools

import seqio

from padir_t5x.data import pipelines
from tasks import common

# (year, tfds config, non-English language).
WMT_PAIRS = [(14, "de-en", "de"), (16, "ro-en", "ro"), (17, "zh-en", "zh")]
TFDS_VERSION = "1.0.0"
SPLITS = ("train", "validation", "test")
ALL_MIXTURE = "padir_wmt_all"


def tfds_name(year: int, config: str) -> str:
  return f"wmt{year}_translate/{config}:{TFDS_VERSION}"


def _tfds_source(year: int, config: str) -> seqio.TfdsDataSource:
  return seqio.TfdsDataSource(tfds_name=tfds_name(year, config), splits={s: s for s in SPLITS})


def _directions(other: str):
  return [(other, "en"), ("en", other)]


def _distilled_dataset_fn(
    split: str,
    shuffle_files: bool,
    seed: int | None = None,
    *,
    corpus: str,
    year: int,
    config: str,
    source_language: str,
    target_language: str,
):
  """Distilled shards for 'train'; the original TFDS references for other splits."""
  if split == "train":
    directory = f"{common.padir_distilled_dir()}/{corpus}"
    return pipelines.distilled_dataset(directory, split)
  dataset = _tfds_source(year, config).get_dataset(split=split, shuffle=shuffle_files, seed=seed)
  return pipelines.translate_pair(dataset, source_language, target_language)


def register_wmt_tasks() -> list[str]:
  """Registers every WMT task and mixture (idempotent); returns the registered names."""
  names = []
  multi_tasks = []
  multi_vocab = common.DeferredSentencePieceVocabulary("vocab_dir", "wmt_all.32k.model")
  for year, config, other in WMT_PAIRS:
    pair = f"{other}_en"
    vocabulary = common.pair_vocabulary(pair)
    raw_names, distilled_names = [], []
    for src, tgt in _directions(other):
      corpus = f"wmt{year}_{src}_{tgt}"
      raw = f"padir_{corpus}"
      common.add_task_once(
          functools.partial(
              common.make_task,
              raw,
              _tfds_source(year, config),
              vocabulary,
              tgt,
              [common.translate_preprocessor(src, tgt)],
          ),
          raw,
      )
      distilled = f"{raw}_distilled"
      source = seqio.FunctionDataSource(
          functools.partial(
              _distilled_dataset_fn,
              corpus=corpus,
              year=year,
              config=config,
              source_language=src,
              target_language=tgt,
          ),
          splits=SPLITS,
      )
      common.add_task_once(
          functools.partial(common.make_task, distilled, source, vocabulary, tgt), distilled
      )
      multi = f"padir_wmt_multi_{src}_{tgt}"
      common.add_task_once(
          functools.partial(
              common.make_task,
              multi,
              _tfds_source(year, config),
              multi_vocab,
              tgt,
              [
                  common.translate_preprocessor(src, tgt),
                  functools.partial(pipelines.prepend_text, prefix=common.language_tag(tgt) + " "),
              ],
          ),
          multi,
      )
      raw_names.append(raw)
      distilled_names.append(distilled)
      multi_tasks.append(multi)
    both = f"padir_wmt{year}_{pair}_both"
    common.add_mixture_once(both, raw_names)
    common.add_mixture_once(f"padir_wmt{year}_{pair}_distilled_both", distilled_names)
    names += raw_names + distilled_names + [both, f"padir_wmt{year}_{pair}_distilled_both"]
  names += multi_tasks
  # Equal rates: simple and predictable; rebalance with your own mixture if needed.
  common.add_mixture_once(ALL_MIXTURE, multi_tasks)
  names.append(ALL_MIXTURE)
  return names
