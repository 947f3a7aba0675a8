"""Importing `tasks` registers every padir_* seqio task and mixture (safe to repeat).

Registered names (see tasks/wmt.py and tasks/quickstart.py):
  padir_wmt14_de_en, padir_wmt14_en_de, padir_wmt16_ro_en, padir_wmt16_en_ro,
  padir_wmt17_zh_en, padir_wmt17_en_zh; the same with suffix _distilled;
  mixtures padir_wmt14_de_en_both, padir_wmt16_ro_en_both, padir_wmt17_zh_en_both (and
  *_distilled_both); padir_wmt_all over padir_wmt_multi_{src}_{tgt};
  padir_quickstart_de_en (embedded synthetic corpus, no download);
  padir_shared_de_en (the real de-en text of $PADIR_DATA_DIR or ../shared/data; CPU-sized runs).
Your own files: tasks.own_corpus.register_parallel_corpus_task.
"""

from tasks import common, own_corpus, quickstart, shared_corpus, wmt
from tasks.own_corpus import register_parallel_corpus_task
from tasks.quickstart import ensure_quickstart_data

__all__ = [
    "common",
    "own_corpus",
    "quickstart",
    "shared_corpus",
    "wmt",
    "register_parallel_corpus_task",
    "ensure_quickstart_data",
    "WMT_NAMES",
    "QUICKSTART_NAME",
    "SHARED_NAME",
]

WMT_NAMES = wmt.register_wmt_tasks()
QUICKSTART_NAME = quickstart.register_quickstart_task()
SHARED_NAME = shared_corpus.register_shared_task()
