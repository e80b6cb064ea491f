"""Every check of a pursuit's input, and what is prepared once per dictionary.

The public functions call these before any computation, so bad input gets a
clear error naming what was wrong, never a failure deep inside the engine.
"""

from __future__ import annotations

import math
import operator
import warnings
import weakref
from dataclasses import dataclass

import torch

from hp_mini.read.dictionary import as_dictionary
from hp_mini.pursuit.result import FactoredSignals

__all__ = [
    "PREPARED",
    "PreparedDictionary",
    "check_criterion",
    "check_dtype",
    "check_factored",
    "check_finite",
    "count",
    "dictionary_atoms",
    "dictionary_matrix",
    "out_dtype",
    "prepare",
    "signals",
    "warn",
]


def check_finite(name: str, t: torch.Tensor) -> None:
    """Raise a ValueError naming ``name`` when ``t`` holds a NaN or an infinity."""
    if t.is_floating_point() and math.isfinite(float(t.sum())):
        return  # one pass, no temporaries: a NaN or an infinity makes the sum one (so may an overflow)
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} contains {bad} NaN or infinite values; the pursuit needs finite numbers")


def count(n_atoms, n_available: int | None = None) -> int:
    """``n_atoms`` as a Python int: any integer type (Python, NumPy, a one-element torch integer tensor).

    Raises a TypeError for anything else, a ValueError below 1 or above ``n_available``.
    """
    if isinstance(n_atoms, bool) or (isinstance(n_atoms, torch.Tensor) and n_atoms.is_floating_point()):
        raise TypeError(f"n_atoms must be an integer, got {n_atoms!r}")
    try:
        k = operator.index(n_atoms)
    except TypeError:
        raise TypeError(f"n_atoms must be an integer, got {type(n_atoms).__name__} {n_atoms!r}") from None
    if k < 1:
        raise ValueError(f"n_atoms must be a positive integer, got {k}")
    if n_available is not None and k > n_available:
        raise ValueError(f"n_atoms={k} is more than the {n_available} atoms in the dictionary")
    return k


def check_dtype(dtype: torch.dtype) -> None:
    """The working precision: float32 or float64."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"dtype must be torch.float32 or torch.float64 (the precision the pursuit computes in), got {dtype}; "
            "inputs in half precision are upcast to it"
        )


def check_criterion(criterion: str, known) -> None:
    """``criterion`` must be one of the names in ``known``."""
    if criterion not in known:
        names = " or ".join(repr(name) for name in known)
        raise ValueError(f"criterion must be {names}, got {criterion!r}")


def out_dtype(t: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """Results come back in the input's precision, at least float32."""
    return t.dtype if t.dtype in (torch.float32, torch.float64) else dtype


def warn(message: str, stacklevel: int = 4) -> None:
    """A RuntimeWarning pointing ``stacklevel`` frames up (at the caller of the public function)."""
    warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


def signals(x, ndim: int, dtype: torch.dtype, *, name: str, hint: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` as a tensor (as given) and in ``dtype``, checked: ``ndim`` dimensions, rows, finite.

    ``hint`` ends the error about the shape (which function takes the other shape).
    """
    x = torch.as_tensor(x)
    shape = "[n, d]" if ndim == 2 else "one signal [d]"
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {shape}, got shape {tuple(x.shape)}{hint}")
    if ndim == 2 and x.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    xd = x.to(dtype)
    check_finite(name, xd)
    return x, xd


@dataclass
class PreparedDictionary:
    """What the engine needs of a dictionary beyond its atoms, computed once per atoms tensor.

    Attributes
    ----------
    version : int or None
        The atoms tensor's version counter when prepared (None: not tracked).
    low : Tensor of shape (v, d), or None
        The float32 copy for the bounds' products, or None when the atoms are
        float32 already (the atoms themselves are never held here, so the cache
        does not keep them alive).
    dmax : float
        The largest atom norm (raised by a relative 1e-12).
    """

    version: int | None
    low: torch.Tensor | None
    dmax: float


# Keyed by id() of the atoms tensor; each entry is dropped when that tensor is
# freed, and redone when it was changed in place (its version counter moved).
# So whatever depends only on the dictionary is prepared once per Dictionary.
PREPARED: dict[int, PreparedDictionary] = {}


def prepare(atoms: torch.Tensor) -> PreparedDictionary:
    """The preparation of ``atoms`` (checked finite), from :data:`PREPARED` when still valid."""
    try:
        version = atoms._version
    except RuntimeError:  # an inference-mode tensor tracks no version: prepare it every time
        version = None
    key = id(atoms)
    known = PREPARED.get(key)
    if known is not None and version is not None and known.version == version:
        return known
    check_finite("the dictionary", atoms)
    low = None if atoms.dtype == torch.float32 else atoms.to(torch.float32)
    norms = torch.linalg.vector_norm(atoms, dim=1, dtype=torch.float64)
    prepared = PreparedDictionary(version, low, float(norms.max()) * (1 + 1e-12))
    if version is not None:
        if known is None:
            weakref.finalize(atoms, PREPARED.pop, key, None)
        PREPARED[key] = prepared
    return prepared


def _atoms(dictionary, d: int) -> tuple[torch.Tensor, list[str]]:
    dic = as_dictionary(dictionary)
    D = dic.atoms
    if D.ndim != 2:
        raise ValueError(f"the dictionary must be [v, d], got shape {tuple(D.shape)}")
    if D.shape[0] == 0:
        raise ValueError("the dictionary is empty: it has no atoms to choose from")
    if D.shape[1] != d:
        raise ValueError(f"the dictionary's atoms are {D.shape[1]} wide but the signals are {d} wide")
    return D, dic.labels


def dictionary_atoms(dictionary, d: int) -> tuple[torch.Tensor, list[str], PreparedDictionary]:
    """The atoms (float32 or float64, not copied when they are already), labels and preparation."""
    D, labels = _atoms(dictionary, d)
    if not D.is_floating_point():
        D = D.to(torch.float64)
    prepared = prepare(D)
    if D.dtype not in (torch.float32, torch.float64):
        D = prepared.low  # half precision: the float32 copy holds the same numbers
    return D, labels, prepared


def dictionary_matrix(dictionary, d: int, dtype: torch.dtype) -> tuple[torch.Tensor, list[str]]:
    """The atoms in ``dtype`` (checked finite there) and their labels."""
    D, labels = _atoms(dictionary, d)
    D = D.to(dtype)
    check_finite("the dictionary", D)
    return D, labels


def check_factored(
    s: FactoredSignals, d: int, *, center: bool, needs_samples: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int, torch.Tensor]:
    """``s`` checked and in ``dtype``: ``W``, the (centred) second moment ``M``, the
    (centred) samples ``Z`` or None, their count and the mean of the coordinates."""
    W = torch.as_tensor(s.W)
    if W.ndim != 2 or W.shape[0] != d:
        raise ValueError(f"{s.name}: W must be [d, r] with d = {d} (the dictionary's width), got shape {tuple(W.shape)}")
    r = W.shape[1]
    W = W.to(dtype)
    check_finite(f"W of {s.name}", W)
    if s.Z is not None:
        Z = torch.as_tensor(s.Z)
        if Z.ndim != 2 or Z.shape[1] != r:
            raise ValueError(f"{s.name}: Z must be [n, {r}] to match W, got shape {tuple(Z.shape)}")
        Z = Z.to(dtype)
        check_finite(f"the samples of {s.name}", Z)
        n, mean = Z.shape[0], Z.mean(0)
        if center:
            Z = Z - mean
        M = Z.T @ Z
    else:
        if needs_samples:
            raise ValueError(
                f"{s.name}: criterion='l1' needs every sample (Z), but only moments were given; "
                "use criterion='l2' or give Z"
            )
        n, mean, M = _moments(s, r, dtype)
        if not center:
            M = M + n * torch.outer(mean, mean)
        Z = None
    if n < 1:
        raise ValueError(f"{s.name} has no samples")
    return W, M, Z, n, mean


def _moments(s: FactoredSignals, r: int, dtype: torch.dtype) -> tuple[int, torch.Tensor, torch.Tensor]:
    if s.n is None or s.mean is None or s.scatter is None:
        raise ValueError(f"{s.name}: give either Z, or all of n, mean and scatter")
    n = operator.index(s.n)
    mean = torch.as_tensor(s.mean).to(dtype)
    M = torch.as_tensor(s.scatter).to(dtype)
    if mean.shape != (r,) or M.shape != (r, r):
        raise ValueError(
            f"{s.name}: mean must be [{r}] and scatter [{r}, {r}] to match W, "
            f"got {tuple(mean.shape)} and {tuple(M.shape)}"
        )
    check_finite(f"the moments of {s.name}", torch.cat([mean, M.flatten()]))
    return n, mean, M
