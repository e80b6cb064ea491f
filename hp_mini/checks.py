"""Argument checks shared by the public functions: counts, devices, models that hold their weights, renamed keywords.

:func:`check_device` refuses a device that torch does not know, that this
machine lacks, or ``meta``, before anything is loaded onto it. :func:`check_count` turns a count argument (``batch_size``, ``max_new_tokens``)
into an ``int`` or says what is wrong with it; :func:`check_weights_loaded`
refuses a model whose parameters are on the ``meta`` device (shapes without
values), so that recording, editing and generation fail with one clear message
rather than deep inside torch. :func:`check_prompts` turns prompts into a list of strings
or says which one is wrong. :func:`renamed_keywords` keeps an old keyword
working, with a ``DeprecationWarning`` that names the new one.

Example
-------
>>> from hp_mini.checks import check_count
>>> check_count(3, "batch_size")
3
>>> check_count(2.5, "batch_size")
Traceback (most recent call last):
...
TypeError: batch_size must be an integer, got 2.5 (float)
"""

from __future__ import annotations

import functools
import operator
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

__all__ = ["check_count", "check_device", "check_prompts", "check_weights_loaded", "renamed_keywords"]

_F = TypeVar("_F", bound=Callable)


def check_count(value, name: str, *, minimum: int = 1) -> int:
    """``value`` as an ``int`` of at least ``minimum``.

    Parameters
    ----------
    value
        An integer: a Python ``int``, a NumPy integer or an integer 0-d tensor.
    name : str
        The argument's name, for the error messages.
    minimum : int, default 1
        The smallest value allowed.

    Returns
    -------
    int

    Raises
    ------
    TypeError
        For a bool, a float (even ``3.0``), a string or anything else that is
        not an integer.
    ValueError
        For an integer below ``minimum``.
    """
    is_bool = isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool)
    try:
        if is_bool:
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})") from None
    if number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    return number


def check_prompts(prompts, where: str, *, allow_empty: bool = True) -> list[str]:
    """``prompts`` as a list of at least one string (one string is a list of one).

    Parameters
    ----------
    prompts : str or iterable of str
    where : str
        The function asking (``"copy_scores"``), for the message.
    allow_empty : bool, default True
        Whether an empty string is a prompt.

    Returns
    -------
    list of str

    Raises
    ------
    ValueError
        No prompts, or (``allow_empty=False``) an empty one, named by its index.
    TypeError
        A prompt that is not a string, named by its index.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError(f"{where} needs at least one prompt")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompt {i} is a {type(prompt).__name__}, not a string")
        if not allow_empty and prompt == "":
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token")
    return prompts


def check_weights_loaded(model: nn.Module, where: str) -> None:
    """Refuse a model whose parameters are on the ``meta`` device.

    Parameters on the meta device have a shape but no values (a model built
    under ``torch.device("meta")`` or ``init_empty_weights``). Those that
    accelerate loads for each forward pass (a ``device_map`` offloading layers
    to the CPU or to disk) are fine.

    Parameters
    ----------
    model : nn.Module
    where : str
        The function asking (``"record_heads"``), for the message.

    Raises
    ------
    ValueError
        Naming the first parameter without values.
    """
    if not any(p.is_meta for p in model.parameters()):
        return
    from accelerate.utils import has_offloaded_params

    def empty(module: nn.Module, prefix: str, loaded_by_hook: bool) -> str | None:
        loaded_by_hook = loaded_by_hook or has_offloaded_params(module)
        if not loaded_by_hook:
            for name, p in module.named_parameters(recurse=False):
                if p.is_meta:
                    return prefix + name
        for child_name, child in module.named_children():
            found = empty(child, f"{prefix}{child_name}.", loaded_by_hook)
            if found is not None:
                return found
        return None

    name = empty(model, "", False)
    if name is not None:
        raise ValueError(
            f"{where}: {type(model).__name__}'s parameter {name} is on the meta device: it has a shape but no "
            "values, so the model cannot run. Load the weights first (hp_mini.load_model, or "
            "model.to_empty(device=...) and then load_state_dict)"
        )


def check_device(device, name: str = "device") -> torch.device:
    """``device`` as a :class:`torch.device` that this machine has, or a clear error.

    Parameters
    ----------
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, ...
    name : str, default "device"
        How the caller names the argument (``"load_model: device"``, ``"--device"``),
        for the messages.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        A device torch does not know, one this machine lacks (no GPU, or an
        index past the last one), or ``meta`` (shapes without values: nothing
        can run on it).
    """
    shown = f"{name}={str(device)!r}"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"{shown} is not a device torch knows ({err}); use e.g. 'cpu', 'cuda', 'cuda:1' or 'mps'") from None
    if parsed.type == "meta":
        raise ValueError(
            f"{shown}: the 'meta' device holds only the shapes of the weights, not their values, so the model "
            "could not run; use 'cpu' or a GPU (device_map='auto' with an offload folder keeps weights on disk)"
        )
    if parsed.type == "cpu":
        return parsed
    backend = torch.backends.mps if parsed.type == "mps" else getattr(torch, parsed.type, None)
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        build = f", built with CUDA {torch.version.cuda}" if parsed.type == "cuda" and torch.version.cuda else ""
        raise ValueError(
            f"{shown}, but this machine has no {parsed.type} device that torch {torch.__version__}{build} can "
            "use; use 'cpu'"
        )
    count = getattr(torch.cuda if parsed.type == "cuda" else backend, "device_count", None)
    if parsed.index is not None and count is not None and parsed.index >= count():
        raise ValueError(f"{shown}, but this machine has {count()} {parsed.type} device(s), numbered from 0")
    return parsed


def renamed_keywords(**old_to_new: str) -> Callable[[_F], _F]:
    """Decorator: keep accepting renamed keywords, with a ``DeprecationWarning`` naming the new one.

    Parameters
    ----------
    **old_to_new : str
        Each old keyword and the name it now has (``heads="sites"``).

    Returns
    -------
    callable
        A decorator. The function it wraps gets the value of an old keyword
        under its new name; giving both is a ``TypeError``.

    Examples
    --------
    >>> import warnings
    >>> @renamed_keywords(texts="prompts")
    ... def count(prompts):
    ...     return len(prompts)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     count(texts=["a", "b"])
    2
    >>> str(caught[0].message)
    "count: the keyword 'texts' is now called 'prompts'; write prompts=... (texts= will stop working)"
    """

    def decorate(function: _F) -> _F:
        where = function.__qualname__

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{where}: give {new}= only ({old}= is its old name), not both")
                warnings.warn(
                    f"{where}: the keyword {old!r} is now called {new!r}; write {new}=... ({old}= will stop working)",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
