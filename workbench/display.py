"""Rich HTML for Jupyter: the `_repr_html_` of a Trace and of a probe's Result.

A card is a title, a few facts, optional layer x head heat maps (an HTML table whose cells are shaded by value,
no JavaScript, so it renders in any notebook viewer and on GitHub) and optional tables.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd

CELL = "width:14px;height:14px;padding:0;border:1px solid #fff"


def heat_map(values: np.ndarray, title: str) -> str:
    """A [layer, head] array as a shaded HTML table (darker = larger; NaN blank); each cell's tooltip has
    its layer, head and value."""
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    rows = []
    for layer, row in enumerate(values):
        cells = []
        for head, value in enumerate(row):
            if not math.isfinite(value):
                cells.append(f'<td style="{CELL}"></td>')
                continue
            shade = 0.0 if hi == lo else (value - lo) / (hi - lo)
            cells.append(f'<td style="{CELL};background:rgba(200,40,30,{0.08 + 0.92 * shade:.2f})" '
                         f'title="L{layer}.H{head}: {value:.4g}"></td>')
        rows.append(f'<tr><td style="font-size:10px;padding-right:4px">{layer}</td>{"".join(cells)}</tr>')
    return (f'<div style="display:inline-block;margin-right:16px;vertical-align:top"><div style="font-size:11px">'
            f'{html.escape(title)} (layers down, heads across; {lo:.3g} to {hi:.3g})</div>'
            f'<table style="border-collapse:collapse">{"".join(rows)}</table></div>')


def card(title: str, facts: dict[str, object], maps: dict[str, np.ndarray] | None = None,
         tables: dict[str, pd.DataFrame] | None = None) -> str:
    """The HTML of one card: a title, facts as a definition line, heat maps side by side, then tables."""
    line = " &middot; ".join(f"<b>{html.escape(str(k))}</b> {html.escape(str(v))}" for k, v in facts.items())
    parts = [f"<div><h4 style='margin:4px 0'>{html.escape(title)}</h4><div style='font-size:12px'>{line}</div>"]
    if maps:
        parts.append("<div style='margin:6px 0'>" + "".join(heat_map(v, k) for k, v in maps.items()) + "</div>")
    for caption, frame in (tables or {}).items():
        parts.append(f"<div style='font-size:11px;margin-top:6px'>{html.escape(caption)}</div>")
        parts.append(frame.to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0))
    return "".join(parts) + "</div>"
