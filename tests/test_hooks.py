"""Trace: reads and edits a module inside a with block, and always removes its hooks."""

from __future__ import annotations

import threading

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


def test_a_trace_in_one_thread_neither_records_nor_edits_another_threads_forward():
    # Thread "other" runs the layer while the Trace of thread "tracing" is active, after
    # that thread's own call: its output must stay unedited and must not replace the
    # output the Trace retained.
    layer = nn.Linear(3, 2)
    xa, xb = torch.randn(4, 3), torch.randn(5, 3)
    ran_a, ran_b = threading.Event(), threading.Event()
    results = {}

    def tracing():
        with hp_mini.Trace(layer, retain_output=True, edit_output=lambda out, inp: out + 100) as t:
            results["a"] = layer(xa)
            ran_a.set()
            assert ran_b.wait(30)
        results["retained"] = t.output

    def other():
        assert ran_a.wait(30)
        results["b"] = layer(xb)
        ran_b.set()

    threads = [threading.Thread(target=tracing), threading.Thread(target=other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with torch.no_grad():
        torch.testing.assert_close(results["a"], layer(xa) + 100)
        torch.testing.assert_close(results["b"], layer(xb))
        torch.testing.assert_close(results["retained"], layer(xa) + 100)
