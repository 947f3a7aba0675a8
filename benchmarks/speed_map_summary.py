"""The speed map's summary (benchmarks/speed_map.py): per size and batch the fastest row of each
kind and the ratios AR median / PaDIR median, the crossover size, the markdown table, the plot.

Pure functions of the rows `speed_map_rows.run` returns (matplotlib is imported only to plot).
"""

from __future__ import annotations

from benchmarks.speed_map_rows import BEAM
from benchmarks.speed_map_rows import BEAM_SETTING
from benchmarks.speed_map_rows import GREEDY
from benchmarks.speed_map_rows import PADIR_SYSTEMS
from benchmarks.speed_map_rows import PASSES
from benchmarks.speed_map_rows import padir_setting

# (AR kind, PaDIR kind) pairs whose median ratio each entry carries: l=1 against greedy (the
# speed claim), l=5 and its pruned variants against beam 5 (the quality setting's claim).
RATIOS = (
    ("ar_greedy", "padir_l1"),
    ("ar_greedy", "padir_l5"),
    ("ar_beam5", "padir_l5"),
    ("ar_beam5", "padir_l5_k1"),
    ("ar_beam5", "padir_l5_k2"),
)


def _fastest(rows, predicate):
  timed = [r for r in rows if "skipped" not in r and predicate(r)]
  return min(timed, key=lambda r: r["latency_ms"]["median"], default=None)


def size_order(rows) -> list[str]:
  """Sizes of `rows`, smallest first by parameter count (the AR network's)."""
  params: dict[str, int] = {}
  for r in rows:
    if r["system"] == "ar":
      params[r["size"]] = max(params.get(r["size"], 0), r.get("num_params", 0))
    else:
      params.setdefault(r["size"], 0)
  return sorted(dict.fromkeys(r["size"] for r in rows), key=lambda s: (params[s], s))


def summary(rows) -> list[dict]:
  """Per (size, batch), sizes smallest first: the fastest row of each kind and the ratios
  (AR median / PaDIR median: > 1 when PaDIR is faster; None where a side is missing)."""
  out = []
  for size in size_order(rows):
    for batch in sorted({r["batch"] for r in rows if r["size"] == size}):
      mine = [r for r in rows if r["size"] == size and r["batch"] == batch]
      entry = {
          "size": size,
          "batch": batch,
          "ar_greedy": _fastest(mine, lambda r: r["system"] == "ar" and r["setting"] == GREEDY),
          "ar_beam5": _fastest(
              mine, lambda r: r["system"] == "ar" and r["setting"] == BEAM_SETTING
          ),
      }
      # Each PaDIR kind a ratio names, found by the setting its speed_map_rows entry times.
      for name in dict.fromkeys(padir for _, padir in RATIOS):
        setting = padir_setting(*PADIR_SYSTEMS[name])
        entry[name] = _fastest(mine, lambda r, setting=setting: r["setting"] == setting)
      for ar, padir in RATIOS:
        a, p = entry[ar], entry[padir]
        entry[f"{ar}/{padir}"] = (
            None
            if a is None or p is None
            else a["latency_ms"]["median"] / p["latency_ms"]["median"]
        )
      out.append(entry)
  return out


def crossover(entries) -> dict[int, str | None]:
  """batch -> the smallest size (entries' order) at which PaDIR l=1 beats the best AR greedy
  (ratio > 1), None where it never does among the sizes measured."""
  result: dict[int, str | None] = {}
  for entry in entries:
    result.setdefault(entry["batch"], None)
    ratio = entry["ar_greedy/padir_l1"]
    if result[entry["batch"]] is None and ratio is not None and ratio > 1:
      result[entry["batch"]] = entry["size"]
  return result


def _label(row) -> str:
  runtime = "ct2" if row["runtime"] == "ctranslate2" else row["runtime"]
  return f"{runtime} {row['dtype']}"


def _cell(row, with_label: bool = True) -> str:
  if row is None:
    return "n/a"
  return f"{row['latency_ms']['median']:.2f}" + (f" ({_label(row)})" if with_label else "")


def _ratio(value) -> str:
  return "n/a" if value is None else f"{value:.2f}x"


def markdown_table(entries) -> str:
  """One line per (size, batch) of `summary`'s entries: median ms (runtime, dtype) and ratios."""
  lines = [
      f"| size | batch | PaDIR T={PASSES},l=1 ms | PaDIR T={PASSES},l=5 ms | best AR greedy ms "
      f"| best AR beam {BEAM} ms | greedy / l=1 | greedy / l=5 | beam {BEAM} / l=5 "
      f"| beam {BEAM} / l=5,k=1 | beam {BEAM} / l=5,k=2 |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for e in entries:
    lines.append(
        f"| {e['size']} | {e['batch']} | {_cell(e['padir_l1'])} | {_cell(e['padir_l5'])} | "
        f"{_cell(e['ar_greedy'])} | {_cell(e['ar_beam5'])} | "
        f"{_ratio(e['ar_greedy/padir_l1'])} | {_ratio(e['ar_greedy/padir_l5'])} | "
        f"{_ratio(e['ar_beam5/padir_l5'])} | {_ratio(e['ar_beam5/padir_l5_k1'])} | "
        f"{_ratio(e['ar_beam5/padir_l5_k2'])} |"
    )
  return "\n".join(lines)


def crossover_line(entries) -> str:
  """'Crossover ...: batch 1: small; batch 8: none up to base; ...' from `crossover`."""
  sizes = list(dict.fromkeys(e["size"] for e in entries))
  parts = []
  for batch, size in crossover(entries).items():
    parts.append(
        f"batch {batch}: from {size}" if size else f"batch {batch}: none up to {sizes[-1]}"
    )
  return f"Crossover (smallest size at which PaDIR T={PASSES},l=1 beats the best AR greedy): " + (
      "; ".join(parts) if parts else "nothing measured"
  )


def plot(entries, path: str, title: str = "") -> None:
  """PaDIR's speed over the best AR greedy (AR median / PaDIR median) by size, one line per
  batch (l=1 solid, l=5 dashed), a horizontal line at 1; written to `path` (PNG)."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (only with --plot)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top

  sizes = list(dict.fromkeys(e["size"] for e in entries))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for i, batch in enumerate(sorted({e["batch"] for e in entries})):
    color = f"C{i}"
    for key, style, marker, label in (
        ("ar_greedy/padir_l1", "-", "o", "l=1"),
        ("ar_greedy/padir_l5", "--", "s", "l=5"),
    ):
      points = [
          (sizes.index(e["size"]), e[key])
          for e in entries
          if e["batch"] == batch and e[key] is not None
      ]
      if points:
        x, y = zip(*points)
        ax.plot(x, y, style, color=color, marker=marker, label=f"batch {batch}, T={PASSES},{label}")
  ax.axhline(1.0, color="gray", linewidth=1)
  ax.set_xticks(range(len(sizes)))
  ax.set_xticklabels(sizes)
  ax.set_yscale("log")
  ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
  ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("model size")
  ax.set_ylabel("best AR greedy median / PaDIR median\n(> 1: PaDIR faster)")
  ax.set_title(title or "PaDIR speed over the best AR greedy")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
