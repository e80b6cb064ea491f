"""One hook mechanism for reading and editing modules: :class:`Trace`.

A :class:`Trace` hooks one module for the duration of a ``with`` block, keeps
its input and output if asked, optionally replaces them, and always removes
what it added, also when the block raises (after baukit's ``Trace``).
Recording, editing, tests and chapters all use it.

A Trace acts only on the forward passes of the thread that entered it: another
thread running the same module at the same time is neither recorded nor
edited, so recordings and edits made in different threads do not mix.

Example
-------
>>> import torch
>>> from hp_mini.model.hooks import Trace
>>> layer = torch.nn.Linear(3, 2)
>>> with Trace(layer, retain_input=True, edit_output=lambda out, inp: 2 * out) as t:
...     y = layer(torch.ones(1, 3))
>>> torch.allclose(y, 2 * layer(torch.ones(1, 3))), tuple(t.input.shape)
(True, (1, 3))
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["Trace"]


class Trace:
    """Hook ``module`` inside a ``with`` block.

    Parameters
    ----------
    module : nn.Module
    retain_input, retain_output : bool
        Keep the first positional input / the output of the latest call
        (detached) as :attr:`input` / :attr:`output`.
    edit_input : callable ``(x) -> x`` or None
        Replaces the first positional input before the module runs. Returning
        None keeps it (a pure observer).
    edit_output : callable ``(output, x) -> output`` or None
        Replaces the output (``x`` is the first positional input). Returning
        None keeps it. For modules returning a tuple, the callable gets the tuple.

    Attributes
    ----------
    input, output : Tensor or None

    Notes
    -----
    The hooks act only in the thread that entered the block: forward passes
    that other threads run meanwhile are left as they are, and are not
    retained. Run the model in the thread that enters the block (a forward
    pass that a library runs in a thread of its own is not seen).
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        retain_input: bool = False,
        retain_output: bool = False,
        edit_input: Callable | None = None,
        edit_output: Callable | None = None,
    ):
        if not isinstance(module, nn.Module):
            raise TypeError(f"Trace hooks an nn.Module, got {type(module).__name__}")
        self.module = module
        self.retain_input, self.retain_output = retain_input, retain_output
        self.edit_input, self.edit_output = edit_input, edit_output
        self.input: torch.Tensor | None = None
        self.output = None
        self._handles: list = []
        self._thread: int | None = None

    def _pre(self, module, args):
        if threading.get_ident() != self._thread:
            return None
        if not args:
            if self.edit_input is not None:
                raise RuntimeError(
                    f"Trace cannot edit the input of {type(module).__name__}: it was called without a "
                    "positional argument"
                )
            return None
        x = args[0]
        if self.edit_input is not None:
            new = self.edit_input(x)
            if new is not None:
                x = new
                args = (new, *args[1:])
        if self.retain_input:
            self.input = x.detach()
        return args if self.edit_input is not None else None

    def _post(self, module, args, output):
        if threading.get_ident() != self._thread:
            return None
        if self.edit_output is not None:
            new = self.edit_output(output, args[0] if args else None)
            if new is not None:
                output = new
        if self.retain_output:
            self.output = output.detach() if isinstance(output, torch.Tensor) else output
        return output if self.edit_output is not None else None

    def __enter__(self) -> Trace:
        if self._handles:
            raise RuntimeError("this Trace is already active; create a new one to hook the module again")
        self._thread = threading.get_ident()
        if self.retain_input or self.edit_input is not None:
            self._handles.append(self.module.register_forward_pre_hook(self._pre))
        if self.retain_output or self.edit_output is not None:
            self._handles.append(self.module.register_forward_hook(self._post))
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove the hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
