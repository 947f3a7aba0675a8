"""Draft and verify (padir_t5x/decoders/draft_verify.py): strict mode is AR greedy decoding exactly.

Random tiny AR + PaDIR pairs (weights scaled up so that greedy outputs vary, and the EOS
embedding scaled so that rows end at different steps, some never), plus hand-made drafters
that know the AR greedy output: a perfect one (one verify round), one that gets every third
token wrong (a round per error), a useless one (a round per token). Every case is compared token
for token with ar_decoding.greedy_reference, the uncached greedy oracle. And the translate
command's --draft_checkpoint mode end to end on tiny checkpoints, with its flag checks.
"""

import dataclasses
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from padir_t5x import EOS_ID
from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x.decoders import ar_decoding
from padir_t5x.core import checkpoints
from padir_t5x.decoders import draft_verify
from padir_t5x.decoders import drafters
from padir_t5x.core import network
from padir_t5x.core import network_config
from padir_t5x.decoders import refinement
from padir_t5x import translate
from padir_t5x import translator as translator_lib
from padir_t5x import vocab
from padir_t5x.decoders.decoding_config import DecodingConfig
from padir_t5x.decoders.draft_verify import DraftVerifyConfig

T = 12  # max input and decode length
VOCAB_SIZE = 48
VOCAB_HIGH = 40
BATCH = 6
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(kind: str) -> network_config.TransformerConfig:
  return network_config.tiny_config(
      vocab_size=VOCAB_SIZE,
      emb_dim=32,
      num_heads=2,
      head_dim=16,
      mlp_dim=64,
      num_encoder_layers=1,
      num_decoder_layers=1,
      max_input_length=T,
      max_target_length=T,
      decoder_mode=kind,
      dropout_rate=0.0,
  )


AR = network.Transformer(_config("autoregressive"))
PADIR = network.Transformer(_config("padir"))


def _params(module, seed: int, eos_scale: float = 1.0):
  """Random weights x4 (varied greedy outputs); the AR EOS embedding x eos_scale."""
  x = jnp.ones((1, T), jnp.int32)
  params = module.init(jax.random.PRNGKey(seed), x, x, x, enable_dropout=False)["params"]
  params = jax.tree_util.tree_map(lambda p: p * 4.0, params)
  if not module.config.is_padir:
    emb = params["token_embedder"]["embedding"]
    params["token_embedder"]["embedding"] = emb.at[EOS_ID].multiply(eos_scale)
  return params


def _sources(seed: int, batch: int = BATCH) -> np.ndarray:
  """[batch, T] EOS-terminated random sources of different lengths."""
  rng = np.random.RandomState(seed)
  tokens = np.zeros((batch, T), np.int32)
  for row in range(batch):
    n = rng.randint(1, T)  # content tokens, then EOS
    tokens[row, :n] = rng.randint(FIRST_ORDINARY_ID, VOCAB_HIGH, n)
    tokens[row, n] = EOS_ID
  return tokens


def _decoding(**overrides) -> DecodingConfig:
  fields = dict(
      length_beam=2, max_passes=2, vocab_high=VOCAB_HIGH, stutter_unit="piece", length_buckets=(6,)
  )
  return DecodingConfig(**{**fields, **overrides})


def _steps(sequences: np.ndarray) -> np.ndarray:
  """AR greedy's decoder steps: tokens up to and including EOS (t if none)."""
  is_eos = sequences == EOS_ID
  return np.where(is_eos.any(1), is_eos.argmax(1) + 1, sequences.shape[1])


def _decode(ar_params, padir_module, padir_params, sources, config, rng=0):
  result = draft_verify.draft_verify_decode(
      AR, ar_params, padir_module, padir_params, sources, jax.random.PRNGKey(rng), config, T
  )
  return jax.tree_util.tree_map(np.asarray, result)


def _check_invariants(result, reference):
  steps = _steps(reference)
  rounds = result.rounds
  assert np.all(rounds >= 1)
  assert np.all(rounds <= steps), (rounds, steps)  # every round gains >= 1 token
  assert np.all(result.accepted >= 0)
  # The tokens are the drafts' kept tokens plus one AR correction per round (none in a round
  # whose whole draft, EOS included, was kept).
  assert np.all(result.accepted + rounds >= steps)
  assert np.all(result.accepted + rounds - 1 <= steps)


# ------------------------------------------------------------------------------------------------
# Random networks.
@pytest.mark.parametrize(
    "seed, reuse, shift, candidates",
    [
        (0, False, False, False),
        (1, True, False, False),
        (2, False, False, False),
        (3, True, True, False),
        (4, False, False, True),
        (5, True, True, True),
    ],
)
def test_strict_equals_greedy_reference_on_random_pairs(seed, reuse, shift, candidates):
  ar_params = _params(AR, seed, eos_scale=1.5 + 0.25 * seed)
  padir_params = _params(PADIR, 100 + seed)
  sources = _sources(seed)
  reference = ar_decoding.greedy_reference(AR, ar_params, sources, T, vocab_high=VOCAB_HIGH)
  config = DraftVerifyConfig(
      decoding=_decoding(),
      redraft_passes=1,
      reuse_drafts=reuse,
      shift_variants=shift,
      verify_candidates=candidates,
  )
  result = _decode(ar_params, PADIR, padir_params, sources, config, rng=seed)
  np.testing.assert_array_equal(result.sequences, reference)
  _check_invariants(result, reference)
  # The cached greedy baseline agrees too, and its steps are the output lengths.
  greedy = ar_decoding.jit_greedy_search(
      AR, ar_params, jnp.asarray(sources), max_decode_length=T, vocab_high=VOCAB_HIGH
  )
  np.testing.assert_array_equal(np.asarray(greedy.sequences), reference)
  np.testing.assert_array_equal(np.asarray(greedy.steps), _steps(reference))


def test_random_cases_cover_rows_of_different_lengths():
  """The seeds above give empty, short, long and unterminated outputs."""
  lengths = set()
  for seed in range(4):
    params = _params(AR, seed, eos_scale=1.5 + 0.25 * seed)
    reference = ar_decoding.greedy_reference(AR, params, _sources(seed), T, vocab_high=VOCAB_HIGH)
    lengths |= set(_steps(reference).tolist())
  assert 1 in lengths and T in lengths and len(lengths) >= 5, lengths


@pytest.mark.parametrize(
    "overrides",
    [
        dict(init="mask", remask="none", dedup="none", length_beam=1, max_passes=1),
        dict(remask="low_confidence", dedup="optimal", prediction="summed", max_passes=3),
        dict(length_offsets=1, inits_per_length=2, length_buckets=()),
    ],
)
@pytest.mark.parametrize("candidates", [False, True])
def test_strict_is_exact_whatever_the_drafter_settings(overrides, candidates):
  ar_params = _params(AR, 7, eos_scale=2.0)
  padir_params = _params(PADIR, 8)
  sources = _sources(7)
  reference = ar_decoding.greedy_reference(AR, ar_params, sources, T, vocab_high=VOCAB_HIGH)
  config = DraftVerifyConfig(
      decoding=_decoding(**overrides),
      reuse_drafts=candidates,
      shift_variants=candidates,
      verify_candidates=candidates,
  )
  result = _decode(ar_params, PADIR, padir_params, sources, config)
  np.testing.assert_array_equal(result.sequences, reference)
  _check_invariants(result, reference)


def test_tolerant_with_k1_or_margin0_equals_strict():
  ar_params = _params(AR, 4, eos_scale=2.0)
  padir_params = _params(PADIR, 5)
  sources = _sources(4)
  strict = _decode(ar_params, PADIR, padir_params, sources, DraftVerifyConfig(decoding=_decoding()))
  for top_k, margin in ((1, 5.0), (5, 0.0)):
    config = DraftVerifyConfig(decoding=_decoding(), verify="tolerant", top_k=top_k, margin=margin)
    tolerant = _decode(ar_params, PADIR, padir_params, sources, config)
    np.testing.assert_array_equal(tolerant.sequences, strict.sequences)
    np.testing.assert_array_equal(tolerant.rounds, strict.rounds)


def test_tolerant_with_a_wide_margin_keeps_more_of_the_draft():
  ar_params = _params(AR, 4, eos_scale=2.0)
  padir_params = _params(PADIR, 5)
  sources = _sources(4)
  strict = _decode(ar_params, PADIR, padir_params, sources, DraftVerifyConfig(decoding=_decoding()))
  config = DraftVerifyConfig(decoding=_decoding(), verify="tolerant", top_k=VOCAB_SIZE, margin=1e3)
  tolerant = _decode(ar_params, PADIR, padir_params, sources, config)
  # Every allowed draft token is accepted: the first draft is kept whole, EOS included.
  np.testing.assert_array_equal(tolerant.rounds, np.ones(BATCH))
  assert tolerant.rounds.sum() < strict.rounds.sum()


# ------------------------------------------------------------------------------------------------
# Hand-made drafters that know AR greedy's output.
@dataclasses.dataclass(frozen=True, eq=False)
class OracleDrafter:
  """A stand-in PaDIR network whose 'params' are the drafts it should produce.

  params: {"targets": [b, T] int32, content then EOS then PAD}. `encode` returns each row's
  index (so that a hypothesis row, grouped per example, knows its example), the length logits peak at the target's
  length, and `decode` predicts the target's tokens (one-hot logits), or uniform logits when
  `useless`.
  """

  config: network_config.TransformerConfig
  useless: bool = False
  shorter_first: bool = False

  def apply(self, variables, *args, method=None, **kwargs):
    targets = variables["params"]["targets"]  # [b, T]
    if method == "encode":
      (tokens,) = args
      return jnp.arange(tokens.shape[0], dtype=jnp.float32)[:, None, None]  # [b, 1, 1]
    if method == "predict_length":
      lengths = jnp.sum(targets != 0, axis=-1)  # [b]
      classes = self.config.max_target_length
      if self.shorter_first:  # the true length second, one token short first
        return 4.0 * jax.nn.one_hot(lengths - 1, classes) + 5.0 * jax.nn.one_hot(
            lengths - 2, classes
        )
      return 10.0 * jax.nn.one_hot(lengths - 1, classes)  # [b, L]
    assert method == "decode"
    encoded, _, decoder_input_tokens, _ = args
    # The decoder rows come grouped per example: n = b * c rows against b encoder rows.
    per_example = decoder_input_tokens.shape[0] // encoded.shape[0]
    rows = jnp.repeat(encoded[:, 0, 0].astype(jnp.int32), per_example)  # [n]
    width = decoder_input_tokens.shape[1]
    if self.useless:
      return jnp.zeros((rows.shape[0], width, self.config.vocab_size))
    return 10.0 * jax.nn.one_hot(targets[rows, :width], self.config.vocab_size)  # [n, t', V]


ORACLE = OracleDrafter(_config("padir"))
SHORTER_FIRST = OracleDrafter(_config("padir"), shorter_first=True)
USELESS = OracleDrafter(_config("padir"), useless=True)
EXACT_DRAFTS = _decoding(init="mask", remask="none", dedup="none", length_beam=1, max_passes=1)


def _as_drafts(reference: np.ndarray) -> np.ndarray:
  """AR greedy outputs as drafts: a row that ran to T without EOS keeps T-1 tokens and EOS."""
  drafts = reference.copy()
  unterminated = ~(reference == EOS_ID).any(1)
  drafts[unterminated, -1] = EOS_ID
  return drafts


@pytest.mark.parametrize("seed", [0, 3])
def test_perfect_drafter_needs_one_round(seed):
  ar_params = _params(AR, seed, eos_scale=1.5 + 0.25 * seed)
  sources = _sources(seed)
  reference = ar_decoding.greedy_reference(AR, ar_params, sources, T, vocab_high=VOCAB_HIGH)
  drafts = {"targets": jnp.asarray(_as_drafts(reference))}
  result = _decode(ar_params, ORACLE, drafts, sources, DraftVerifyConfig(decoding=EXACT_DRAFTS))
  np.testing.assert_array_equal(result.sequences, reference)
  np.testing.assert_array_equal(result.rounds, np.ones(BATCH))
  np.testing.assert_array_equal(result.sequential_calls, np.full(BATCH, 2))  # 1 pass + 1 verify
  _check_invariants(result, reference)


@pytest.mark.parametrize("reuse, shift", [(False, False), (True, False), (True, True)])
def test_drafter_with_every_third_token_wrong_needs_a_round_per_error(reuse, shift):
  ar_params = _params(AR, 3, eos_scale=2.25)
  sources = _sources(3)
  reference = ar_decoding.greedy_reference(AR, ar_params, sources, T, vocab_high=VOCAB_HIGH)
  drafts = _as_drafts(reference)
  content = (drafts != 0) & (drafts != EOS_ID)
  wrong = content & (np.arange(T) % 3 == 2)
  drafts = np.where(wrong, FIRST_ORDINARY_ID + (drafts + 1 - FIRST_ORDINARY_ID) % 36, drafts)
  config = DraftVerifyConfig(decoding=EXACT_DRAFTS, reuse_drafts=reuse, shift_variants=shift)
  result = _decode(ar_params, ORACLE, {"targets": jnp.asarray(drafts)}, sources, config)
  np.testing.assert_array_equal(result.sequences, reference)
  # Each error costs one round (its correction); the last round keeps the rest with its EOS,
  # or, for a row that ran to T, ends on the AR's correction of the draft's EOS.
  np.testing.assert_array_equal(result.rounds, wrong.sum(1) + 1)
  # Substitution errors: a reused draft needs no new pass (one pass in all); a fresh draft each
  # round needs one per round.
  np.testing.assert_array_equal(result.passes, 1 if reuse else result.rounds)
  _check_invariants(result, reference)


def test_shift_variants_recover_from_a_dropped_token():
  """A drafter that drops a token (the first one unlike the next): after the AR model's
  correction the rest of the draft is one position off; the shifted variant realigns it (2
  rounds, 1 pass), while the plain reused draft costs a round per remaining token."""
  ar_params = _params(AR, 2, eos_scale=2.0)
  sources = _sources(2, batch=12)
  reference = ar_decoding.greedy_reference(AR, ar_params, sources, T, vocab_high=VOCAB_HIGH)
  drafts = _as_drafts(reference)
  dropped = np.zeros(len(drafts), bool)
  for row, steps in enumerate(_steps(reference)):
    content = reference[row, : steps - 1]
    changes = np.flatnonzero(content[:-1] != content[1:])
    if (reference[row] == EOS_ID).any() and changes.size:
      j = changes[0]
      drafts[row] = np.concatenate([drafts[row, :j], drafts[row, j + 1 :], [0]])
      dropped[row] = True
  assert dropped.sum() >= 3, reference
  targets = {"targets": jnp.asarray(drafts)}
  reuse = DraftVerifyConfig(decoding=EXACT_DRAFTS, reuse_drafts=True)
  shifted = _decode(
      ar_params, ORACLE, targets, sources, dataclasses.replace(reuse, shift_variants=True)
  )
  plain = _decode(ar_params, ORACLE, targets, sources, reuse)
  for result in (shifted, plain):
    np.testing.assert_array_equal(result.sequences, reference)
  np.testing.assert_array_equal(shifted.rounds[dropped], 2)
  np.testing.assert_array_equal(shifted.passes[dropped], 1)
  assert np.all(plain.rounds[dropped] >= 2) and plain.rounds.sum() > shifted.rounds.sum()


@pytest.mark.parametrize("reuse", [False, True])
def test_verify_candidates_keeps_the_candidate_the_verifier_agrees_with(reuse):
  """The drafter ranks a length one token short above the right one: its best draft ends too
  early (a second round for the last token), while verifying both candidates keeps the
  right-length one whole in one round."""
  ar_params = _params(AR, 3, eos_scale=2.25)
  sources = _sources(3, batch=12)
  reference = ar_decoding.greedy_reference(AR, ar_params, sources, T, vocab_high=VOCAB_HIGH)
  targets = {"targets": jnp.asarray(_as_drafts(reference))}
  config = DraftVerifyConfig(
      decoding=dataclasses.replace(EXACT_DRAFTS, length_beam=2),
      reuse_drafts=reuse,
      shift_variants=reuse,
  )
  best_only = _decode(ar_params, SHORTER_FIRST, targets, sources, config)
  every = _decode(
      ar_params,
      SHORTER_FIRST,
      targets,
      sources,
      dataclasses.replace(config, verify_candidates=True),
  )
  for result in (best_only, every):
    np.testing.assert_array_equal(result.sequences, reference)
    _check_invariants(result, reference)
  # Rows with two or more content tokens and an EOS: the short draft's EOS is one too early.
  long = (_steps(reference) >= 3) & (reference == EOS_ID).any(1)
  assert long.sum() >= 3, reference
  np.testing.assert_array_equal(best_only.rounds[long], 2)
  np.testing.assert_array_equal(every.rounds, 1)
  np.testing.assert_array_equal(every.passes, 1)


@pytest.mark.parametrize("seed", [1, 2])
def test_useless_drafter_still_gives_ar_greedy_in_at_most_length_rounds(seed):
  ar_params = _params(AR, seed, eos_scale=1.5 + 0.25 * seed)
  sources = _sources(seed)
  reference = ar_decoding.greedy_reference(AR, ar_params, sources, T, vocab_high=VOCAB_HIGH)
  targets = {"targets": jnp.asarray(_as_drafts(reference))}
  result = _decode(ar_params, USELESS, targets, sources, DraftVerifyConfig(decoding=_decoding()))
  np.testing.assert_array_equal(result.sequences, reference)
  _check_invariants(result, reference)


# ------------------------------------------------------------------------------------------------
# The pieces.
def test_accept_keeps_the_agreed_prefix_plus_the_ar_token():
  v = 8
  # Draft rows (t' = 6): [5 6 7 1 0 0]; prefix lengths 0, 1, 0; AR greedy per position below.
  draft = jnp.asarray([[5, 6, 7, 1, 0, 0]] * 3, jnp.int32)
  greedy = np.array(
      [
          [5, 6, 4, 1, 1, 1],  # disagrees at 2: keeps 5 6, adds 4
          [4, 4, 4, 4, 4, 4],  # prefix 1 (position 0 kept); disagrees at 1: keeps 5, adds 4
          [5, 6, 7, 1, 4, 4],  # agrees through the EOS: the whole draft
      ]
  )
  log_probs = jnp.log(jax.nn.one_hot(greedy, v) * 0.9 + 0.1 / v)
  tokens, lengths, ended, accepted = draft_verify.accept(
      draft, jnp.asarray([0, 1, 0]), log_probs, DraftVerifyConfig(), t=10
  )
  np.testing.assert_array_equal(
      np.asarray(tokens), [[5, 6, 4, 0, 0, 0], [5, 4, 0, 0, 0, 0], [5, 6, 7, 1, 0, 0]]
  )
  np.testing.assert_array_equal(np.asarray(lengths), [3, 2, 4])
  np.testing.assert_array_equal(np.asarray(ended), [False, False, True])
  np.testing.assert_array_equal(np.asarray(accepted), [2, 0, 4])
  # A prefix that reaches t ends the row.
  _, _, ended, _ = draft_verify.accept(
      draft, jnp.asarray([0, 1, 0]), log_probs, DraftVerifyConfig(), t=3
  )
  np.testing.assert_array_equal(np.asarray(ended), [True, False, True])


def test_constrained_length_beam_holds_the_prefix():
  logits = jnp.asarray(np.random.RandomState(0).randn(3, T), jnp.float32)
  config = _decoding(length_beam=3)
  lengths, log_probs = drafters.constrained_length_beam(logits, jnp.asarray([2, 7, 11]), config, T)
  lengths = np.asarray(lengths)
  assert np.all(lengths >= [[2], [7], [11]]) and np.all(lengths <= T)
  assert len(set(lengths[1].tolist())) == 3  # enough lengths left: distinct
  # Row 2: lengths 11 and 12 for 3 slots; the third repeats one at a ~-1e9 log-prob.
  assert sorted(lengths[2].tolist())[1:] == [11, 12] or sorted(lengths[2].tolist()) == [11, 11, 12]
  assert (np.asarray(log_probs)[2] < -1e8).sum() == 1


def test_forced_positions_are_kept_by_refine_lengths():
  padir_params = _params(PADIR, 0)
  sources = jnp.asarray(_sources(0))
  encoded, length_logits = network.encode_and_predict_length(PADIR, padir_params, sources)
  config = _decoding(length_beam=2, dedup="consecutive")
  c = config.num_candidates

  def refine_fn(tokens, mask):
    return PADIR.apply(
        {"params": padir_params},
        jnp.repeat(encoded, c, axis=0),
        jnp.repeat(sources, c, axis=0),
        tokens,
        mask,
        enable_dropout=False,
        method="decode",
    )

  forced_tokens = jnp.full((BATCH, T), 9, jnp.int32)  # a stutter run: never de-duplicated
  forced = jnp.arange(T)[None, :] < jnp.arange(BATCH)[:, None]  # prefix of row i: i tokens
  lengths = jnp.stack([jnp.arange(BATCH) + 2, jnp.arange(BATCH) + 4], axis=1)
  result = refinement.refine_lengths(
      refine_fn,
      lengths,
      jnp.zeros(lengths.shape),
      jax.random.PRNGKey(0),
      config,
      T,
      forced=forced,
      forced_tokens=forced_tokens,
  )
  sequences = np.asarray(result.sequences)  # [b, c, T]
  for row in range(BATCH):
    np.testing.assert_array_equal(sequences[row, :, :row], 9)
  # No forced positions: the decode of before.
  plain = refinement.refine_lengths(
      refine_fn, lengths, jnp.zeros(lengths.shape), jax.random.PRNGKey(0), config, T
  )
  no_force = refinement.refine_lengths(
      refine_fn,
      lengths,
      jnp.zeros(lengths.shape),
      jax.random.PRNGKey(0),
      config,
      T,
      forced=jnp.zeros((BATCH, T), bool),
      forced_tokens=forced_tokens,
  )
  np.testing.assert_array_equal(np.asarray(plain.sequences), np.asarray(no_force.sequences))


def test_config_validation_names_the_field():
  with pytest.raises(ValueError, match="verify"):
    DraftVerifyConfig(verify="lenient")
  with pytest.raises(ValueError, match="redraft_passes"):
    DraftVerifyConfig(redraft_passes=0)
  with pytest.raises(ValueError, match="top_k"):
    DraftVerifyConfig(top_k=0)
  with pytest.raises(ValueError, match="margin"):
    DraftVerifyConfig(margin=-1.0)
  with pytest.raises(ValueError, match="shift_variants needs reuse_drafts"):
    DraftVerifyConfig(shift_variants=True)
  config = DraftVerifyConfig(decoding=_decoding(max_passes=4), redraft_passes=1)
  assert config.redraft_config.max_passes == 1 and config.decoding.max_passes == 4
  assert DraftVerifyConfig(verify="tolerant") == DraftVerifyConfig(verify="tolerant")


def test_modules_of_the_wrong_kind_are_refused():
  with pytest.raises(ValueError, match="ar_module"):
    draft_verify.draft_verify_decode(
        PADIR, None, PADIR, None, _sources(0), jax.random.PRNGKey(0), DraftVerifyConfig(), T
    )
  with pytest.raises(ValueError, match="max_decode_length"):
    draft_verify.draft_verify_decode(
        AR, None, PADIR, None, _sources(0), jax.random.PRNGKey(0), DraftVerifyConfig(), T + 1
    )


# ------------------------------------------------------------------------------------------------
# translate --draft_checkpoint.
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tiny_vocab_path):
  import sentencepiece as spm

  size = spm.SentencePieceProcessor(model_file=tiny_vocab_path).get_piece_size()
  root = tmp_path_factory.mktemp("draft_verify_ckpts")
  paths = {}
  for kind, module, seed in (("ar", AR, 0), ("padir", PADIR, 1)):
    cfg = dataclasses.replace(module.config, vocab_size=256)
    params = _params(network.Transformer(cfg), seed, eos_scale=2.0)
    paths[kind] = str(root / kind)
    checkpoints.save_checkpoint(
        paths[kind], params, cfg, kind, vocab_model=tiny_vocab_path, vocab_high=size
    )
  return paths


LINES = ["ich zähle sieben äpfel.", "", "er zählt blumen.", "du kannst fünf katzen malen."]


def test_translator_draft_verify_equals_ar_greedy(ckpts):
  translator = translate.Translator.draft_verify_from_checkpoints(
      ckpts["ar"], ckpts["padir"], length_beam=2, max_passes=2, redraft_passes=1
  )
  out = translator.translate(LINES, details=True)
  ar = translate.Translator.from_checkpoint(ckpts["ar"])
  encoded, _ = ar.encode(LINES)
  for line, ids, translation in zip(LINES, encoded, out):
    if not ids:
      assert translation.text == "" and translation.passes == 0
      continue
    # The translator's input width (padding masked, but the same shape is the same program).
    width = translator_lib._smallest_at_least(
        len(ids) + 1, translator_lib.INPUT_WIDTHS["draft_verify"], T
    )
    tokens = np.zeros((1, width), np.int32)
    tokens[0, : len(ids)] = ids
    tokens[0, len(ids)] = EOS_ID
    reference = ar_decoding.greedy_reference(ar.module, ar.params, tokens, T, ar.vocab_high)
    assert translation.text == vocab.ids_to_text(ar.processor, reference)[0], line
    assert 2 <= translation.passes <= 3 * T  # rounds + passes (2 first, then 1 a round)


def _run(*args, stdin="ich zähle sieben äpfel.\n"):
  return subprocess.run(
      [sys.executable, "-m", "padir_t5x.translate", *args],
      input=stdin.encode(),
      capture_output=True,
      cwd=REPO,
      timeout=300,
  )


def test_command_draft_verify_end_to_end(ckpts):
  translator = translate.Translator.draft_verify_from_checkpoints(ckpts["ar"], ckpts["padir"])
  expected = translator.translate(LINES)
  proc = _run(
      "--checkpoint", ckpts["ar"], "--draft_checkpoint", ckpts["padir"], stdin="\n".join(LINES)
  )
  assert proc.returncode == 0, proc.stderr.decode()
  assert proc.stdout.decode().split("\n")[:-1] == expected
  assert "mean sequential calls" in proc.stderr.decode()
  # Strict with every candidate verified: the same translations (AR greedy's).
  proc = _run(
      "--checkpoint",
      ckpts["ar"],
      "--draft_checkpoint",
      ckpts["padir"],
      "--length_beam",
      "3",
      "--reuse_drafts",
      "--shift_variants",
      "--verify_candidates",
      stdin="\n".join(LINES),
  )
  assert proc.returncode == 0, proc.stderr.decode()
  assert proc.stdout.decode().split("\n")[:-1] == expected
  proc = _run(
      "--checkpoint",
      ckpts["ar"],
      "--draft_checkpoint",
      ckpts["padir"],
      "--verify",
      "tolerant",
      "--verify_top_k",
      "3",
      "--verify_margin",
      "0.5",
      "--max_passes",
      "2",
      "--redraft_passes",
      "1",
      "--reuse_drafts",
      "--shift_variants",
  )
  assert proc.returncode == 0, proc.stderr.decode()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--verify", "strict"], "needs --draft_checkpoint"),
        (["--redraft_passes", "1"], "needs --draft_checkpoint"),
        (["--DRAFT", "--beam_size", "2"], "does not apply to draft and verify"),
        (["--DRAFT", "--verify_top_k", "2"], "needs --verify tolerant"),
        (["--DRAFT", "--kind", "padir"], "needs an AR --checkpoint"),
        (["--SWAP"], "needs an AR --checkpoint"),
        (["--DRAFT_AR"], "needs a PaDIR checkpoint"),
        (["--DRAFT", "--verify", "lenient"], "invalid choice"),
        (["--DRAFT", "--redraft_passes", "0"], "--redraft_passes: must be an integer >= 1"),
        (["--DRAFT", "--shift_variants"], "needs --reuse_drafts"),
        (["--reuse_drafts"], "needs --draft_checkpoint"),
        (["--verify_candidates"], "needs --draft_checkpoint"),
    ],
)
def test_command_bad_combinations_exit_2(ckpts, flags, message, tmp_path, capsys):
  source = tmp_path / "in.de"
  source.write_text("ich zähle sieben äpfel.\n", encoding="utf-8")
  args = ["--checkpoint", ckpts["ar"]]
  for flag in flags:
    if flag == "--DRAFT":
      args += ["--draft_checkpoint", ckpts["padir"]]
    elif flag == "--SWAP":
      args = ["--checkpoint", ckpts["padir"], "--draft_checkpoint", ckpts["ar"]]
    elif flag == "--DRAFT_AR":
      args += ["--draft_checkpoint", ckpts["ar"]]
    else:
      args.append(flag)
  # In process: the checks read config.json only; no model is loaded before exit 2.
  with pytest.raises(SystemExit) as raised:
    translate.main(args + ["--input", str(source)])
  assert raised.value.code == 2
  assert message in capsys.readouterr().err
