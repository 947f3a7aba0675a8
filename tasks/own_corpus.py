"""Tasks on your own line-aligned parallel text files, in one call (Python or gin).

Python:

    from tasks.own_corpus import register_parallel_corpus_task
    register_parallel_corpus_task(
        "my_de_en", train=("data/train.de", "data/train.en"),
        validation=("data/dev.de", "data/dev.en"), source_language="de", target_language="en",
        vocabulary_path="vocab/my_de_en.model")

gin (the call returns the task name, so it can feed MIXTURE_OR_TASK_NAME directly):

    import tasks
    register_parallel_corpus_task.name = "my_de_en"
    register_parallel_corpus_task.train = ("data/train.de", "data/train.en")
    ...
    MIXTURE_OR_TASK_NAME = @register_parallel_corpus_task()

The files are validated at once (missing or empty file, invalid UTF-8, empty line, differing line
counts -> textio.CorpusFileError naming the file and line). The vocabulary file is not needed
until data are tokenized, so you can register first and then build it: put the Python call above
in a module of yours, say `my_tasks.py` in the current directory, and pass it with `--module`,
which imports it before the task is looked up:

    python -m padir_t5x.vocab --module my_tasks --task my_de_en --output_prefix vocab/my_de_en

(`python -m padir_t5x.em` and `python -m padir_t5x.distill` take `--module` with `--task` too.)
"""

from __future__ import annotations

import functools

import gin
import seqio

from padir_t5x.data import pipelines, textio
from padir_t5x import vocab
from tasks import common

FilePair = tuple[str, str]
# Name -> configuration of the tasks registered here, to make repeated identical calls no-ops
# (gin evaluates `@register_parallel_corpus_task()` wherever the macro is used).
_REGISTERED: dict[str, tuple] = {}


def _dataset_fn(split: str, shuffle_files: bool, seed: int | None = None, *, files):
  del shuffle_files, seed  # One file per side: nothing to shuffle at the file level.
  source_path, target_path = files[split]
  return pipelines.parallel_text_dataset(source_path, target_path, validate=False)


@gin.configurable
def register_parallel_corpus_task(
    name: str = gin.REQUIRED,
    train: FilePair | None = None,
    validation: FilePair | None = None,
    test: FilePair | None = None,
    source_language: str = "de",
    target_language: str = "en",
    vocabulary_path: str = gin.REQUIRED,
    extra_ids: int = 0,
    allow_empty_lines: bool = False,
    overwrite: bool = False,
) -> str:
  """Registers a seqio task reading (source file, target file) pairs per split.

  Args:
    name: task name.
    train, validation, test: (source path, target path) for each split to provide; at least
      one is required.
    source_language, target_language: language codes; the target picks the BLEU tokenizer
      ('zh' -> zh, else 13a).
    vocabulary_path: SentencePiece `.model` shared by inputs and targets (loaded lazily).
    extra_ids: sentinel ids appended to the vocabulary (seqio convention); PaDIR needs none.
    allow_empty_lines: accept empty lines instead of reporting them as errors.
    overwrite: replace a task of the same name registered with a different configuration.
  Returns:
    The task name (get the task with seqio.get_mixture_or_task(name)).
  """
  files = {
      split: tuple(pair)
      for split, pair in (("train", train), ("validation", validation), ("test", test))
      if pair is not None
  }
  if not files:
    raise ValueError(f"task {name!r}: give at least one of train, validation, test")
  for split, pair in files.items():
    if len(pair) != 2:
      raise ValueError(
          f"task {name!r}: {split} must be (source_path, target_path), " f"got {pair!r}"
      )
  config = (
      tuple(sorted(files.items())),
      source_language,
      target_language,
      vocabulary_path,
      extra_ids,
      allow_empty_lines,
  )
  if _REGISTERED.get(name) == config and name in seqio.TaskRegistry.names():
    return name
  if name in seqio.MixtureRegistry.names():
    raise ValueError(f"{name!r} is a registered mixture; pick another task name")
  if name in seqio.TaskRegistry.names():
    if not overwrite:
      raise ValueError(
          f"a task or mixture named {name!r} is registered already with "
          "another configuration; pick another name or pass overwrite=True"
      )
    seqio.TaskRegistry.remove(name)
  counts = {
      split: textio.validate_parallel_files(src, tgt, allow_empty_lines)
      for split, (src, tgt) in files.items()
  }
  source = seqio.FunctionDataSource(
      functools.partial(_dataset_fn, files=files), splits=list(files), num_input_examples=counts
  )
  task = common.make_task(
      name, source, vocab.load_vocabulary(vocabulary_path, extra_ids), target_language
  )
  seqio.TaskRegistry.add_provider(name, task)
  _REGISTERED[name] = config
  return name
