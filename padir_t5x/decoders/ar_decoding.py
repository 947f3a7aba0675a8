"""Cached beam search for the autoregressive mode of padir_t5x.core.network.Transformer, no t5x.

It follows t5x.decoding.beam_search: the encoder runs once and its output is repeated for the
beam; each step feeds one token per hypothesis through the decoder with the key/value cache
('cache' collection, decode=True); 2k candidates are taken from the k * V extensions, the best k
that did not end become the alive beam (the cache rows are gathered to follow them) and those that
ended in EOS compete with the finished pool on their length-penalised score
log p / ((5 + length) / 6) ** alpha. Search stops when no alive hypothesis can beat the worst
finished one, or at max_decode_length; rows with nothing finished fall back to their alive beam.
Beam 1 with alpha 0 is greedy decoding.

Shapes: b = batch, k = beam size, t = max_decode_length, V = vocabulary.
"""

from __future__ import annotations


import flax
import jax
import jax.numpy as jnp
import numpy as np

from padir_t5x import EOS_ID
from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x.core import network

Array = jnp.ndarray
NEG_INF = -1.0e7  # as t5x: finite, so that NEG_INF + log-prob stays ordered and NaN-free


@flax.struct.dataclass
class BeamResult:
  """sequences [b, k, t] int32 (EOS then PAD), scores [b, k] float32 (increasing: best last,
  as t5x), steps [] int32 decoder steps run for the batch."""

  sequences: Array
  scores: Array
  steps: Array


def brevity_penalty(alpha: float, length: Array) -> Array:
  """GNMT length normaliser ((5 + length) / 6) ** alpha (length with EOS)."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def allowed_token_mask(vocab_size: int, vocab_high: int | None) -> np.ndarray:
  """[V] bool: EOS and ordinary ids [FIRST_ORDINARY_ID, vocab_high); never PAD, UNK, MASK or the
  embedding-table padding."""
  ids = np.arange(vocab_size)
  allowed = ids >= FIRST_ORDINARY_ID
  if vocab_high is not None:
    allowed &= ids < vocab_high
  allowed[EOS_ID] = True
  return allowed


def _gather_beams(tree, beam_indices: Array, batch_size: int, old_beam: int):
  """Gathers rows of every array leaf with leading dim b * old_beam -> [b * new_beam, ...].

  beam_indices: [b, new_beam] int indices into old_beam. Scalars (cache indices) pass through.
  """

  def gather(x):
    if x.ndim == 0 or x.shape[0] != batch_size * old_beam:
      return x
    x = x.reshape((batch_size, old_beam) + x.shape[1:])
    idx = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))
    x = jnp.take_along_axis(x, idx, axis=1)
    return x.reshape((-1,) + x.shape[2:])

  return jax.tree_util.tree_map(gather, tree)


def beam_search(
    module,
    params,
    encoder_input_tokens: Array,
    beam_size: int,
    max_decode_length: int,
    alpha: float = 0.6,
    vocab_high: int | None = None,
    early_stopping: bool = True,
) -> BeamResult:
  """Beam search (see the module docstring). Pure: jit it with module, sizes static.

  Args:
    module: a padir_t5x.core.network.Transformer with decoder_mode='autoregressive'.
    params: its 'params'.
    encoder_input_tokens: int32 [b, s].
    beam_size: k.
    max_decode_length: t (at most the network's max_target_length).
    alpha: length-penalty exponent (0: plain log-prob).
    vocab_high: real vocabulary size; ids >= it are never produced.
    early_stopping: stop once no alive hypothesis can beat the worst finished one (t5x's rule);
      False runs all t steps (fixed work, for benchmarks/accelerator.py); the result is the same
      either way.
  """
  if module.config.is_padir:
    raise ValueError("beam_search needs decoder_mode='autoregressive'")
  b, k, t = encoder_input_tokens.shape[0], beam_size, max_decode_length
  variables = {"params": params}
  encoded = module.apply(
      variables, encoder_input_tokens, enable_dropout=False, method="encode"
  )  # [b, s, d]
  # The encoder ran once per example, and its cross-attention keys and values are computed
  # once too; each step reads them with the example's k beams grouped (no k copies).
  invariants = network.decoder_invariants(module.config, params, encoded)
  # Every cache variable starts at zero (keys, values, indices), shaped by a full-length call.
  cache = init_cache(module, params, encoded, encoder_input_tokens, t, rows=b * k)
  allowed = jnp.asarray(allowed_token_mask(module.config.vocab_size, vocab_high))
  max_penalty = brevity_penalty(alpha, jnp.asarray(t))

  # Only beam 0 is alive at first, so the first step does not pick k copies of one token.
  alive_log_probs = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
  state = dict(
      step=jnp.zeros((), jnp.int32),
      alive_seqs=jnp.zeros((b, k, t), jnp.int32),
      alive_log_probs=alive_log_probs,
      finished_seqs=jnp.zeros((b, k, t), jnp.int32),
      finished_scores=jnp.full((b, k), NEG_INF, jnp.float32),
      last_tokens=jnp.zeros((b * k,), jnp.int32),  # BOS = 0
      cache=cache,
  )

  def not_done(s):
    # An alive hypothesis can at best keep its log-prob and get the largest normaliser.
    best_alive = jnp.max(s["alive_log_probs"], axis=-1) / max_penalty
    worst_finished = jnp.min(s["finished_scores"], axis=-1)
    improvable = jnp.any(best_alive > worst_finished) | (not early_stopping)
    return (s["step"] < t) & improvable

  def step(s):
    logits, new_vars = module.apply(
        {"params": params, "cache": s["cache"]},
        encoded,  # [b, s, d]
        encoder_input_tokens,  # [b, s]
        s["last_tokens"][:, None],  # [b * k, 1]
        jnp.ones((b * k, 1), jnp.int32),
        enable_dropout=False,
        decode=True,
        invariants=invariants,
        mutable=["cache"],
        method="decode",
    )  # [b * k, 1, V]
    logits = jnp.where(allowed, logits[:, 0, :].astype(jnp.float32), -jnp.inf)
    log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(b, k, -1)
    vocab = log_probs.shape[-1]
    candidates = (s["alive_log_probs"][:, :, None] + log_probs).reshape(b, k * vocab)
    top_log_probs, top_flat = jax.lax.top_k(candidates, 2 * k)  # [b, 2k]
    top_beams, top_tokens = top_flat // vocab, (top_flat % vocab).astype(jnp.int32)
    top_seqs = jnp.take_along_axis(s["alive_seqs"], top_beams[..., None], axis=1)
    top_seqs = top_seqs.at[:, :, s["step"]].set(top_tokens)
    ended = top_tokens == EOS_ID

    # Alive: the best k candidates that did not end.
    alive_scores, alive_pick = jax.lax.top_k(jnp.where(ended, NEG_INF, top_log_probs), k)
    alive_seqs = jnp.take_along_axis(top_seqs, alive_pick[..., None], axis=1)
    alive_beams = jnp.take_along_axis(top_beams, alive_pick, axis=1)
    alive_tokens = jnp.take_along_axis(top_tokens, alive_pick, axis=1)
    new_cache = _gather_beams(new_vars["cache"], alive_beams, b, k)

    # Finished: merge the candidates that ended with the pool, keep the best k.
    ended_scores = jnp.where(ended, top_log_probs / brevity_penalty(alpha, s["step"] + 1), NEG_INF)
    pool_scores = jnp.concatenate([s["finished_scores"], ended_scores], axis=1)
    pool_seqs = jnp.concatenate([s["finished_seqs"], top_seqs], axis=1)
    finished_scores, finished_pick = jax.lax.top_k(pool_scores, k)
    finished_seqs = jnp.take_along_axis(pool_seqs, finished_pick[..., None], axis=1)
    return dict(
        step=s["step"] + 1,
        alive_seqs=alive_seqs,
        alive_log_probs=alive_scores,
        finished_seqs=finished_seqs,
        finished_scores=finished_scores,
        last_tokens=alive_tokens.reshape(b * k),
        cache=new_cache,
    )

  final = jax.lax.while_loop(not_done, step, state)
  # Rows where nothing ended fall back to the alive beam (unterminated, scored at length t).
  none_finished = jnp.all(final["finished_scores"] <= NEG_INF / 2, axis=-1)
  sequences = jnp.where(none_finished[:, None, None], final["alive_seqs"], final["finished_seqs"])
  scores = jnp.where(
      none_finished[:, None], final["alive_log_probs"] / max_penalty, final["finished_scores"]
  )
  order = jnp.argsort(scores, axis=-1)  # increasing: best last, as t5x
  return BeamResult(
      sequences=jnp.take_along_axis(sequences, order[..., None], axis=1),
      scores=jnp.take_along_axis(scores, order, axis=1),
      steps=final["step"],
  )


jit_beam_search = jax.jit(
    beam_search,
    static_argnames=(
        "module",
        "beam_size",
        "max_decode_length",
        "alpha",
        "vocab_high",
        "early_stopping",
    ),
)


def init_cache(
    module,
    params,
    encoded: Array,
    encoder_input_tokens: Array,
    length: int,
    rows: int | None = None,
):
  """Zero key/value cache ('cache' collection) of a decode=True decoder over `length` positions
  for `rows` decoder rows (default: one per example) reading `encoded` [b, s, d] /
  `encoder_input_tokens` [b, s] (rows = b * k: k beams per example, grouped). eval_shape runs
  nothing."""
  dummy = jnp.ones((rows or encoder_input_tokens.shape[0], length), jnp.int32)
  cache_shapes = jax.eval_shape(
      lambda: module.apply(
          {"params": params},
          encoded,
          encoder_input_tokens,
          dummy,
          dummy,
          enable_dropout=False,
          decode=True,
          mutable=["cache"],
          method="decode",
      )[1]["cache"]
  )
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), cache_shapes)


@flax.struct.dataclass
class GreedyResult:
  """sequences [b, t] int32 (content, EOS, then PAD; no EOS if the row ran to t), steps [b]
  int32: the decoder steps each row needed (its output length with EOS, t if none)."""

  sequences: Array
  steps: Array


def greedy_search(
    module, params, encoder_input_tokens: Array, max_decode_length: int, vocab_high=None
) -> GreedyResult:
  """Cached greedy decoding: the argmax over allowed_token_mask each step until EOS.

  Exactly `greedy_reference`'s rule (rows finish independently; the loop runs until every row
  has ended or t steps), with one cached decoder step per token instead of a full pass. The AR
  greedy baseline of draft-and-verify decoding (padir_t5x/decoders/draft_verify.py). Pure: jit it
  with module, max_decode_length and vocab_high static (`jit_greedy_search`).

  Args:
    module: a Transformer with decoder_mode='autoregressive'.
    params: its 'params'.
    encoder_input_tokens: int32 [b, s].
    max_decode_length: t.
    vocab_high: real vocabulary size.
  """
  if module.config.is_padir:
    raise ValueError("greedy_search needs decoder_mode='autoregressive'")
  b, t = encoder_input_tokens.shape[0], max_decode_length
  encoded = module.apply(
      {"params": params}, encoder_input_tokens, enable_dropout=False, method="encode"
  )  # [b, s, d]
  allowed = jnp.asarray(allowed_token_mask(module.config.vocab_size, vocab_high))  # [V]
  invariants = network.decoder_invariants(module.config, params, encoded)  # once, not per step
  state = dict(
      step=jnp.zeros((), jnp.int32),  # []
      sequences=jnp.zeros((b, t), jnp.int32),  # [b, t]
      done=jnp.zeros((b,), bool),  # [b]
      last_tokens=jnp.zeros((b,), jnp.int32),  # [b] BOS = 0
      cache=init_cache(module, params, encoded, encoder_input_tokens, t),
  )

  def step(s):
    logits, new_vars = module.apply(
        {"params": params, "cache": s["cache"]},
        encoded,
        encoder_input_tokens,
        s["last_tokens"][:, None],
        jnp.ones((b, 1), jnp.int32),
        enable_dropout=False,
        decode=True,
        invariants=invariants,
        mutable=["cache"],
        method="decode",
    )  # [b, 1, V]
    logits = jnp.where(allowed, logits[:, 0, :].astype(jnp.float32), -jnp.inf)  # [b, V]
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # [b]
    token = jnp.where(s["done"], 0, token)  # [b] PAD after EOS
    return dict(
        step=s["step"] + 1,
        sequences=s["sequences"].at[:, s["step"]].set(token),  # [b, t]
        done=s["done"] | (token == EOS_ID),  # [b]
        last_tokens=token,  # [b]
        cache=new_vars["cache"],
    )

  final = jax.lax.while_loop(lambda s: (s["step"] < t) & ~jnp.all(s["done"]), step, state)
  is_eos = final["sequences"] == EOS_ID  # [b, t]
  steps = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, t)  # [b]
  return GreedyResult(sequences=final["sequences"], steps=steps.astype(jnp.int32))


jit_greedy_search = jax.jit(
    greedy_search, static_argnames=("module", "max_decode_length", "vocab_high")
)


def greedy_reference(
    module,
    params,
    encoder_input_tokens: np.ndarray,
    max_decode_length: int,
    vocab_high: int | None = None,
) -> np.ndarray:
  """Slow greedy decoding with no cache: re-runs the full teacher-forced decoder each step.

  The independent reference the cached search is tested against. Returns int32 [b, t].
  """
  b, t = encoder_input_tokens.shape[0], max_decode_length
  allowed = allowed_token_mask(module.config.vocab_size, vocab_high)
  out = np.zeros((b, t), np.int32)
  done = np.zeros(b, bool)
  # Jitted only to avoid op-by-op dispatch; each step is still a full uncached forward pass.
  forward = jax.jit(lambda p, x, y, m: module.apply({"params": p}, x, y, m, enable_dropout=False))
  targets = np.ones((b, t), np.int32)  # all positions real: causality hides the future
  for i in range(t):
    decoder_input = np.pad(out[:, :-1], ((0, 0), (1, 0)))
    logits = np.asarray(
        forward(
            params,
            jnp.asarray(encoder_input_tokens),
            jnp.asarray(decoder_input),
            jnp.asarray(targets),
        )
    )[:, i, :]
    token = np.where(allowed, logits, -np.inf).argmax(-1)
    out[:, i] = np.where(done, 0, token)
    done |= token == EOS_ID
  return out


def sequence_log_prob(
    module,
    params,
    encoder_input_tokens: np.ndarray,
    sequences: np.ndarray,
    vocab_high: int | None = None,
) -> np.ndarray:
  """Sum of restricted log-probs of each EOS-terminated row of `sequences` [b, t] -> [b]."""
  sequences = np.asarray(sequences)
  allowed = allowed_token_mask(module.config.vocab_size, vocab_high)
  decoder_input = np.pad(sequences[:, :-1], ((0, 0), (1, 0)))
  logits = np.asarray(
      module.apply(
          {"params": params},
          jnp.asarray(encoder_input_tokens),
          jnp.asarray(decoder_input),
          jnp.ones_like(sequences),
          enable_dropout=False,
      ),
      np.float64,
  )
  logits = np.where(allowed, logits, -np.inf)
  log_probs = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
  picked = np.take_along_axis(log_probs, sequences[..., None], axis=-1)[..., 0]
  # Positions after the first EOS do not count.
  is_eos = sequences == EOS_ID
  after = np.cumsum(is_eos, axis=1) - is_eos > 0
  return np.where(after, 0.0, picked).sum(-1)
