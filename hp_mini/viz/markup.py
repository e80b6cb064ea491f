"""HTML pieces shared by the widgets and the heatmaps: tables, figures, errors, colours and JSON.

Everything here returns a string of HTML (or a colour) that is safe to put in
a page: text is escaped, and JSON cannot end the ``<script>`` element that
holds it. The module is named for its job, markup, and leaves Python's own
``html`` module its name.

Example
-------
>>> from hp_mini.viz.markup import VIRIDIS, colour, json_for_html
>>> colour(VIRIDIS, 0.0), colour(VIRIDIS, 1.0)
('#440154', '#fde725')
>>> json_for_html({"token": "</script>"})
'{"token": "\\\\u003c/script\\\\u003e"}'
"""

from __future__ import annotations

import base64
import html
import io
import json
import warnings
from collections.abc import Sequence

__all__ = ["RDBU_R", "VIRIDIS", "colour", "error_html", "figure_html", "json_for_html", "table_html"]

#: matplotlib's viridis as evenly spaced anchors (at 0, 1/8, ..., 1), for :func:`colour`.
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725")
#: matplotlib's RdBu_r (blue, white, red) as evenly spaced anchors, for :func:`colour`.
RDBU_R = ("#053061", "#2a71b2", "#6bacd1", "#c2ddec", "#f7f6f6", "#fbccb4", "#e48066", "#ba2832", "#67001f")


def colour(anchors: Sequence[str], t: float) -> str:
    """The colour at ``t`` of a colour map given by evenly spaced anchors, linear in RGB.

    Parameters
    ----------
    anchors : sequence of str
        At least two ``"#rrggbb"`` colours, for ``t = 0``, ..., ``t = 1``
        (:data:`VIRIDIS`, :data:`RDBU_R`).
    t : float
        Where in the map; clipped to [0, 1].

    Returns
    -------
    str
        ``"#rrggbb"``.
    """
    t = min(max(t, 0.0), 1.0) * (len(anchors) - 1)
    i = min(int(t), len(anchors) - 2)
    f = t - i
    a, b = (tuple(int(c[k : k + 2], 16) for k in (1, 3, 5)) for c in anchors[i : i + 2])
    return "#" + "".join(f"{round(x + (y - x) * f):02x}" for x, y in zip(a, b))


def json_for_html(data) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element (no ``<``, ``>`` or ``&`` left).

    Raises
    ------
    ValueError
        ``data`` holds NaN or an infinity (not JSON).
    """
    text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def table_html(frame, *, caption: str = "") -> str:
    """A pandas table as HTML: text escaped, line breaks kept, long words wrapped in their cell.

    Parameters
    ----------
    frame : pandas.DataFrame
        Shown without its index.
    caption : str, default ""
        A caption above the table (plain text).

    Returns
    -------
    str
        A ``<div>`` that scrolls sideways when the table is wider than the page.
    """
    # pandas writes a newline as the two characters "\n": keep generated line breaks as <br>.
    newline = "\u2029"
    frame = frame.map(lambda v: v.replace("\n", newline) if isinstance(v, str) else v)
    table = frame.to_html(index=False, escape=True, border=0, classes="hp-mini-table")
    table = table.replace(newline, "<br>")
    # Long tokens or generated text wrap inside their cell between words (a word is split
    # only where it alone is wider than its column).
    table = table.replace("<table ", '<table style="overflow-wrap: break-word" ', 1)
    if caption:
        table = table.replace(">", f"><caption>{html.escape(caption)}</caption>", 1)
    return f'<div style="overflow-x: auto">{table}</div>'


def figure_html(fig, *, alt: str) -> str:
    """A matplotlib figure as an ``<img>`` holding its PNG; the figure is closed.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    alt : str
        The image's text alternative (plain text).
    """
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glyphs missing from the font for exotic tokens
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" style="max-width:100%">'


def error_html(err: BaseException) -> str:
    """An exception as a short paragraph (its type in bold, then its message), escaped."""
    return f"<p><b>{html.escape(type(err).__name__)}:</b> {html.escape(str(err))}</p>"
