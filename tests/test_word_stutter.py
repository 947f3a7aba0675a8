"""Word-aware stutter (issue 17): layout.stutter_mask by piece or by word, in dedup and re-masking.

Hand-made ids over a hand-made word-start table, a brute-force reference on random rows, and the
issue's own case with the quickstart's SentencePiece model: "apples" (`▁a p p le s`) and "books"
(`▁b o o ks`) survive 'word' stutter and are broken by 'piece' stutter.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from padir_t5x import EOS_ID, MASK_ID, PAD_ID
from padir_t5x.decoders import decoding, dedup, remasking
from padir_t5x import vocab
from padir_t5x.core import layout
from padir_t5x.decoders.decoding_config import DecodingConfig

# A hand-made vocabulary: the specials (0-3) begin words, and so does every '▁' piece.
PIECES = ["<pad>", "</s>", "<unk>", "<mask>", "▁a", "p", "le", "s", "▁the", "▁ab", "c", "▁x"]
PIECES += ["y", "▁y"]
ID = {piece: i for i, piece in enumerate(PIECES)}
WORD_STARTS = np.array([i < 4 or p.startswith("▁") for i, p in enumerate(PIECES)])
V = len(PIECES)


def _rows(*sentences, width=8):
  """(tokens [n, width] with EOS and PAD, content [n, width]) of space-separated pieces."""
  ids = [[ID[p] for p in s.split()] for s in sentences]
  tokens = np.full((len(ids), width), PAD_ID, np.int32)
  for row, pieces in enumerate(ids):
    tokens[row, : len(pieces)] = pieces
    tokens[row, len(pieces)] = EOS_ID
  lengths = jnp.asarray([len(pieces) + 1 for pieces in ids])
  content, _, _ = layout.length_layout(lengths, width)
  return jnp.asarray(tokens), content


def _pieces(row):
  """The content pieces of one framed row, as a string."""
  out = []
  for token in np.asarray(row).tolist():
    if token == EOS_ID:
      break
    out.append(PIECES[token])
  return " ".join(out)


# Jitted: one compile per unit and shape, instead of one per operation.
_stutter_mask = jax.jit(layout.stutter_mask)
_dedup = jax.jit(dedup.consecutive_dedup)
_remask = jax.jit(remasking.remask_stutter, static_argnames="config")


@pytest.mark.parametrize(
    "sentence, word, piece",
    [
        ("▁the ▁the ▁a", [0, 1, 0], [0, 1, 0]),  # a whole one-piece word repeats
        ("▁a p p le s", [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]),  # a repeat inside a word
        ("▁x y ▁y", [0, 0, 0], [0, 0, 0]),  # y and ▁y across a word boundary
        ("▁ab ▁ab c", [0, 0, 0], [0, 1, 0]),  # equal pieces, different words
        ("▁ab c ▁ab c", [0, 0, 1, 1], [0, 0, 0, 0]),  # a multi-piece word repeats
        ("▁the ▁the ▁the", [0, 1, 1], [0, 1, 1]),  # a run: all but the first
        ("p p ▁a", [0, 0, 0], [0, 1, 0]),  # the first piece starts a word whatever its id
        ("▁ab c ▁ab", [0, 0, 0], [0, 0, 0]),  # the last word ends at EOS, not after it
    ],
)
def test_word_and_piece_stutter_masks(sentence, word, piece):
  tokens, content = _rows(sentence)
  n = len(word)
  got_word = np.asarray(_stutter_mask(tokens, content, jnp.asarray(WORD_STARTS)))
  got_piece = np.asarray(_stutter_mask(tokens, content))
  np.testing.assert_array_equal(got_word[0], word + [False] * (8 - n))
  np.testing.assert_array_equal(got_piece[0], piece + [False] * (8 - n))


def _reference_word_stutter(row, length):
  """Brute force: split the content into words, mark each word equal to the one before."""
  content = list(row[: length - 1])
  words, begins = [], []
  for i, token in enumerate(content):
    if i == 0 or WORD_STARTS[token]:
      words.append([])
      begins.append(i)
    words[-1].append(token)
  mask = [False] * len(row)
  for w in range(1, len(words)):
    if words[w] == words[w - 1]:
      for i in range(begins[w], begins[w] + len(words[w])):
        mask[i] = True
  return mask


def test_word_stutter_mask_matches_a_brute_force_reference_on_rows_of_different_lengths():
  rng = np.random.default_rng(0)
  n, t = 64, 9
  # Few ids, so that whole-word repeats are frequent; PAD after EOS, and junk PAD-equal tokens.
  alphabet = np.array([ID["▁a"], ID["p"], ID["▁ab"], ID["c"]])
  tokens = alphabet[rng.integers(0, len(alphabet), (n, t))]
  lengths = rng.integers(1, t + 1, n)
  positions = np.arange(t)[None, :]
  tokens = np.where(positions == lengths[:, None] - 1, EOS_ID, tokens)
  tokens = np.where(positions >= lengths[:, None], PAD_ID, tokens).astype(np.int32)
  content, _, _ = layout.length_layout(jnp.asarray(lengths), t)
  got = np.asarray(
      jax.jit(layout.word_stutter_mask)(jnp.asarray(tokens), content, jnp.asarray(WORD_STARTS))
  )
  expected = np.array([_reference_word_stutter(tokens[i], lengths[i]) for i in range(n)])
  assert expected.any() and not expected.all()
  np.testing.assert_array_equal(got, expected)


def test_consecutive_dedup_honours_the_unit():
  tokens, content = _rows("▁the ▁the ▁a p p le s", "▁ab c ▁ab c ▁x", "▁a")
  by_word, word_lengths = _dedup(tokens, content, jnp.asarray(WORD_STARTS))
  by_piece, piece_lengths = _dedup(tokens, content)
  assert [_pieces(r) for r in by_word] == ["▁the ▁a p p le s", "▁ab c ▁x", "▁a"]
  assert [_pieces(r) for r in by_piece] == ["▁the ▁a p le s", "▁ab c ▁ab c ▁x", "▁a"]
  np.testing.assert_array_equal(word_lengths, [7, 4, 2])
  np.testing.assert_array_equal(piece_lengths, [6, 6, 2])
  # EOS, then PAD to the end.
  assert np.asarray(by_word)[0, 6] == EOS_ID and np.all(np.asarray(by_word)[0, 7:] == PAD_ID)


def _config(**overrides):
  fields = dict(init="mask", remask="stutter", dedup="consecutive", vocab_high=V, length_beam=1)
  return DecodingConfig(**{**fields, **overrides})


def test_remask_stutter_honours_the_unit():
  tokens, content = _rows("▁ab c ▁ab c ▁a p p", "▁the ▁the")
  rng = jax.random.PRNGKey(0)
  by_word = _remask(rng, tokens, content, _config(word_starts=WORD_STARTS))
  by_piece = _remask(rng, tokens, content, _config(stutter_unit="piece"))
  masked_word = np.asarray(by_word) == MASK_ID
  masked_piece = np.asarray(by_piece) == MASK_ID
  np.testing.assert_array_equal(np.nonzero(masked_word[0])[0], [2, 3])
  np.testing.assert_array_equal(np.nonzero(masked_piece[0])[0], [6])
  np.testing.assert_array_equal(np.nonzero(masked_word[1])[0], [1])
  np.testing.assert_array_equal(np.nonzero(masked_piece[1])[0], [1])
  # Everything else, EOS and PAD included, is untouched.
  np.testing.assert_array_equal(np.where(masked_word, tokens, by_word), tokens)


def test_word_unit_without_a_table_fails_naming_the_field():
  config = _config()
  tokens, content = _rows("▁the ▁the")
  with pytest.raises(ValueError, match="word_starts"):
    remasking.remask_stutter(jax.random.PRNGKey(0), tokens, content, config)
  with pytest.raises(ValueError, match="word_starts"):
    dedup.consecutive_dedup(tokens, content, config.stutter_word_starts())


def test_config_coerces_and_checks_the_table():
  config = _config(word_starts=WORD_STARTS.tolist())
  assert isinstance(config.word_starts, layout.WordStarts)
  # Hashable and compared by content: a static jit argument.
  same = _config(word_starts=WORD_STARTS.copy())
  assert config == same and hash(config) == hash(same)
  other = WORD_STARTS.copy()
  other[5] = True
  assert config != _config(word_starts=other)
  assert _config(stutter_unit="piece").stutter_word_starts() is None
  with pytest.raises(ValueError, match="stutter_unit"):
    _config(stutter_unit="sentence")
  with pytest.raises(ValueError, match="word_starts covers 5 ids, fewer than vocab_high"):
    _config(word_starts=WORD_STARTS[:5])
  with pytest.raises(ValueError, match="word_starts: a word-start table is a 1-D bool"):
    _config(word_starts=np.zeros((2, V), bool))


def test_decode_keeps_legitimate_repeats_in_word_mode():
  """A decoder that always predicts `▁the ▁the ▁a p p le s`: 'word' removes only `▁the`.

  (The same decode in 'piece' mode gives `▁the ▁a p le s`: test_decoding's stutter tests.)
  """
  target = [ID[p] for p in "▁the ▁the ▁a p p le s".split()]

  def refine(inputs, length_mask):
    del inputs
    logits = jax.nn.one_hot(jnp.asarray(target + [EOS_ID]), V) * 10.0
    return jnp.broadcast_to(logits, length_mask.shape + (V,))

  length_logits = jnp.zeros((1, 8)).at[0, 7].set(9.0)  # length 8: seven pieces and EOS
  config = _config(word_starts=WORD_STARTS, max_passes=2)
  result = decoding.iterative_refinement_decode(
      refine, length_logits, jax.random.PRNGKey(0), config, 8
  )
  assert _pieces(result.sequences[0, -1]) == "▁the ▁a p p le s"


# ----------------------------------------------------------------------------------------------
# The case, with the quickstart's SentencePiece vocabulary.


def test_word_start_table_of_the_quickstart_vocabulary(quickstart_vocab_path):
  import sentencepiece as spm

  processor = spm.SentencePieceProcessor(model_file=quickstart_vocab_path)
  table = vocab.word_start_table(processor)
  assert table.shape == (processor.get_piece_size(),) and table.dtype == bool
  assert table[[PAD_ID, EOS_ID, MASK_ID]].all()  # specials are words of their own
  for i in range(4, processor.get_piece_size()):
    assert table[i] == processor.id_to_piece(i).startswith("▁"), processor.id_to_piece(i)
  padded = vocab.word_start_table(processor, size=processor.get_piece_size() + 3)
  assert padded[-3:].all() and (padded[:-3] == table).all()
  with pytest.raises(ValueError, match="below"):
    vocab.word_start_table(processor, size=10)


def test_apples_and_books_survive_word_stutter_and_not_piece_stutter(quickstart_vocab_path):
  import sentencepiece as spm

  processor = spm.SentencePieceProcessor(model_file=quickstart_vocab_path)
  assert processor.encode("apples", out_type=str) == ["▁a", "p", "p", "le", "s"]
  assert processor.encode("books", out_type=str) == ["▁b", "o", "o", "ks"]
  sentences = [
      "today i buy forty-two red apples.",
      "she sells books and apples.",
      "today today i buy buy red apples.",  # real stutter: whole words repeated
  ]
  ids = processor.encode(sentences)
  width = max(len(i) for i in ids) + 1
  tokens = np.zeros((len(ids), width), np.int32)
  for row, pieces in enumerate(ids):
    tokens[row, : len(pieces) + 1] = pieces + [EOS_ID]
  content, _, _ = layout.length_layout(jnp.asarray([len(i) + 1 for i in ids]), width)
  tokens = jnp.asarray(tokens)
  base = dict(vocab_high=processor.get_piece_size(), init="mask", length_beam=1)
  word = DecodingConfig(**base, word_starts=vocab.word_start_table(processor))
  piece = DecodingConfig(**base, stutter_unit="piece")

  def deduplicated(config):
    rows, _ = _dedup(tokens, content, config.stutter_word_starts())
    return vocab.ids_to_text(processor, rows)

  def remasked(config):
    rows = _remask(jax.random.PRNGKey(0), tokens, content, config)
    return np.asarray(rows) == MASK_ID

  cleaned = ["today i buy forty-two red apples.", sentences[1], "today i buy red apples."]
  assert deduplicated(word) == cleaned
  # The piece rule breaks the words and misses the repeat of "today" (`▁to d ay ▁to d ay`).
  assert deduplicated(piece) == [
      "today i buy forty-two red aples.",
      "she sells boks and aples.",
      "today today i buy red aples.",
  ]
  # Re-masking: 'word' leaves the two good sentences alone and re-masks the repeated words
  # (`▁to d ay`, `▁buy`); 'piece' re-masks a 'p' of every "apples", an 'o' and the second `▁buy`.
  assert remasked(word).sum(axis=1).tolist() == [0, 0, 4]
  assert remasked(piece).sum(axis=1).tolist() == [1, 2, 2]
