"""Trace: reads and edits a module inside a with block, and always removes its hooks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hp_mini


def test_trace_retains_and_edits_and_cleans_up():
    layer = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with hp_mini.Trace(layer, retain_input=True, retain_output=True, edit_input=lambda v: 2 * v) as t:
        y = layer(x)
    torch.testing.assert_close(t.input, 2 * x)
    torch.testing.assert_close(t.output, y)
    torch.testing.assert_close(y, layer(2 * x))
    assert not layer._forward_hooks and not layer._forward_pre_hooks
    with pytest.raises(RuntimeError, match="boom"):
        with hp_mini.Trace(layer, edit_output=lambda out, inp: out + 1):
            raise RuntimeError("boom")
    assert not layer._forward_hooks and torch.equal(layer(x), layer(x))


def test_trace_refuses_reentry_and_kwarg_only_calls():
    layer = nn.Linear(3, 2)
    trace = hp_mini.Trace(layer, retain_input=True)
    with trace:
        with pytest.raises(RuntimeError, match="already active"):
            trace.__enter__()
    with hp_mini.Trace(layer, edit_input=lambda v: v), pytest.raises(RuntimeError, match="without a positional"):
        layer(input=torch.randn(1, 3))
    with pytest.raises(TypeError, match="hooks an nn.Module"):
        hp_mini.Trace(lambda v: v)
