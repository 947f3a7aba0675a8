"""Target corruption for PaDIR training: the decoder input of the first refinement stage.

PaDIR (Li et al. 2024, Sec. 3) trains the decoder to map a partially wrong target to the right one.
The first stage's input is the target with a fraction of its tokens kept and the rest replaced by
uniformly random tokens (or by [MASK] in the masked variant); later stages are fed the previous
stage's own argmax (see `padir_t5x.core.losses`).

EOS handling: EOS (and any id in `keep_ids`) is never corrupted and does not count among the
tokens that the unmasking rate applies to. EOS marks the predicted length, which the decoder is
given at inference (decoding starts from a length prediction, with EOS put at that length), so
corrupting it in training would ask the decoder to solve a problem it never faces. Padding (0)
is never touched either: it lies past the length and is masked out of attention and loss.

Training options (loss_config.PadirLossConfig) all go through `corrupt_targets_with_mask`:
* the rate may be one number or one per example: `uniform_unmasking_rates` draws them from
  U(low, high), `glancing_unmasking_rates` derives them from a first pass's mistakes (GLAT);
* a corrupted position is filled according to a mix (keep, random, mask) of probabilities: keep
  the correct token, put a uniform random token, or put [MASK] (BERT's is (0.1, 0.1, 0.8)). The
  two fill modes are the pure mixes `RANDOM_MIX` = (0, 1, 0) and `MASK_MIX` = (0, 0, 1)
  (`fill_mix`), so that every corruption runs the same code.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from padir_t5x import EOS_ID
from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x import PAD_ID
from padir_t5x.core import layout
from padir_t5x.core.modes import FillMode

# A mix is (keep, random, mask): the probabilities with which a position selected for corruption
# keeps its correct token, gets a uniform random ordinary token, or gets [MASK].
Mix = tuple[float, float, float]
RANDOM_MIX: Mix = (0.0, 1.0, 0.0)
MASK_MIX: Mix = (0.0, 0.0, 1.0)
_MIX_SUM_TOLERANCE = 1e-6


def fill_mix(mode: FillMode | str) -> Mix:
  """The pure mix of a fill mode: 'random' -> (0, 1, 0), 'mask' -> (0, 0, 1)."""
  return MASK_MIX if FillMode(mode) is FillMode.MASK else RANDOM_MIX


def check_mix(mix, field: str = "mix") -> Mix:
  """`mix` as a tuple of 3 floats; ValueError naming `field` unless they are >= 0 and sum to 1."""
  try:
    values = tuple(float(p) for p in mix)
  except (TypeError, ValueError):
    raise ValueError(f"{field} must be 3 probabilities (keep, random, mask), got {mix!r}") from None
  if len(values) != 3:
    raise ValueError(f"{field} must be 3 probabilities (keep, random, mask), got {mix!r}")
  if not all(np.isfinite(p) and p >= 0.0 for p in values):
    raise ValueError(f"{field} probabilities must be finite and >= 0, got {mix!r}")
  if abs(sum(values) - 1.0) > _MIX_SUM_TOLERANCE:
    raise ValueError(f"{field} probabilities must sum to 1, got {mix!r} (sum {sum(values)})")
  return values


def corruptible_positions(targets: jnp.ndarray, keep_ids: Sequence[int] = (EOS_ID,)) -> jnp.ndarray:
  """[batch, length] bool: the positions the unmasking rate applies to (not PAD, not keep_ids)."""
  corruptible = targets != PAD_ID
  if len(keep_ids):
    corruptible &= ~jnp.isin(targets, jnp.asarray(list(keep_ids), targets.dtype))
  return corruptible


def _round_half_up(x: jnp.ndarray) -> jnp.ndarray:
  """float32 -> int32, halves up (not numpy's half-to-even): 3.5 -> 4 and 2.5 -> 3 alike."""
  return jnp.floor(x + 0.5).astype(jnp.int32)


def uniform_unmasking_rates(
    rng: jax.Array, batch_size: int, low: float = 0.0, high: float = 1.0
) -> jnp.ndarray:
  """[batch_size] float32 unmasking rates drawn independently from U(low, high).

  CMLM (Ghazvininejad et al. 2019), SUNDAE and PaDIR's released code draw the rate of each
  example from U(0, 1) rather than fixing it. 0 <= low <= high <= 1; low == high gives a constant.
  """
  if not 0.0 <= low <= high <= 1.0:
    raise ValueError(
        f"unmasking rate range must satisfy 0 <= low <= high <= 1, got ({low}, {high})"
    )
  return jax.random.uniform(rng, (batch_size,), jnp.float32, minval=low, maxval=high)


def glancing_unmasking_rates(
    predictions: jnp.ndarray, targets: jnp.ndarray, ratio, *, keep_ids: Sequence[int] = (EOS_ID,)
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Glancing (Qian et al. 2021, GLAT): how many gold tokens each row reveals, as a rate.

  A row with n corruptible positions (not PAD, not `keep_ids`) of which `wrong` are mispredicted
  reveals revealed = round(ratio * wrong) gold tokens (float32 product, halves up; GLAT's
  released code truncates, and counts over every non-PAD position). Passing rate = revealed / n to `corruption_mask` keeps exactly `revealed` tokens,
  at uniformly random positions of the row (not only among the wrong ones: as GLAT).

  Args:
    predictions: [batch, length] int, the first pass's argmax.
    targets: [batch, length] int targets, PAD padded.
    ratio: float or [batch] float in [0, 1], GLAT's lambda.
    keep_ids: ids never corrupted (not counted).

  Returns:
    (rates [batch] float32 in [0, 1] (0 for a row with nothing corruptible), revealed [batch]
    int32, wrong [batch] int32, corruptible [batch] int32).
  """
  corruptible = corruptible_positions(targets, keep_ids)
  num_corruptible = jnp.sum(corruptible, axis=-1).astype(jnp.int32)
  num_wrong = jnp.sum(corruptible & (predictions != targets), axis=-1).astype(jnp.int32)
  ratio = jnp.broadcast_to(jnp.asarray(ratio, jnp.float32), num_wrong.shape)
  revealed = _round_half_up(ratio * num_wrong.astype(jnp.float32))
  rates = revealed.astype(jnp.float32) / jnp.maximum(num_corruptible, 1).astype(jnp.float32)
  return jnp.clip(rates, 0.0, 1.0), revealed, num_wrong, num_corruptible


def _check_rate_if_concrete(unmasking_rate) -> None:
  """Raises ValueError for a rate outside [0, 1]; traced rates (inside jit) cannot be checked."""
  if isinstance(unmasking_rate, jax.core.Tracer):
    return
  rate = np.asarray(unmasking_rate, dtype=np.float64)
  if rate.ndim > 1:
    raise ValueError(f"unmasking_rate must be a scalar or a [batch] array, got shape {rate.shape}")
  if np.any(np.isnan(rate)) or np.any(rate < 0.0) or np.any(rate > 1.0):
    raise ValueError(f"unmasking_rate must lie in [0, 1], got {unmasking_rate!r}")


def corruption_mask(
    rng: jax.Array, targets: jnp.ndarray, unmasking_rate, *, keep_ids: Sequence[int] = (EOS_ID,)
) -> jnp.ndarray:
  """Chooses which target positions get corrupted.

  Among the corruptible positions of each row (not PAD, not in `keep_ids`), n_row in number,
  exactly round(unmasking_rate * n_row) are kept (float32 product, halves rounded up) and the
  others are selected for corruption. The kept ones are a uniform draw without replacement: the
  positions with the smallest uniform noise win, so the count is exact, unlike Bernoulli masking.

  Args:
    rng: PRNG key.
    targets: [batch, length] int target tokens, PAD (0) padded.
    unmasking_rate: float or [batch] float array in [0, 1]; fraction of corruptible tokens kept.
    keep_ids: token ids never corrupted (default: EOS).

  Returns:
    [batch, length] bool, True where the token is to be replaced.
  """
  _check_rate_if_concrete(unmasking_rate)
  targets = jnp.asarray(targets)
  if targets.ndim != 2:
    raise ValueError(f"targets must be [batch, length], got shape {targets.shape}")
  batch, _ = targets.shape
  rate = jnp.broadcast_to(jnp.asarray(unmasking_rate, jnp.float32), (batch,))

  corruptible = corruptible_positions(targets, keep_ids)
  num_corruptible = jnp.sum(corruptible, axis=-1)
  # Halves round up (not numpy's half-to-even): rate 0.5 of 7 keeps 4 whatever the parity.
  num_kept = _round_half_up(rate * num_corruptible.astype(jnp.float32))

  # Non-corruptible positions get noise 2 (> any uniform draw) so they rank after every
  # corruptible one; a double argsort turns noise into each position's rank within its row.
  noise = jax.random.uniform(rng, targets.shape)
  noise = jnp.where(corruptible, noise, 2.0)
  rank = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
  kept = rank < num_kept[:, None]
  return corruptible & ~kept


def _resolve_mix(mix, mask_id: int | None) -> Mix:
  """The mix to apply: `mix` validated, or without one the pure mix of today's two fills."""
  if mix is None:
    return RANDOM_MIX if mask_id is None else MASK_MIX
  return check_mix(mix)


def corrupt_targets_with_mask(
    rng: jax.Array,
    targets: jnp.ndarray,
    unmasking_rate,
    *,
    vocab_high: int | None,
    vocab_low: int = FIRST_ORDINARY_ID,
    mask_id: int | None = None,
    keep_ids: Sequence[int] = (EOS_ID,),
    mix: Mix | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`corrupt_targets`, also returning the [batch, length] bool mask of the selected positions.

  The mask records the selection, not whether the token changed: a random replacement may
  coincide with the original token by chance, and the mix's 'keep' share leaves it on purpose.
  """
  mix = _resolve_mix(mix, mask_id)
  keep_p, random_p, mask_p = mix
  if random_p > 0:
    if vocab_high is None:
      raise ValueError(
          f"vocab_high is required for random-token corruption (random probability {random_p})"
      )
    if not 0 <= vocab_low < vocab_high:
      raise ValueError(
          f"random replacement range [vocab_low={vocab_low}, "
          f"vocab_high={vocab_high}) must be nonempty and nonnegative"
      )
  if mask_p > 0:
    if mask_id is None:
      raise ValueError(f"mask_id is required for [MASK] corruption (mask probability {mask_p})")
    if mask_id in (PAD_ID, *keep_ids):
      raise ValueError(f"mask_id {mask_id} collides with PAD or a kept id {tuple(keep_ids)}")
  mask_rng, token_rng = jax.random.split(rng)
  targets = jnp.asarray(targets)
  replace = corruption_mask(mask_rng, targets, unmasking_rate, keep_ids=keep_ids)

  # The fill of each selected position, per the mix. Categories of probability 0 are not
  # computed (random tokens need vocab_high), and a pure mix draws no category: the two fill
  # modes consume exactly the random numbers they always have.
  candidates = []
  if keep_p > 0:
    candidates.append((keep_p, targets))
  if random_p > 0:
    random_tokens = layout.fill_tokens(
        token_rng,
        targets.shape,
        FillMode.RANDOM,
        vocab_low=vocab_low,
        vocab_high=vocab_high,
        mask_id=PAD_ID,  # unused by a random fill
        dtype=targets.dtype,
    )
    candidates.append((random_p, random_tokens))
  if mask_p > 0:
    candidates.append((mask_p, jnp.full(targets.shape, mask_id, targets.dtype)))
  replacement = candidates[-1][1]
  if len(candidates) > 1:
    # One uniform per position; the first category whose cumulative probability exceeds it wins.
    # Its key derives from the token key, not from `rng`, which callers fold for their own draws.
    uniform = jax.random.uniform(jax.random.fold_in(token_rng, 1), targets.shape)
    total = sum(p for p, _ in candidates)
    cumulative = np.cumsum([p for p, _ in candidates]) / total
    for threshold, (_, tokens) in reversed(list(zip(cumulative[:-1], candidates[:-1]))):
      replacement = jnp.where(uniform < threshold, tokens, replacement)
  return jnp.where(replace, replacement, targets), replace


def corrupt_targets(
    rng: jax.Array,
    targets: jnp.ndarray,
    unmasking_rate,
    *,
    vocab_high: int | None,
    vocab_low: int = FIRST_ORDINARY_ID,
    mask_id: int | None = None,
    keep_ids: Sequence[int] = (EOS_ID,),
    mix: Mix | None = None,
) -> jnp.ndarray:
  """Keeps a fraction of each row's tokens and replaces the rest: the first stage's input.

  Among the non-PAD, non-`keep_ids` positions of each row (n_row of them), exactly
  round(unmasking_rate * n_row) keep their token (halves round up), chosen uniformly without
  replacement; the others are selected for corruption and filled per `mix`: by default tokens
  drawn uniformly from [vocab_low, vocab_high), or `mask_id` when given. PAD is never touched.
  EOS (the default `keep_ids`) is never touched nor counted: it marks the length, which the
  decoder is told at inference (module docstring). jit-able (`vocab_*`, `mask_id`, `keep_ids`,
  `mix` static) and deterministic for a given rng.

  Args:
    rng: PRNG key.
    targets: [batch, length] int target tokens, PAD (0) padded.
    unmasking_rate: float or [batch] float array in [0, 1]; 0 replaces every corruptible token,
      1 keeps them all.
    vocab_high: exclusive upper bound of random replacements (the real vocabulary size: the
      network's embedding table may be padded past it). May be None when the mix has no random
      share.
    vocab_low: inclusive lower bound of random replacements; the default skips special ids.
    mask_id: the [MASK] id. Without `mix`, giving it selects the masked-LM variant (0, 0, 1).
    keep_ids: ids never corrupted.
    mix: (keep, random, mask) probabilities of a selected position (>= 0, summing to 1): keep
      the correct token, a uniform random token, or `mask_id`. None: (0, 1, 0) without
      `mask_id`, (0, 0, 1) with it. A pure mix draws the same random numbers as that mode.

  Returns:
    [batch, length] corrupted tokens, same dtype as `targets`.

  Raises:
    ValueError: rate outside [0, 1] (when concrete), bad mix, empty vocabulary range, random
      share without vocab_high, mask share without (or with a colliding) mask_id, bad shapes.
  """
  corrupted, _ = corrupt_targets_with_mask(
      rng,
      targets,
      unmasking_rate,
      vocab_high=vocab_high,
      vocab_low=vocab_low,
      mask_id=mask_id,
      keep_ids=keep_ids,
      mix=mix,
  )
  return corrupted
