"""Bilingual SentencePiece vocabularies with PaDIR's fixed special ids.

Every model built here has pad=0, eos=1, unk=2, no bos, and the user-defined piece '<mask>' at
id 3 (padir_t5x.MASK_ID), so the network, the corruption and decoding can hard-code them.

Build (the text is sampled deterministically for --seed when --max_sentences is set):

    python -m padir_t5x.vocab --files train.de,train.en --output_prefix /vocab/de_en.32k
    python -m padir_t5x.vocab --task padir_wmt14_de_en --output_prefix /vocab/de_en.32k
    python -m padir_t5x.vocab --module my_tasks --task my_de_en --output_prefix vocab/my_de_en

(`--module` imports your module that registers `my_de_en`, e.g. with
tasks.own_corpus.register_parallel_corpus_task, before the task is looked up.)

writes `{output_prefix}.model` and `{output_prefix}.vocab`. The same input, options and seed give
byte-identical `.model` files: sampling uses our own seeded RNG, and the text is streamed to the
trainer through an iterator and the model returned in memory, so no input or output path ends up
inside the model proto.
"""

from __future__ import annotations

import io
import logging
import os
import random
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm

from padir_t5x import EOS_ID, MASK_ID, PAD_ID, UNK_ID, cli
from padir_t5x.data import textio

MASK_PIECE = "<mask>"
DEFAULT_VOCAB_SIZE = 32000
DEFAULT_CHARACTER_COVERAGE = 0.9995
# sentencepiece rejects longer sentences by default (4192 bytes); we drop them ourselves so that
# the count of used sentences is known and logged.
MAX_SENTENCE_BYTES = 4192


def padded_vocab_size(vocab_size: int, multiple: int = 128) -> int:
  """Rounds a vocabulary size up to a multiple of `multiple` (t5x pads embeddings this way)."""
  return -(-int(vocab_size) // multiple) * multiple


def load_vocabulary(path: str, extra_ids: int = 0):
  """Returns a lazily loaded seqio.SentencePieceVocabulary for a `.model` file.

  The file is not read here (seqio loads it on first use), so tasks can be registered before
  their vocabulary is built.
  """
  import seqio  # Deferred: seqio pulls in TensorFlow, which the CLI's --files mode never needs.

  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def model_vocab_size(model_path: str) -> int:
  """Number of pieces in a SentencePiece `.model` file (unpadded)."""
  processor = spm.SentencePieceProcessor(model_file=model_path)
  return processor.get_piece_size()


def padded_model_vocab_size(model_path: str, multiple: int = 128) -> int:
  """Vocabulary size of a `.model` file padded to a multiple of 128, e.g. for gin."""
  return padded_vocab_size(model_vocab_size(model_path), multiple)


def ids_to_text(processor, rows) -> list[str]:
  """[n, t] model output ids -> n strings, each cut at its first EOS (or PAD).

  `processor` is a sentencepiece.SentencePieceProcessor (or anything with `decode(ids)`).
  """
  texts = []
  for row in np.asarray(rows).tolist():
    tokens = []
    for token in row:
      if token in (PAD_ID, EOS_ID):
        break
      tokens.append(token)
    texts.append(processor.decode(tokens))
  return texts


WORD_START = "\u2581"  # SentencePiece's whitespace marker '▁', prefixed to a word's first piece


def word_start_table(processor, size: int | None = None) -> np.ndarray:
  """[size] bool: which ids begin a word (DecodingConfig.word_starts, for 'word' stutter).

  From the SentencePiece model's piece types:

  * ordinary pieces begin a word when they start with '▁' (U+2581), the prefix SentencePiece
    puts on the first piece of every whitespace-separated word (and a bare '▁' piece, which
    precedes a word spelt by pieces without it); pieces without it continue the word;
  * byte pieces (`<0xE4>`, byte fallback) continue a word: they spell characters inside it;
  * control (`<pad>`, `</s>`), unknown, unused and user-defined pieces (`<mask>`, language
    tags) begin a word: each is a whole symbol of its own, so a repeated one is whole-word
    stutter, as under the piece rule;
  * ids from the processor's piece count up to `size` (seqio extra ids, embedding padding)
    begin a word too.

  Text without spaces between words (Chinese, Japanese) is one "word" per run of characters,
  so 'word' stutter hardly ever fires there: use stutter_unit='piece' for such targets.

  Args:
    processor: a sentencepiece.SentencePieceProcessor (seqio's vocabulary.tokenizer).
    size: table length, at least the processor's piece count (default: that count).

  Raises:
    ValueError: a model trained with treat_whitespace_as_suffix (the '▁' ends words there), or
      `size` below the piece count.
  """
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top

  proto = sentencepiece_model_pb2.ModelProto.FromString(processor.serialized_model_proto())
  if proto.trainer_spec.treat_whitespace_as_suffix:
    raise ValueError(
        "word_start_table needs '▁' as a word prefix; this model puts it at word ends "
        "(treat_whitespace_as_suffix)"
    )
  num_pieces = len(proto.pieces)
  size = num_pieces if size is None else int(size)
  if size < num_pieces:
    raise ValueError(f"size {size} is below the model's {num_pieces} pieces")
  table = np.ones(size, bool)
  types = sentencepiece_model_pb2.ModelProto.SentencePiece
  for i, piece in enumerate(proto.pieces):
    if piece.type == types.NORMAL:
      table[i] = piece.piece.startswith(WORD_START)
    elif piece.type == types.BYTE:
      table[i] = False
  return table


def read_lines(paths: Sequence[str]) -> list[str]:
  """Reads the non-blank lines of UTF-8 files (split on '\\n' only; tabs kept).

  Uses textio.iter_text_lines, the package's one line reader, so a vocabulary sees exactly the
  lines the data pipelines see. Raises FileNotFoundError (textio.MissingCorpusFileError) for a
  missing file and ValueError (textio.CorpusFileError) naming file and line for invalid UTF-8.
  """
  lines: list[str] = []
  for path in paths:
    for _, line in textio.iter_text_lines(path, allow_empty_lines=True):
      # iter_text_lines drops one carriage return before the newline; this reader has always
      # dropped every trailing one, so keep doing that.
      line = line.rstrip("\r")
      if line.strip():
        lines.append(line)
  return lines


def drop_long_sentences(sentences: Sequence[str]) -> tuple[list[str], int]:
  """(the sentences of at most MAX_SENTENCE_BYTES UTF-8 bytes, how many longer ones were left out).

  sentencepiece would skip the longer ones itself, silently; `train_sentencepiece` logs the count.
  """
  kept = [s for s in sentences if len(s.encode("utf-8")) <= MAX_SENTENCE_BYTES]
  return kept, len(sentences) - len(kept)


def sample_sentences(sentences: Sequence[str], max_sentences: int | None, seed: int) -> list[str]:
  """Keeps at most `max_sentences` sentences, chosen by a seeded RNG, in their original order.

  `max_sentences` None keeps them all; 0 or less is a ValueError (it used to mean "all").
  """
  if max_sentences is not None and max_sentences < 1:
    raise ValueError(f"max_sentences must be >= 1 (or None for all), got {max_sentences}")
  if max_sentences is None or len(sentences) <= max_sentences:
    return list(sentences)
  keep = sorted(random.Random(seed).sample(range(len(sentences)), max_sentences))
  return [sentences[i] for i in keep]


_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


def train_sentencepiece(
    sentences: Iterable[str],
    output_prefix: str,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    seed: int = 0,
    max_sentences: int | None = None,
    character_coverage: float = DEFAULT_CHARACTER_COVERAGE,
    model_type: str = "unigram",
    user_defined_symbols: Sequence[str] = (),
    allow_smaller_vocab: bool = False,
    num_threads: int = 2,
) -> str:
  """Trains a SentencePiece model with PaDIR's special ids and writes it.

  Args:
    sentences: training text, both languages mixed (one sentence per item).
    output_prefix: writes `{output_prefix}.model` and `{output_prefix}.vocab`.
    vocab_size: number of pieces including the 4 specials.
    seed: seeds the sentence sampling and sentencepiece's own RNG.
    max_sentences: sample this many sentences (deterministically for `seed`); None = all.
      Sentences longer than MAX_SENTENCE_BYTES are left out first, and their number logged.
    character_coverage: 0.9995 suits alphabetic languages; use 0.9995-1.0 for Chinese
      (1.0 keeps every character, rarer ones otherwise map to unk).
    user_defined_symbols: extra always-whole pieces placed after '<mask>' (ids 4, 5, ...),
      e.g. language tags '<2de>'.
    allow_smaller_vocab: if the text cannot support `vocab_size` pieces, train with the largest
      size sentencepiece accepts and log a warning instead of raising ValueError.
  Returns:
    Path of the written `.model` file.
  """
  data, dropped = drop_long_sentences(list(sentences))
  if dropped:
    logging.warning(
        "%d of %d sentences are longer than sentencepiece's limit of %d bytes and are left out",
        dropped,
        len(data) + dropped,
        MAX_SENTENCE_BYTES,
    )
  data = sample_sentences(data, max_sentences, seed)
  if not data:
    raise ValueError("no training sentences for the vocabulary (all inputs empty?)")
  symbols = [MASK_PIECE] + [s for s in user_defined_symbols if s != MASK_PIECE]
  spm.set_random_generator_seed(seed)
  kwargs = dict(
      model_type=model_type,
      vocab_size=vocab_size,
      character_coverage=character_coverage,
      pad_id=PAD_ID,
      eos_id=EOS_ID,
      unk_id=UNK_ID,
      bos_id=-1,
      user_defined_symbols=symbols,
      # We sample ourselves; sentencepiece's own sampling would need its (unseeded) shuffle.
      input_sentence_size=0,
      shuffle_input_sentence=False,
      max_sentence_length=MAX_SENTENCE_BYTES,
      num_threads=num_threads,
      minloglevel=2,
  )
  buffer = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(sentence_iterator=iter(data), model_writer=buffer, **kwargs)
  except RuntimeError as e:
    too_low = _TOO_LOW.search(str(e))
    if too_low:
      raise ValueError(
          f"vocab_size {vocab_size} is below the {too_low.group(2)} pieces this text needs (its "
          "characters and the special pieces): pass a larger --vocab_size or a lower "
          "--character_coverage"
      ) from None
    match = _TOO_HIGH.search(str(e))
    if not match:
      raise
    limit = int(match.group(2))
    if not allow_smaller_vocab:
      raise ValueError(
          f"the training text ({len(data)} sentences) supports at most {limit} pieces, "
          f"not {vocab_size}: pass a smaller vocab_size (e.g. --vocab_size {limit}), more "
          "text, or allow_smaller_vocab=True / --allow_smaller_vocab"
      ) from None
    logging.warning("vocab_size %d is too large for this text; using %d", vocab_size, limit)
    kwargs["vocab_size"] = limit
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(data), model_writer=buffer, **kwargs)
  model_bytes = buffer.getvalue()
  processor = spm.SentencePieceProcessor(model_proto=model_bytes)
  # The whole package relies on these ids; fail loudly rather than train with a shifted mask.
  got = (
      processor.pad_id(),
      processor.eos_id(),
      processor.unk_id(),
      processor.piece_to_id(MASK_PIECE),
  )
  assert got == (PAD_ID, EOS_ID, UNK_ID, MASK_ID), f"unexpected special ids {got}"

  directory = os.path.dirname(output_prefix)
  if directory:
    os.makedirs(directory, exist_ok=True)
  model_path = output_prefix + ".model"
  textio.write_atomically(model_path, model_bytes)
  vocab_lines = "".join(
      f"{processor.id_to_piece(i)}\t{processor.get_score(i)}\n"
      for i in range(processor.get_piece_size())
  )
  textio.write_atomically(output_prefix + ".vocab", vocab_lines.encode("utf-8"))
  logging.info(
      "wrote %s (%d pieces from %d sentences)", model_path, processor.get_piece_size(), len(data)
  )
  return model_path


def ensure_pair_vocabulary(
    data_dir: str, pair: str, vocab_size: int, output_dir: str, seed: int = 0
) -> str:
  """`{output_dir}/{src}_{tgt}.{vocab_size}.model`, trained on first use.

  Trained on both sides of `{data_dir}/{pair}/train.{src,tgt}` (every non-blank line, '\\n'
  splitting only); the benchmarks and the padir_shared_* tasks share it this way.
  """
  source, target = pair.split("-")
  prefix = os.path.join(output_dir, f"{source}_{target}.{vocab_size}")
  if not os.path.exists(prefix + ".model"):
    files = [os.path.join(data_dir, pair, f"train.{language}") for language in (source, target)]
    lines = [line for line in read_lines(files) if line.strip()]
    train_sentencepiece(lines, prefix, vocab_size=vocab_size, seed=seed, num_threads=2)
  return prefix + ".model"


def task_sentences(task_name: str, split: str = "train") -> Iterator[str]:
  """Yields every string feature of a registered seqio task's (or mixture's) raw source.

  The raw source is read (before tokenization), so the task's vocabulary need not exist yet.
  TFDS translation sources give both language fields; text-file sources give inputs/targets.
  The task must be registered already (e.g. by `import tasks`, as `main` does for --task): the
  core never imports the `tasks` package, which itself builds on this module.
  """
  import seqio  # Deferred, like TensorFlow: the --files mode needs neither.
  import tensorflow as tf

  if task_name in seqio.MixtureRegistry.names():
    task_list = seqio.get_mixture_or_task(task_name).tasks
  else:
    task_list = [seqio.get_mixture_or_task(task_name)]
  for task in task_list:
    dataset = task.source.get_dataset(split=split, shuffle=False)
    keys = [
        k
        for k, spec in dataset.element_spec.items()
        if spec.dtype == tf.string and spec.shape.rank == 0
    ]
    for example in dataset.as_numpy_iterator():
      for key in keys:
        yield example[key].decode("utf-8")


@cli.entry_point
def main(argv=None) -> None:
  parser = cli.ArgumentParser(description="Build a bilingual SentencePiece vocabulary.")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--task", help="registered seqio task or mixture; its train text is used")
  source.add_argument("--files", help="comma-separated UTF-8 text files, one sentence a line")
  cli.add_module_flag(parser)
  parser.add_argument("--output_prefix", required=True)
  # The 4 special pieces and at least one more.
  parser.add_argument("--vocab_size", type=cli.int_range(5), default=DEFAULT_VOCAB_SIZE)
  parser.add_argument("--seed", type=cli.seed_int, default=0)
  parser.add_argument(
      "--max_sentences",
      type=cli.positive_int,
      default=None,
      help="sample this many sentences (deterministic for --seed; default: all)",
  )
  parser.add_argument(
      "--character_coverage",
      type=cli.float_range(0.98, 1.0),  # sentencepiece's own range
      default=DEFAULT_CHARACTER_COVERAGE,
      help="0.9995 for alphabetic scripts; up to 1.0 when Chinese is included",
  )
  parser.add_argument("--model_type", default="unigram", choices=["unigram", "bpe"])
  parser.add_argument(
      "--user_defined_symbols",
      default="",
      help="comma-separated extra pieces after <mask>, e.g. '<2de>,<2en>'",
  )
  parser.add_argument(
      "--allow_smaller_vocab",
      action="store_true",
      help="shrink vocab_size with a warning if the text is too small",
  )
  parser.add_argument("--num_threads", type=cli.int_range(1, 1024), default=2)
  args = parser.parse_args(argv)
  if args.module and not args.task:
    parser.error("argument --module: goes with --task")
  logging.basicConfig(level=logging.INFO)
  paths = [p for p in args.files.split(",") if p] if args.files else []
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    parser.error(f"argument --files: file not found: {missing[0]}")
  for suffix in (".model", ".vocab"):
    cli.check_output_path(
        parser,
        "--output_prefix",
        args.output_prefix + suffix,
        inputs={"--files": paths},
        make_parents=True,
    )
  if args.files:
    sentences = read_lines(paths)
  else:
    # The CLI is the one place that registers the padir_* tasks; `tasks` imports this module, so
    # importing it at module level would be a cycle. Then the user's own task modules.
    import tasks  # noqa: F401

    cli.import_modules(args.module)
    cli.check_registered_task(args.task)
    sentences = list(task_sentences(args.task))
  path = train_sentencepiece(
      sentences,
      args.output_prefix,
      vocab_size=args.vocab_size,
      seed=args.seed,
      max_sentences=args.max_sentences,
      character_coverage=args.character_coverage,
      model_type=args.model_type,
      user_defined_symbols=[s for s in args.user_defined_symbols.split(",") if s],
      allow_smaller_vocab=args.allow_smaller_vocab,
      num_threads=args.num_threads,
  )
  size = model_vocab_size(path)
  print(f"{path}: {size} pieces (padded to {padded_vocab_size(size)})")


if __name__ == "__main__":
  main()
