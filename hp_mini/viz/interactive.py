"""Layer-by-head heatmaps that a reader explores in the browser, without a kernel.

:func:`ranking_heatmap` draws two maps of every head side by side, one coloured
by its SOMP score (EVR) and one by its logit-lens score (mean logit), with a
panel beside them. Hovering or clicking a cell of either map shows the head's
label (``L{layer}H{head}``, zero-indexed), both scores with their ranks, and
its top atoms by SOMP and by the logit lens; the arrow keys move the selection
when a map has the keyboard focus. :func:`logit_lens_atoms` gives the logit
lens's top atoms of every head.

The result is plain HTML (``_repr_html_``): an SVG per map, the data as JSON
in a ``<script type="application/json">`` element, and a few lines of
JavaScript written inline, with no library and nothing loaded from the
network. The same output therefore works in a live notebook, in a saved and
reopened one (once trusted), and in the book's static pages, offline. Without
JavaScript the maps still show, and each cell's tooltip gives its label and
scores. Every rendering gets its own element ids, so several maps share a page.

Example
-------
>>> import hp_mini
>>> from hp_mini.viz.interactive import logit_lens_atoms, ranking_heatmap
>>> somp = hp_mini.rank_heads(acts, countries, n_atoms=20)                     # doctest: +SKIP
>>> lens = hp_mini.rank_heads(acts, countries, method="logit_lens")            # doctest: +SKIP
>>> ranking_heatmap(somp, lens, logit_lens_atoms(acts, countries))             # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
import uuid
from collections.abc import Mapping, Sequence

import torch

from hp_mini.checks import check_count
from hp_mini.model.sites import Head, head_label
from hp_mini.rank.ranking import HeadRanking, check_ranking_inputs
from hp_mini.read.dictionary import Dictionary
from hp_mini.read.lens import logit_lens
from hp_mini.record.activations import HeadActivations
from hp_mini.viz.markup import RDBU_R, VIRIDIS, colour, json_for_html

__all__ = ["RankingHeatmap", "logit_lens_atoms", "ranking_heatmap"]


#: The script shared by every heatmap of a page: defined once, then called with each heatmap's id.
#: It writes the panel with textContent only, so token strings are never parsed as HTML.
_SCRIPT = r"""
(function () {
  "use strict";
  var KEY = "hpMiniRankingHeatmap1";
  if (!window[KEY]) {
    window[KEY] = function (id) {
      var root = document.getElementById(id);
      if (!root || root.getAttribute("data-ready")) return;
      root.setAttribute("data-ready", "1");
      var data = JSON.parse(root.querySelector("script.hp-heatmap-data").textContent);
      var panel = root.querySelector(".hp-heatmap-panel");
      var cells = data.cells, pinned = data.start, shown = null, at = {};
      cells.forEach(function (h, i) { at[h.layer + ":" + h.head] = i; });
      function el(tag, cls, text) {
        var e = document.createElement(tag);
        if (cls) e.className = cls;
        if (text !== undefined) e.textContent = text;
        return e;
      }
      function mark(i, on) {
        root.querySelectorAll('rect[data-i="' + i + '"]').forEach(function (r) {
          var f = r.getAttribute("fill") || "#ffffff", rgb = [1, 3, 5].map(function (k) {
            return parseInt(f.substr(k, 2), 16);
          });
          var dark = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 110;  // a white frame there
          if (on) { r.setAttribute("stroke", dark ? "#fff" : "#000"); r.setAttribute("stroke-width", "2.5"); }
          else { r.removeAttribute("stroke"); r.removeAttribute("stroke-width"); }
        });
      }
      function atoms(list) {
        var p = el("div", "hp-heatmap-atoms");
        p.appendChild(el("span", null, "top atoms: "));
        if (!list.length) p.appendChild(el("span", null, "none"));
        list.forEach(function (a, k) {
          if (k) p.appendChild(document.createTextNode(", "));
          var c = el("code", null, JSON.stringify(a).replace(/[\u2028\u2029]/g, function (s) {
            return "\\u" + s.charCodeAt(0).toString(16);
          }));
          if (c.textContent.length <= 24) c.style.whiteSpace = "pre";  // keep short tokens whole
          p.appendChild(c);
        });
        return p;
      }
      function show(i, force) {
        if (i === shown && !force) return;
        if (shown !== null) mark(shown, false);
        shown = i;
        mark(i, true);
        var h = cells[i];
        panel.textContent = "";
        var top = el("div", "hp-heatmap-head");
        top.appendChild(el("strong", "hp-heatmap-label", h.label));
        top.appendChild(el("span", null, " layer " + h.layer + ", head " + h.head));
        panel.appendChild(top);
        data.methods.forEach(function (m) {
          panel.appendChild(el("div", "hp-heatmap-score", m.name + ": " + m.score + " " +
            Number(h[m.key]).toPrecision(3) + " (rank " + h[m.key + "_rank"] + " of " + cells.length + ")"));
          panel.appendChild(atoms(h[m.key + "_atoms"]));
        });
      }
      function index(t) {
        var v = t && t.getAttribute ? t.getAttribute("data-i") : null;
        return v === null ? null : Number(v);
      }
      root.addEventListener("mouseover", function (e) { var i = index(e.target); if (i !== null) show(i); });
      root.addEventListener("mouseleave", function () { show(pinned); });
      root.addEventListener("click", function (e) {
        var i = index(e.target);
        if (i !== null) { pinned = i; show(i, true); }
      });
      root.addEventListener("keydown", function (e) {
        var d = {ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0]}[e.key];
        if (!d) return;
        var h = cells[pinned], j = at[data.layers[data.layers.indexOf(h.layer) + d[0]] + ":" + (h.head + d[1])];
        if (j === undefined) return;
        e.preventDefault();
        pinned = j;
        show(j, true);
      });
      show(pinned, true);
    };
  }
  window[KEY]("__ID__");
})();
"""


# --------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------- #


def logit_lens_atoms(
    acts: HeadActivations, dictionary: Dictionary | torch.Tensor, *, n_atoms: int = 5
) -> dict[Head, list[str]]:
    """The top atoms of every head by the logit lens.

    A head's logit for atom ``d_j`` is ``d_j . x_h``, averaged over the prompts
    (``x_h`` its pooled contribution, uncentred); its atoms are those with the
    largest mean logit. The mean of these logits over all atoms is the head's
    score in ``rank_heads(..., method="logit_lens")``. Both come from
    :func:`hp_mini.read.lens.logit_lens`; this function checks its inputs as
    ranking does.

    Parameters
    ----------
    acts : HeadActivations
        From :func:`hp_mini.record_heads`, with samples or moments only.
    dictionary : Dictionary or Tensor ``[v, d_model]``
        The atoms (usually a concept dictionary).
    n_atoms : int, default 5
        How many atoms per head (at most the dictionary's size).

    Returns
    -------
    dict of (layer, head) to list of str
        The labels of each head's top atoms, largest mean logit first, for
        every recorded head (layer-major).

    Raises
    ------
    ValueError
        As :func:`hp_mini.rank.ranking.check_ranking_inputs` (too few prompts, an
        empty or mismatched dictionary, NaN values), or ``n_atoms`` below 0.
    TypeError
        ``n_atoms`` is not an integer.
    """
    if not isinstance(acts, HeadActivations):
        raise TypeError(f"acts must be HeadActivations (from hp_mini.record_heads), got {type(acts).__name__}")
    k = check_count(n_atoms, "n_atoms", minimum=0)
    dic, _ = check_ranking_inputs(acts, dictionary)
    return logit_lens(acts, dic).top_atoms(k)


def _check_ranking(ranking, name: str, method: str) -> None:
    if not isinstance(ranking, HeadRanking):
        raise TypeError(f"{name} must be a HeadRanking (from hp_mini.rank_heads), got {type(ranking).__name__}")
    if ranking.method != method:
        hint = "method='somp'" if method == "somp" else "method='logit_lens'"
        raise ValueError(f"{name} must be ranked with {hint}, got method={ranking.method!r}")
    if len(ranking.heads) == 0:
        raise ValueError(f"{name} ranks no heads")
    if len(ranking.scores) != len(ranking.heads):
        raise ValueError(f"{name} has {len(ranking.scores)} scores for {len(ranking.heads)} heads")
    if len(set(ranking.heads)) != len(ranking.heads):
        raise ValueError(f"{name} lists a head more than once")
    bad = [head_label(*h) for h, s in zip(ranking.heads, ranking.scores.tolist()) if not math.isfinite(s)]
    if bad:
        raise ValueError(f"{name} has NaN or infinite scores for {', '.join(bad[:5])}; rank the heads again")


def _heatmap_data(somp: HeadRanking, lens: HeadRanking, lens_atoms, n_atoms: int) -> dict:
    _check_ranking(somp, "somp", "somp")
    _check_ranking(lens, "lens", "logit_lens")
    if somp.results is None:
        raise ValueError("somp has no pursuit results (somp.results is None); rank with hp_mini.rank_heads")
    if set(somp.heads) != set(lens.heads):
        only = sorted(set(somp.heads) ^ set(lens.heads))
        raise ValueError(
            "somp and lens must rank the same heads (the same activations); they differ on "
            + ", ".join(head_label(*h) for h in only[:5])
        )
    if not isinstance(lens_atoms, Mapping):
        raise TypeError(
            f"lens_atoms must map (layer, head) to atom labels (see logit_lens_atoms), got {type(lens_atoms).__name__}"
        )
    missing = [h for h in somp.heads if h not in lens_atoms or h not in somp.results]
    if missing:
        raise ValueError(
            "lens_atoms and somp.results need every ranked head; missing for "
            + ", ".join(head_label(*h) for h in missing[:5])
        )
    for h in somp.heads:
        atoms = lens_atoms[h]
        if isinstance(atoms, str) or not isinstance(atoms, Sequence) or not all(isinstance(a, str) for a in atoms):
            raise TypeError(f"lens_atoms[{h}] must be a list of strings (atom labels), got {atoms!r}")
    somp_rank = {h: i + 1 for i, h in enumerate(somp.heads)}
    lens_rank = {h: i + 1 for i, h in enumerate(lens.heads)}
    somp_score = dict(zip(somp.heads, somp.scores.tolist()))
    lens_score = dict(zip(lens.heads, lens.scores.tolist()))
    cells = [
        {
            "label": head_label(layer, head),
            "layer": layer,
            "head": head,
            "somp": somp_score[(layer, head)],
            "somp_rank": somp_rank[(layer, head)],
            "somp_atoms": list(somp.results[(layer, head)].ordered_labels[:n_atoms]),
            "lens": lens_score[(layer, head)],
            "lens_rank": lens_rank[(layer, head)],
            "lens_atoms": list(lens_atoms[(layer, head)][:n_atoms]),
        }
        for layer, head in sorted(somp.heads)
    ]
    return {
        "layers": sorted({cell["layer"] for cell in cells}),
        "n_heads": max(cell["head"] for cell in cells) + 1,
        "cells": cells,
        "start": next(i for i, cell in enumerate(cells) if (cell["layer"], cell["head"]) == somp.heads[0]),
    }


# --------------------------------------------------------------------------- #
# Drawing
# --------------------------------------------------------------------------- #


def _fmt(x: float) -> str:
    return f"{x:#.3g}"


def _map_svg(data: dict, key: str, name: str, score: str, anchors, vmin: float, vmax: float) -> str:
    """One map: a cell per head (with its tooltip), axes, and a colour bar."""
    layers, n_heads, cells = data["layers"], data["n_heads"], data["cells"]
    cw = max(8, min(20, 200 // n_heads))
    ch = max(6, min(12, 360 // len(layers)))
    left, top = 34, 34
    grid_w, grid_h = n_heads * cw, len(layers) * ch
    bar_y = top + grid_h + 30
    width, height = left + max(grid_w, 120) + 8, bar_y + 28
    span = (vmax - vmin) or 1.0
    rows = {layer: r for r, layer in enumerate(layers)}
    out = [
        f'<svg class="hp-heatmap-map" data-metric="{key}" xmlns="http://www.w3.org/2000/svg" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" tabindex="0" role="img" '
        f'aria-label="{html.escape(name)} score of every head, layer by head" '
        'style="overflow: visible; max-width: 100%; height: auto; font: 10px sans-serif">',
        f'<text x="{left}" y="12" fill="currentColor" font-weight="bold">{html.escape(name)}</text>',
        f'<text x="{left}" y="24" fill="currentColor">{html.escape(score)}</text>',
        '<g shape-rendering="crispEdges">',
    ]
    for i, h in enumerate(cells):
        x, y = left + h["head"] * cw, top + rows[h["layer"]] * ch
        fill = colour(anchors, (h[key] - vmin) / span)
        tip = f'{h["label"]}: {_fmt(h[key])} (rank {h[key + "_rank"]} of {len(cells)})'
        out.append(
            f'<rect data-i="{i}" x="{x}" y="{y}" width="{cw - 1}" height="{ch - 1}" fill="{fill}">'
            f"<title>{html.escape(tip)}</title></rect>"
        )
    out.append("</g>")
    step = max(1, math.ceil(len(layers) / (grid_h / 24)))
    for r, layer in enumerate(layers):
        if r % step == 0:
            out.append(
                f'<text x="{left - 4}" y="{top + r * ch + ch / 2 + 3.5:.1f}" text-anchor="end" '
                f'fill="currentColor">{layer}</text>'
            )
    hstep = max(1, math.ceil(n_heads * 14 / grid_w))
    for head in range(0, n_heads, hstep):
        out.append(
            f'<text x="{left + head * cw + cw / 2:.1f}" y="{top + grid_h + 11}" text-anchor="middle" '
            f'fill="currentColor">{head}</text>'
        )
    out.append(f'<text x="{left + grid_w / 2:.1f}" y="{top + grid_h + 22}" text-anchor="middle" '
               'fill="currentColor">head</text>')
    out.append(f'<text x="10" y="{top + grid_h / 2:.1f}" text-anchor="middle" fill="currentColor" '
               f'transform="rotate(-90 10 {top + grid_h / 2:.1f})">layer</text>')
    bar_w, n_steps = max(grid_w, 120), 24
    out.append('<g shape-rendering="crispEdges">')
    for s in range(n_steps):
        out.append(
            f'<rect x="{left + s * bar_w / n_steps:.2f}" y="{bar_y}" width="{bar_w / n_steps + 0.5:.2f}" '
            f'height="8" fill="{colour(anchors, s / (n_steps - 1))}"/>'
        )
    out.append("</g>")
    out.append(f'<text x="{left}" y="{bar_y + 19}" fill="currentColor">{_fmt(vmin)}</text>')
    out.append(
        f'<text x="{left + bar_w}" y="{bar_y + 19}" text-anchor="end" fill="currentColor">{_fmt(vmax)}</text>'
    )
    out.append("</svg>")
    return "".join(out)


class RankingHeatmap:
    """Two layer-by-head maps (SOMP and logit lens) and a panel, explored in the browser.

    Made by :func:`ranking_heatmap`; shows itself in a notebook and in the book
    through ``_repr_html_``. ``data`` holds what is embedded: ``layers``,
    ``n_heads``, ``start`` (the index of the best SOMP head, shown first) and
    ``cells``, one dict per head (its cell in each map), layer-major, with ``label``, ``layer``,
    ``head``, ``somp``/``lens`` (scores), ``somp_rank``/``lens_rank`` (1 =
    best) and ``somp_atoms``/``lens_atoms`` (atom labels).
    """

    def __init__(self, data: dict, *, title: str, somp_score: str, lens_score: str,
                 somp_vmax: float | None = None):
        self.data = data
        self.somp_vmax = somp_vmax
        self.title = title
        self.somp_score = somp_score
        self.lens_score = lens_score

    def __repr__(self) -> str:
        best = self.data["cells"][self.data["start"]]
        return (
            f"RankingHeatmap({self.title!r}, {len(self.data['cells'])} heads, "
            f"best SOMP head {best['label']} ({self.somp_score} {_fmt(best['somp'])}))"
        )

    def html(self, *, element_id: str | None = None) -> str:
        """The HTML: maps, panel, embedded data and script.

        Parameters
        ----------
        element_id : str, optional
            The id of the outer element (default: a new random one, so that
            every rendering on a page is distinct). Letters, digits, ``-``
            and ``_`` only.
        """
        uid = element_id if element_id is not None else f"hp-heatmap-{uuid.uuid4().hex[:12]}"
        if not isinstance(uid, str) or not uid or not all(c.isascii() and (c.isalnum() or c in "-_") for c in uid):
            raise ValueError(f"element_id must be letters, digits, '-' and '_', got {uid!r}")
        cells = self.data["cells"]
        somp = [cell["somp"] for cell in cells]
        lens_lim = max(abs(cell["lens"]) for cell in cells) or 1.0
        payload = {
            **self.data,
            "methods": [
                {"key": "somp", "name": "SOMP", "score": self.somp_score},
                {"key": "lens", "name": "Logit lens", "score": self.lens_score},
            ],
        }
        maps = (
            _map_svg(self.data, "somp", "SOMP", self.somp_score, VIRIDIS, min(0.0, min(somp)),
                     max(somp) if self.somp_vmax is None else self.somp_vmax),
            _map_svg(self.data, "lens", "Logit lens", self.lens_score, RDBU_R, -lens_lim, lens_lim),
        )
        title = f'<div style="font-weight: bold; margin-bottom: 4px">{html.escape(self.title)}</div>' if self.title else ""
        panel = (
            '<div class="hp-heatmap-panel" aria-live="polite" style="flex: 1 1 200px; min-width: 180px; '
            "max-width: 320px; min-height: 9em; padding: 6px 8px; font-size: 12px; line-height: 1.4; "
            'border: 1px solid rgba(128, 128, 128, 0.5); border-radius: 4px; overflow-wrap: anywhere">'
            "Hover over or click a cell to see the head's label, its scores and its top atoms "
            "by SOMP and by the logit lens (this needs JavaScript; each cell's tooltip shows its scores)."
            "</div>"
        )
        return (
            f'<div class="hp-heatmap" id="{uid}" style="margin: 4px 0">{title}'
            '<div style="display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start">'
            + "".join(maps)
            + panel
            + "</div>"
            + f'<script type="application/json" class="hp-heatmap-data">{json_for_html(payload)}</script>'
            + f"<script>{_SCRIPT.replace('__ID__', uid)}</script></div>"
        )

    def _repr_html_(self) -> str:
        return self.html()


def ranking_heatmap(
    somp: HeadRanking,
    lens: HeadRanking,
    lens_atoms: Mapping[Head, Sequence[str]],
    *,
    n_atoms: int = 5,
    title: str = "",
    somp_score: str = "EVR",
    lens_score: str = "mean logit",
    somp_vmax: float | None = None,
) -> RankingHeatmap:
    """An interactive layer-by-head heatmap of a SOMP ranking and a logit-lens ranking.

    Parameters
    ----------
    somp : HeadRanking
        From ``rank_heads(acts, dictionary)`` (``method="somp"``, with its
        pursuit results): the left map, and each head's top atoms by
        coefficient norm (as in ``HeadRanking.to_frame``).
    lens : HeadRanking
        From ``rank_heads(acts, dictionary, method="logit_lens")`` on the same
        heads: the right map.
    lens_atoms : dict of (layer, head) to list of str
        Each head's top atoms by the logit lens, from :func:`logit_lens_atoms`.
    n_atoms : int, default 5
        Atoms shown per head and method.
    title : str, default ""
        A title above the maps (plain text).
    somp_score, lens_score : str
        What the scores are, for the panel and the maps' captions.
    somp_vmax : float, optional
        The top of the SOMP map's colour scale (default: the largest score).
        Heads above it take the top colour; a lower cap keeps a few very high
        heads (a first layer that any dictionary explains) from washing out
        the rest. The panel and tooltips always show the true scores.

    Returns
    -------
    RankingHeatmap
        Shows itself as HTML; its ``data`` is what the page embeds.

    Raises
    ------
    TypeError
        An argument of the wrong type (a ranking that is not a
        :class:`~hp_mini.HeadRanking`, atoms that are not strings).
    ValueError
        Rankings made with the wrong method, of different heads, empty, with
        NaN scores, or ``lens_atoms`` missing a head.
    """
    k = check_count(n_atoms, "n_atoms", minimum=0)
    for name, value in (("title", title), ("somp_score", somp_score), ("lens_score", lens_score)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {type(value).__name__}")
    if somp_vmax is not None:
        if isinstance(somp_vmax, bool) or not isinstance(somp_vmax, (int, float)):
            raise TypeError(f"somp_vmax must be a number, got {type(somp_vmax).__name__}")
        if not math.isfinite(somp_vmax) or somp_vmax <= 0:
            raise ValueError(f"somp_vmax must be a positive finite number, got {somp_vmax!r}")
        somp_vmax = float(somp_vmax)
    data = _heatmap_data(somp, lens, lens_atoms, k)
    return RankingHeatmap(data, title=title, somp_score=somp_score, lens_score=lens_score, somp_vmax=somp_vmax)
