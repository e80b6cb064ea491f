"""Seeing the results: widgets for Jupyter, and heatmaps that work without a kernel.

- :mod:`~hp_mini.viz.widgets`: explore a head, edit a model, build a concept.
- :mod:`~hp_mini.viz.interactive`: layer-by-head heatmaps for the browser.
- :mod:`~hp_mini.viz.markup`: the HTML pieces both use (tables, figures, colours, JSON).
"""

from __future__ import annotations


