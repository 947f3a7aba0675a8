"""Embedded default corpus: a seeded synthetic German->English parallel corpus.

The corpus is small and regular enough for a tiny model to learn in minutes, yet it exercises
what makes non-autoregressive translation hard:

* length change: German number words are single compounds ("dreihundertzweiundvierzig"), the
  English ones are several words ("three hundred forty-two");
* local reordering inside numbers: German says units before tens ("zweiundvierzig" = "two and
  forty" <-> "forty-two");
* long-range reordering: V2 inversion after a fronted adverb ("heute kaufe ich ..." <-> "today i
  buy ...") and verb-final subordinate and modal clauses ("..., dass wir zehn äpfel kaufen" <->
  "... that we buy ten apples"; "ich will zehn äpfel kaufen" <-> "i want to buy ten apples").

Everything is lower case, punctuation is attached as in normal text, and target sentences have at
most 16 words. The generator is pure Python and deterministic for a seed (it uses its own
`random.Random`, never global state), so the same seed gives the same corpus on every machine.

Command line: `python -m padir_t5x.corpus --output_dir DIR [--num_train N] [--seed S]`.
"""

from __future__ import annotations

import os
import random

from padir_t5x import cli

# ---------------------------------------------------------------------------------------------
# Number words 2..999.
_DE_UNITS = ["", "ein", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun"]
_DE_TEENS = [
    "zehn",
    "elf",
    "zwölf",
    "dreizehn",
    "vierzehn",
    "fünfzehn",
    "sechzehn",
    "siebzehn",
    "achtzehn",
    "neunzehn",
]
_DE_TENS = [
    "",
    "",
    "zwanzig",
    "dreißig",
    "vierzig",
    "fünfzig",
    "sechzig",
    "siebzig",
    "achtzig",
    "neunzig",
]
_EN_UNITS = ["", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_EN_TEENS = [
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_EN_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def _german_below_100(n: int) -> str:
  if n < 10:
    # A final "eins" keeps its s ("hunderteins"); inside compounds it is "ein" ("einundzwanzig").
    return "eins" if n == 1 else _DE_UNITS[n]
  if n < 20:
    return _DE_TEENS[n - 10]
  tens, units = divmod(n, 10)
  return (_DE_UNITS[units] + "und" if units else "") + _DE_TENS[tens]


def german_number(n: int) -> str:
  """German number word for 1 <= n <= 999 as one compound, e.g. 342 -> dreihundertzweiundvierzig."""
  if not 1 <= n <= 999:
    raise ValueError(f"german_number supports 1..999, got {n}")
  hundreds, rest = divmod(n, 100)
  word = (_DE_UNITS[hundreds] + "hundert") if hundreds else ""
  return word + (_german_below_100(rest) if rest else "")


def english_number(n: int) -> str:
  """English number words for 1 <= n <= 999, e.g. 342 -> 'three hundred forty-two'."""
  if not 1 <= n <= 999:
    raise ValueError(f"english_number supports 1..999, got {n}")
  hundreds, rest = divmod(n, 100)
  words = [_EN_UNITS[hundreds], "hundred"] if hundreds else []
  if rest >= 20:
    tens, units = divmod(rest, 10)
    words.append(_EN_TENS[tens] + ("-" + _EN_UNITS[units] if units else ""))
  elif rest >= 10:
    words.append(_EN_TEENS[rest - 10])
  elif rest:
    words.append(_EN_UNITS[rest])
  return " ".join(words)


# ---------------------------------------------------------------------------------------------
# Lexicon. Plural nouns only (counts are >= 2), so adjectives take the strong plural ending -e.
_NOUNS = [
    ("äpfel", "apples"),
    ("bücher", "books"),
    ("hunde", "dogs"),
    ("katzen", "cats"),
    ("häuser", "houses"),
    ("blumen", "flowers"),
    ("stühle", "chairs"),
    ("tische", "tables"),
    ("autos", "cars"),
    ("vögel", "birds"),
    ("lampen", "lamps"),
    ("tassen", "cups"),
]
_ADJECTIVES = [
    ("rote", "red"),
    ("blaue", "blue"),
    ("große", "big"),
    ("kleine", "small"),
    ("alte", "old"),
    ("neue", "new"),
    ("grüne", "green"),
    ("schöne", "beautiful"),
]
# Subjects: (german, english, person key).
_SUBJECTS = [
    ("ich", "i", "1s"),
    ("du", "you", "2s"),
    ("er", "he", "3s"),
    ("sie", "she", "3s"),
    ("wir", "we", "1p"),
]
# Verbs: german conjugations by person, german infinitive, english base form, english 3sg form.
_VERBS = [
    ({"1s": "kaufe", "2s": "kaufst", "3s": "kauft", "1p": "kaufen"}, "kaufen", "buy", "buys"),
    (
        {"1s": "verkaufe", "2s": "verkaufst", "3s": "verkauft", "1p": "verkaufen"},
        "verkaufen",
        "sell",
        "sells",
    ),
    (
        {"1s": "brauche", "2s": "brauchst", "3s": "braucht", "1p": "brauchen"},
        "brauchen",
        "need",
        "needs",
    ),
    ({"1s": "zähle", "2s": "zählst", "3s": "zählt", "1p": "zählen"}, "zählen", "count", "counts"),
    ({"1s": "male", "2s": "malst", "3s": "malt", "1p": "malen"}, "malen", "paint", "paints"),
    (
        {"1s": "bestelle", "2s": "bestellst", "3s": "bestellt", "1p": "bestellen"},
        "bestellen",
        "order",
        "orders",
    ),
]
_ADVERBS = [
    ("heute", "today"),
    ("morgen", "tomorrow"),
    ("jetzt", "now"),
    ("am montag", "on monday"),
    ("am freitag", "on friday"),
]
_MODALS = [
    ({"1s": "will", "2s": "willst", "3s": "will", "1p": "wollen"}, "want to", "wants to"),
    ({"1s": "kann", "2s": "kannst", "3s": "kann", "1p": "können"}, "can", "can"),
    ({"1s": "muss", "2s": "musst", "3s": "muss", "1p": "müssen"}, "have to", "has to"),
]
# Matrix clauses for subordinate sentences: (german, english).
_MATRIX = [
    ("er sagt", "he says"),
    ("sie glaubt", "she believes"),
    ("ich weiß", "i know"),
    ("wir hoffen", "we hope"),
    ("du denkst", "you think"),
]


def _english_verb(verb, person: str) -> str:
  return verb[3] if person == "3s" else verb[2]


def _sample_number(rng: random.Random) -> int:
  # Equal thirds of small, two-digit and three-digit numbers; uniform 2..999 would be ~90%
  # three-digit numbers and the model would rarely see the teens.
  bucket = rng.randrange(3)
  if bucket == 0:
    return rng.randint(2, 20)
  if bucket == 1:
    return rng.randint(21, 99)
  return rng.randint(100, 999)


def _object_phrase(rng: random.Random) -> tuple[str, str]:
  n = _sample_number(rng)
  noun_de, noun_en = rng.choice(_NOUNS)
  if rng.random() < 0.6:
    adj_de, adj_en = rng.choice(_ADJECTIVES)
    return (f"{german_number(n)} {adj_de} {noun_de}", f"{english_number(n)} {adj_en} {noun_en}")
  return f"{german_number(n)} {noun_de}", f"{english_number(n)} {noun_en}"


def _sample_pair(rng: random.Random) -> tuple[str, str]:
  subj_de, subj_en, person = rng.choice(_SUBJECTS)
  verb = rng.choice(_VERBS)
  obj_de, obj_en = _object_phrase(rng)
  template = rng.randrange(4)
  if template == 0:  # Plain SVO.
    return (
        f"{subj_de} {verb[0][person]} {obj_de}.",
        f"{subj_en} {_english_verb(verb, person)} {obj_en}.",
    )
  if template == 1:  # V2 inversion after a fronted adverb.
    adv_de, adv_en = rng.choice(_ADVERBS)
    return (
        f"{adv_de} {verb[0][person]} {subj_de} {obj_de}.",
        f"{adv_en} {subj_en} {_english_verb(verb, person)} {obj_en}.",
    )
  if template == 2:  # Verb-final subordinate clause.
    matrix_de, matrix_en = rng.choice(_MATRIX)
    return (
        f"{matrix_de}, dass {subj_de} {obj_de} {verb[0][person]}.",
        f"{matrix_en} that {subj_en} {_english_verb(verb, person)} {obj_en}.",
    )
  # Modal verb with the infinitive at the end of the German clause.
  modal, modal_en, modal_en_3s = rng.choice(_MODALS)
  modal_en = modal_en_3s if person == "3s" else modal_en
  return (
      f"{subj_de} {modal[person]} {obj_de} {verb[1]}.",
      f"{subj_en} {modal_en} {verb[2]} {obj_en}.",
  )


def max_distinct_pairs() -> int:
  """How many distinct pairs `_sample_pair` can produce at most (about 45 million): object
  phrases (998 numbers x 12 nouns x 9 adjective choices, none included) times subject x verb x
  the templates' own choices (1 plain, 5 adverbs, 5 matrix clauses, 3 modals). An upper bound:
  a collision between two templates would only lower it."""
  objects = len(range(2, 1000)) * len(_NOUNS) * (len(_ADJECTIVES) + 1)
  templates = 1 + len(_ADVERBS) + len(_MATRIX) + len(_MODALS)
  return objects * len(_SUBJECTS) * len(_VERBS) * templates


def generate_pairs(num_pairs: int, seed: int = 0) -> list[tuple[str, str]]:
  """Returns `num_pairs` distinct (german, english) pairs, deterministic for `seed`.

  Pairs are distinct by German side (hence by pair), which lets `write_corpus` cut disjoint
  splits from one list. The space holds about 45 million pairs (`max_distinct_pairs`); asking
  for more is a ValueError at once.
  """
  if num_pairs < 0:
    raise ValueError(f"num_pairs must be >= 0, got {num_pairs}")
  if num_pairs > max_distinct_pairs():
    raise ValueError(
        f"num_pairs {num_pairs} exceeds the {max_distinct_pairs()} distinct pairs the generator "
        "can produce"
    )
  rng = random.Random(seed)
  seen: dict[str, str] = {}
  attempts = 0
  while len(seen) < num_pairs:
    attempts += 1
    if attempts > 20 * num_pairs + 1000:
      raise ValueError(f"could not generate {num_pairs} distinct pairs; ask for fewer")
    de, en = _sample_pair(rng)
    if de not in seen:
      seen[de] = en
  return list(seen.items())


SPLITS = ("train", "validation", "test")


def write_corpus(
    directory: str,
    num_train: int = 20000,
    num_validation: int = 500,
    num_test: int = 500,
    seed: int = 0,
) -> dict[str, tuple[str, str]]:
  """Writes line-aligned {split}.de / {split}.en files with disjoint splits.

  Returns:
    {split: (german_path, english_path)} for 'train', 'validation', 'test'.
  """
  pairs = generate_pairs(num_train + num_validation + num_test, seed)
  bounds = {
      "train": (0, num_train),
      "validation": (num_train, num_train + num_validation),
      "test": (num_train + num_validation, len(pairs)),
  }
  os.makedirs(directory, exist_ok=True)
  paths = {}
  for split in SPLITS:
    lo, hi = bounds[split]
    split_paths = []
    for lang, index in (("de", 0), ("en", 1)):
      path = os.path.join(directory, f"{split}.{lang}")
      # Write then rename, so a concurrent reader never sees a half-written file.
      tmp = f"{path}.tmp{os.getpid()}"
      with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(pair[index] + "\n" for pair in pairs[lo:hi])
      os.replace(tmp, path)
      split_paths.append(path)
    paths[split] = tuple(split_paths)
  return paths


@cli.entry_point
def main(argv=None) -> None:
  parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--output_dir", required=True)
  # Every split non-empty: the corpus readers reject empty files.
  parser.add_argument("--num_train", type=cli.positive_int, default=20000)
  parser.add_argument("--num_validation", type=cli.positive_int, default=500)
  parser.add_argument("--num_test", type=cli.positive_int, default=500)
  parser.add_argument("--seed", type=cli.seed_int, default=0)
  args = parser.parse_args(argv)
  total = args.num_train + args.num_validation + args.num_test
  if total > max_distinct_pairs():
    flag = max(
        ("--num_train", "--num_validation", "--num_test"), key=lambda name: getattr(args, name[2:])
    )
    parser.error(
        f"argument {flag}: the generator produces at most {max_distinct_pairs()} distinct pairs, "
        f"and --num_train + --num_validation + --num_test is {total}"
    )
  cli.check_output_path(parser, "--output_dir", args.output_dir, kind="dir", make_parents=True)
  paths = write_corpus(
      args.output_dir, args.num_train, args.num_validation, args.num_test, args.seed
  )
  for split, (de, en) in paths.items():
    print(f"{split}: {de} {en}")


if __name__ == "__main__":
  main()
