"""Attention analysis of PaDIR outputs (Li et al. 2024, Sec. 3.4: stutter and attention).

Attention weights are not returned by the network, and network.py stays untouched: the decoder
is re-run with flax's `capture_intermediates` recording the outputs of the query and key
projections of every decoder self-attention and cross-attention sublayer, and the weights are
recomputed exactly as `MultiHeadAttention` does (float32 q.k / sqrt(head_dim), masked keys set
to -1e10, softmax). The masks are rebuilt from the same inputs the network derives them from
(`length_mask > 0` for decoder positions, `encoder_input_tokens > 0` for source positions).

Statistics over adjacent content positions (i - 1, i), split into stuttering pairs (same token)
and non-stuttering pairs (different tokens):
* self-attention between them: a[i -> i-1], a[i-1 -> i] and their mean, averaged over heads;
* total-variation distance 0.5 * sum_s |p_i(s) - p_{i-1}(s)| and cosine distance
  1 - <p_i, p_{i-1}> / (|p_i| |p_{i-1}|) between their cross-attention distributions over the
  source, per head, then averaged over heads.

Shapes: n = rows, h = heads, t = target length, s = source length, Ly = decoder layers.
No t5x import.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from padir_t5x.core import layers
from padir_t5x.core import masks as masks_lib
from padir_t5x.core import network

SUBLAYERS = ("self_attention", "encoder_decoder_attention")


def _capture_filter(module, method_name: str) -> bool:
  # Only the q and k projections of the two sublayers we analyse: small, and enough to
  # recompute the weights.
  return (
      method_name == "__call__"
      and isinstance(module, layers.DenseGeneral)
      and module.name in ("query", "key")
      and len(module.path) >= 2
      and module.path[-2] in SUBLAYERS
  )


def _softmax_weights(query: jnp.ndarray, key: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
  """q [n, tq, h, d], k [n, tk, h, d], mask bool [n, 1, tq, tk] -> float32 [n, h, tq, tk]."""
  logits = jnp.where(mask, layers.attention_logits(query, key), layers.MASK_BIAS)
  return jax.nn.softmax(logits, axis=-1)


def decoder_attention(
    module: network.Transformer, params, encoder_input_tokens, decoder_input_tokens, length_mask
) -> dict:
  """One PaDIR decoder pass with its attention weights.

  Args:
    module: a padir-mode network.Transformer.
    params: its 'params'.
    encoder_input_tokens: int [n, s].
    decoder_input_tokens: int [n, t] (content, EOS, PAD).
    length_mask: int [n, t], 1 at positions < length.

  Returns:
    {'logits': float32 [n, t, V], 'self': float32 [Ly, n, h, t, t],
     'cross': float32 [Ly, n, h, t, s]}.
  """
  cfg = module.config
  if not cfg.is_padir:
    raise ValueError("decoder_attention analyses decoder_mode='padir' networks")
  encoder_input_tokens = jnp.asarray(encoder_input_tokens)
  length_mask = jnp.asarray(length_mask)
  variables = {"params": params}
  encoded = module.apply(
      variables, encoder_input_tokens, enable_dropout=False, method=type(module).encode
  )
  logits, state = module.apply(
      variables,
      encoded,
      encoder_input_tokens,
      jnp.asarray(decoder_input_tokens),
      length_mask,
      enable_dropout=False,
      method=type(module).decode,
      capture_intermediates=_capture_filter,
  )
  captured = state["intermediates"]["decoder"]
  valid_target = length_mask > 0
  masks = {
      "self_attention": masks_lib.make_attention_mask(valid_target, valid_target),
      "encoder_decoder_attention": masks_lib.make_attention_mask(
          valid_target, encoder_input_tokens > 0
      ),
  }
  out = {"self_attention": [], "encoder_decoder_attention": []}
  for layer in range(cfg.num_decoder_layers):
    for sub in SUBLAYERS:
      node = captured[f"layers_{layer}"][sub]
      query = node["query"]["__call__"][0]
      key = node["key"]["__call__"][0]
      out[sub].append(_softmax_weights(query, key, masks[sub]))
  return {
      "logits": logits,
      "self": jnp.stack(out["self_attention"]),
      "cross": jnp.stack(out["encoder_decoder_attention"]),
  }


def adjacent_pairs(tokens: np.ndarray, length_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Masks [n, t] of positions i >= 1 such that (i - 1, i) are both content positions.

  Content = positions < length - 1 (EOS excluded). Returns (stutter: tokens[i] == tokens[i-1],
  non_stutter: they differ).
  """
  tokens = np.asarray(tokens)
  length = np.asarray(length_mask).astype(bool).sum(-1)
  positions = np.arange(tokens.shape[1])[None, :]
  both_content = (positions >= 1) & (positions < length[:, None] - 1)
  same = np.zeros_like(both_content)
  same[:, 1:] = tokens[:, 1:] == tokens[:, :-1]
  return both_content & same, both_content & ~same


def adjacent_self_attention(weights: np.ndarray) -> dict:
  """Self-attention between i and i - 1, averaged over heads.

  Args:
    weights: [..., h, t, t] (query, key).

  Returns:
    {'to_previous': a[i -> i-1], 'to_next': a[i-1 -> i], 'mean': their mean}, each [..., t]
    with 0 at i = 0.
  """
  weights = np.asarray(weights, np.float64)
  t = weights.shape[-1]
  i = np.arange(1, t)
  to_previous = np.zeros(weights.shape[:-3] + (t,))
  to_next = np.zeros(weights.shape[:-3] + (t,))
  to_previous[..., 1:] = weights[..., :, i, i - 1].mean(-2)
  to_next[..., 1:] = weights[..., :, i - 1, i].mean(-2)
  return {"to_previous": to_previous, "to_next": to_next, "mean": 0.5 * (to_previous + to_next)}


def adjacent_cross_attention_distances(weights: np.ndarray) -> dict:
  """Distances between the cross-attention distributions of i and i - 1, averaged over heads.

  Args:
    weights: [..., h, t, s], each [.., q, :] a distribution over source positions.

  Returns:
    {'tv': total variation, 'cosine': cosine distance}, each [..., t] with 0 at i = 0.
  """
  weights = np.asarray(weights, np.float64)
  current, previous = weights[..., 1:, :], weights[..., :-1, :]
  tv = 0.5 * np.abs(current - previous).sum(-1)
  norms = np.linalg.norm(current, axis=-1) * np.linalg.norm(previous, axis=-1)
  cosine = 1.0 - (current * previous).sum(-1) / np.maximum(norms, 1e-30)
  tv, cosine = tv.mean(-2), cosine.mean(-2)  # over heads: [..., t - 1]
  pad = [(0, 0)] * (tv.ndim - 1) + [(1, 0)]
  return {"tv": np.pad(tv, pad), "cosine": np.pad(cosine, pad)}


def stutter_attention_tables(
    self_weights: np.ndarray,
    cross_weights: np.ndarray,
    tokens: np.ndarray,
    length_mask: np.ndarray,
    rows: np.ndarray | None = None,
) -> dict:
  """Per-layer means over stuttering vs non-stuttering adjacent pairs.

  Args:
    self_weights: [Ly, n, h, t, t]; cross_weights: [Ly, n, h, t, s].
    tokens: [n, t] the decoder output analysed; length_mask: [n, t].
    rows: optional bool [n], rows to include.

  Returns:
    {'num_stutter_pairs', 'num_non_stutter_pairs', 'layers': [{'layer', 'self_stutter',
     'self_non_stutter', 'self_to_previous_*', 'self_to_next_*', 'tv_stutter',
     'tv_non_stutter', 'cosine_stutter', 'cosine_non_stutter'}]}; a mean over no pairs is NaN.
  """
  stutter, non_stutter = adjacent_pairs(tokens, length_mask)
  if rows is not None:
    stutter = stutter & np.asarray(rows)[:, None]
    non_stutter = non_stutter & np.asarray(rows)[:, None]
  mean_over = lambda x, m: float(x[m].mean()) if m.any() else float("nan")
  self_stats = adjacent_self_attention(self_weights)
  cross_stats = adjacent_cross_attention_distances(cross_weights)
  layer_rows = []
  for layer in range(np.asarray(self_weights).shape[0]):
    entry = {"layer": layer}
    for name, mask in (("stutter", stutter), ("non_stutter", non_stutter)):
      entry[f"self_{name}"] = mean_over(self_stats["mean"][layer], mask)
      entry[f"self_to_previous_{name}"] = mean_over(self_stats["to_previous"][layer], mask)
      entry[f"self_to_next_{name}"] = mean_over(self_stats["to_next"][layer], mask)
      entry[f"tv_{name}"] = mean_over(cross_stats["tv"][layer], mask)
      entry[f"cosine_{name}"] = mean_over(cross_stats["cosine"][layer], mask)
    layer_rows.append(entry)
  return {
      "num_stutter_pairs": int(stutter.sum()),
      "num_non_stutter_pairs": int(non_stutter.sum()),
      "layers": layer_rows,
  }


def format_tables(tables: dict) -> str:
  """The paper's Tables 4 and 5 as text: self-attention, then cross-attention distances."""
  lines = [
      f"Adjacent pairs: {tables['num_stutter_pairs']} stuttering, "
      f"{tables['num_non_stutter_pairs']} non-stuttering",
      "",
      "Table 4-style: decoder self-attention between adjacent positions "
      "(mean of i->i-1 and i-1->i, averaged over heads)",
      "| layer | stuttering | non-stuttering | i->i-1 (st / non) | i-1->i (st / non) |",
      "|---|---|---|---|---|",
  ]
  for e in tables["layers"]:
    lines.append(
        f"| {e['layer'] + 1} | {e['self_stutter']:.4f} | {e['self_non_stutter']:.4f} | "
        f"{e['self_to_previous_stutter']:.4f} / {e['self_to_previous_non_stutter']:.4f} | "
        f"{e['self_to_next_stutter']:.4f} / {e['self_to_next_non_stutter']:.4f} |"
    )
  lines += [
      "",
      "Table 5-style: distance between the cross-attention distributions of adjacent "
      "positions (averaged over heads)",
      "| layer | TV stuttering | TV non-stuttering | cosine stuttering | cosine non-stuttering |",
      "|---|---|---|---|---|",
  ]
  for e in tables["layers"]:
    lines.append(
        f"| {e['layer'] + 1} | {e['tv_stutter']:.4f} | {e['tv_non_stutter']:.4f} | "
        f"{e['cosine_stutter']:.4f} | {e['cosine_non_stutter']:.4f} |"
    )
  return "\n".join(lines)
