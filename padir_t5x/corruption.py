"""Target corruption for PaDIR training: the decoder input of the first refinement stage.

PaDIR (Li et al. 2024, Sec. 3) trains the decoder to map a partially wrong target to the right one.
The first stage's input is the target with a fraction of its tokens kept and the rest replaced by
uniformly random tokens (or by [MASK] in the masked variant); later stages are fed the previous
stage's own argmax (see `padir_t5x.losses`).

EOS handling: EOS (and any id in `keep_ids`) is never corrupted and does not count among the
tokens that the unmasking rate applies to. EOS marks the predicted length, which the decoder is
given at inference (decoding starts from a length prediction, with EOS put at that length), so
corrupting it in training would ask the decoder to solve a problem it never faces. Padding (0)
is never touched either: it lies past the length and is masked out of attention and loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from padir_t5x import EOS_ID
from padir_t5x import FIRST_ORDINARY_ID
from padir_t5x import PAD_ID
from padir_t5x import layout
from padir_t5x.modes import FillMode


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

  corruptible = targets != PAD_ID
  if len(keep_ids):
    corruptible &= ~jnp.isin(targets, jnp.asarray(list(keep_ids), targets.dtype))
  num_corruptible = jnp.sum(corruptible, axis=-1)
  # Halves round up (not numpy's half-to-even): rate 0.5 of 7 keeps 4 whatever the parity.
  num_kept = jnp.floor(rate * num_corruptible.astype(jnp.float32) + 0.5).astype(jnp.int32)

  # Non-corruptible positions get noise 2 (> any uniform draw) so they rank after every
  # corruptible one; a double argsort turns noise into each position's rank within its row.
  noise = jax.random.uniform(rng, targets.shape)
  noise = jnp.where(corruptible, noise, 2.0)
  rank = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
  kept = rank < num_kept[:, None]
  return corruptible & ~kept


def corrupt_targets_with_mask(
    rng: jax.Array,
    targets: jnp.ndarray,
    unmasking_rate,
    *,
    vocab_high: int | None,
    vocab_low: int = FIRST_ORDINARY_ID,
    mask_id: int | None = None,
    keep_ids: Sequence[int] = (EOS_ID,),
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """`corrupt_targets`, also returning the [batch, length] bool mask of the replaced positions.

  A random replacement may coincide with the original token by chance; the mask records the
  selection, not whether the token changed.
  """
  if mask_id is None:
    if vocab_high is None:
      raise ValueError("vocab_high is required for random-token corruption (mask_id is None)")
    if not 0 <= vocab_low < vocab_high:
      raise ValueError(
          f"random replacement range [vocab_low={vocab_low}, "
          f"vocab_high={vocab_high}) must be nonempty and nonnegative"
      )
  elif mask_id in (PAD_ID, *keep_ids):
    raise ValueError(f"mask_id {mask_id} collides with PAD or a kept id {tuple(keep_ids)}")
  mask_rng, token_rng = jax.random.split(rng)
  targets = jnp.asarray(targets)
  replace = corruption_mask(mask_rng, targets, unmasking_rate, keep_ids=keep_ids)
  replacement = layout.fill_tokens(
      token_rng,
      targets.shape,
      FillMode.RANDOM if mask_id is None else FillMode.MASK,
      vocab_low=vocab_low,
      vocab_high=vocab_high,
      mask_id=mask_id,
      dtype=targets.dtype,
  )
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
) -> jnp.ndarray:
  """Keeps a fraction of each row's tokens and replaces the rest: the first stage's input.

  Among the non-PAD, non-`keep_ids` positions of each row (n_row of them), exactly
  round(unmasking_rate * n_row) keep their token (halves round up), chosen uniformly without
  replacement; the others become tokens drawn uniformly from [vocab_low, vocab_high), or
  `mask_id` when given. PAD is never touched. EOS (the default `keep_ids`) is never touched nor
  counted: it marks the length, which the decoder is told at inference (module docstring).
  jit-able (`vocab_*`, `mask_id`, `keep_ids` static) and deterministic for a given rng.

  Args:
    rng: PRNG key.
    targets: [batch, length] int target tokens, PAD (0) padded.
    unmasking_rate: float or [batch] float array in [0, 1]; 0 replaces every corruptible token,
      1 keeps them all.
    vocab_high: exclusive upper bound of random replacements (the real vocabulary size: the
      network's embedding table may be padded past it). May be None only with `mask_id`.
    vocab_low: inclusive lower bound of random replacements; the default skips special ids.
    mask_id: replace by this id instead of random tokens (the masked-LM variant).
    keep_ids: ids never corrupted.

  Returns:
    [batch, length] corrupted tokens, same dtype as `targets`.

  Raises:
    ValueError: rate outside [0, 1] (when concrete), empty vocabulary range, bad shapes.
  """
  corrupted, _ = corrupt_targets_with_mask(
      rng,
      targets,
      unmasking_rate,
      vocab_high=vocab_high,
      vocab_low=vocab_low,
      mask_id=mask_id,
      keep_ids=keep_ids,
  )
  return corrupted
