"""The recorder core: every site hooked, batches taken through the model, rows handed to a store.

Every recorder (:func:`hp_mini.record_heads`, :func:`~hp_mini.record.images.record_image_heads`,
:func:`~hp_mini.record.stream.record_stream`) is this one loop with other inputs:

1. An **input adapter** (:class:`Inputs`) builds each batch as a :class:`Forward`:
   how to run the model on it, which of its positions hold a real input token
   (not padding), which positions to pool, and the index of its first input.
   Text prompts and a vision-language model's image tokens
   (:class:`~hp_mini.record.prompts.PromptInputs`) and CLIP images
   (:class:`~hp_mini.record.images.ImageInputs`) are adapters.
2. :func:`hooked_sites` hooks the output projection of every site
   (:class:`~hp_mini.model.sites.LayerHeads`) with a :class:`~hp_mini.model.hooks.Trace`
   and hands over, at every forward pass, each site's per-token head outputs
   ``z`` in float32, multiplied on post-norm layers by the norm's per-token
   factor ``1 / rms(o)`` (:meth:`~hp_mini.model.sites.LayerHeads.token_factor`).
3. :class:`Rows` pools them as the batch says: a boolean mask per input (an
   average of the selected positions, with padding never pooled), the same
   positions of every input (a ``slice``: CLIP's CLS token or patches), or
   every real token kept as a row of its own, with its ``(input, position)``.
4. A store (:class:`~hp_mini.record.activations.HeadStore`) keeps the rows:
   as samples, or as streamed moments.

:func:`record_batches` runs the loop.

Example
-------
>>> import torch
>>> from hp_mini.record.core import Forward, Rows
>>> rows = Rows(n_sites=1, shape=(1, 2))
>>> forward = Forward(run=lambda: None, select=torch.tensor([[True, False, True]]))
>>> rows.begin(forward)
>>> rows.take(0, torch.tensor([[[1.0, 2.0], [9.0, 9.0], [3.0, 4.0]]]), None)
>>> rows.end(forward)[0]   # [inputs, sites, heads, d_head]
tensor([[[[2., 3.]]]])
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from hp_mini.model.hooks import Trace
from hp_mini.model.sites import LayerHeads

__all__ = [
    "Forward",
    "Inputs",
    "Rows",
    "Store",
    "choose_sites",
    "hooked_sites",
    "progress_bar",
    "record_batches",
    "select_layers",
]

Take = Callable[[int, torch.Tensor, "torch.Tensor | None"], None]


@dataclass
class Forward:
    """One batch, as an input adapter builds it for the core.

    Attributes
    ----------
    run : callable ``() -> object``
        Runs the model on the batch (its result is not used).
    select : Tensor ``[B, T]`` bool, slice or None
        The positions to pool: one boolean mask per input (each input's
        selected positions are averaged), a ``slice`` of positions shared by
        every input (averaged; for unpadded batches), or None to keep every
        real token as a row of its own.
    real : Tensor ``[B, T]`` bool or None
        The positions that hold an input token (not padding); None when every
        position does. Only read when ``select`` is None.
    first : int
        Index of the batch's first input among all the inputs.
    finish : callable ``(z [B, sites, heads, d_head]) -> Tensor`` or None
        Applied to the batch's pooled rows after the pass (e.g. the division
        by each image's ``ln_post`` scale in CLIP's joint space).
    """

    run: Callable[[], object]
    select: torch.Tensor | slice | None
    real: torch.Tensor | None = None
    first: int = 0
    finish: Callable[[torch.Tensor], torch.Tensor] | None = None


class Inputs(Protocol):
    """An input adapter: ``len(inputs)`` inputs, and the :class:`Forward` of inputs ``start:stop``."""

    def __len__(self) -> int: ...

    def forward(self, start: int, stop: int) -> Forward: ...


class Store(Protocol):
    """Where :func:`record_batches` hands each batch's rows (see :class:`~hp_mini.record.activations.HeadStore`)."""

    def add(self, z: torch.Tensor, bias_factor: torch.Tensor | None = None,
            positions: torch.Tensor | None = None) -> None: ...


def select_layers(sites: list[LayerHeads], layers: Sequence[int] | None, where: str = "the model") -> list[LayerHeads]:
    """The entries of ``sites`` for ``layers`` (all when None), with a clear error when out of range.

    Parameters
    ----------
    sites : list of LayerHeads
        One per layer of the model, in order.
    layers : sequence of int or None
        Layer indices.
    where : str
        How the messages name what holds the layers.

    Returns
    -------
    list of LayerHeads

    Raises
    ------
    TypeError
        ``layers`` is not a list of integers.
    ValueError
        ``layers`` is empty.
    IndexError
        A layer out of range.
    """
    if layers is None:
        return sites
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError("layers must be a list of layer indices, or None for every layer")
    layers = list(layers)
    if len(layers) == 0:
        raise ValueError("layers is empty; pass None for every layer, or at least one layer index")
    wrong = [layer for layer in layers if isinstance(layer, bool) or not isinstance(layer, numbers.Integral)]
    if wrong:
        raise TypeError(f"layers must be integer layer indices, got {wrong}")
    bad = [layer for layer in layers if not 0 <= layer < len(sites)]
    if bad:
        raise IndexError(f"layers {bad} are out of range: {where} has layers 0..{len(sites) - 1}")
    return [sites[layer] for layer in layers]


def choose_sites(sites: list[LayerHeads], layers: Sequence[int] | None, where: str = "the model") -> list[LayerHeads]:
    """:func:`select_layers`, refusing layers whose heads differ in number or width (rows are ``[sites, heads, d_head]``)."""
    chosen = select_layers(sites, layers, where)
    n_heads, d_head = chosen[0].n_heads, chosen[0].d_head
    if any(s.n_heads != n_heads or s.d_head != d_head for s in chosen):
        raise ValueError("recording needs the same number and width of heads in every recorded layer")
    return chosen


@contextlib.contextmanager
def hooked_sites(model: nn.Module, sites: Sequence[LayerHeads], take: Take) -> Iterator[None]:
    """Inside the block, every forward pass of ``model`` hands ``take(i, z, factor)`` for each site ``i``.

    Parameters
    ----------
    model : nn.Module
        Put in evaluation mode for the block (its mode is restored after),
        with gradients off.
    sites : sequence of LayerHeads
        The output projections to hook (with :class:`~hp_mini.model.hooks.Trace`).
    take : callable ``(i, z, factor) -> None``
        Called at each pass of site ``i``'s projection with ``z [B, T,
        heads * d_head]`` float32, the projection's input multiplied by
        ``factor [B, T, 1]``, the post-norm factor ``1 / rms(o)`` of each token,
        on post-norm layers; ``factor`` is None on the others.
    """

    def observer(i: int, site: LayerHeads):
        def observe(output, z):
            zf, factor = z.float(), None
            if site.post_norm is not None:
                factor = site.token_factor(output)  # [B, T, 1], from the real attention output
                zf = zf * factor
            take(i, zf, factor)

        return observe

    was_training = model.training
    model.eval()
    try:
        with contextlib.ExitStack() as stack, torch.no_grad():
            for i, site in enumerate(sites):
                stack.enter_context(Trace(site.module, edit_output=observer(i, site)))
            yield
    finally:
        model.train(was_training)


class Rows:
    """The pooling layer: each site's per-token ``z`` of one batch, reduced to the rows a store keeps.

    Parameters
    ----------
    n_sites : int
    shape : (int, int)
        ``(heads, d_head)`` of every site.

    Notes
    -----
    Call :meth:`begin` before the batch's pass, give :meth:`take` to
    :func:`hooked_sites`, and read the rows with :meth:`end` after the pass.
    A mask averages with weights ``mask / count`` and keeps non-finite values
    of unselected (padded) positions out of the average.
    """

    def __init__(self, n_sites: int, shape: tuple[int, int]):
        self.n_sites, self.shape = n_sites, tuple(shape)
        self.weights: torch.Tensor | None = None
        self.select: torch.Tensor | slice | None = None
        self.real: torch.Tensor | None = None
        self.z: list[torch.Tensor | None] = []
        self.factor: list[torch.Tensor | None] = []

    def begin(self, forward: Forward) -> None:
        """Prepare for the pass of ``forward``."""
        self.select, self.real = forward.select, forward.real
        self.weights = None
        if isinstance(self.select, torch.Tensor):
            mask = self.select.bool()
            self.weights = mask.float() / mask.sum(1, keepdim=True)
        self.z, self.factor = [None] * self.n_sites, [None] * self.n_sites

    def take(self, i: int, z: torch.Tensor, factor: torch.Tensor | None) -> None:
        """Pool site ``i``'s ``z [B, T, heads * d_head]`` (and ``factor [B, T, 1]``, or None)."""
        if self.weights is not None:
            w = self.weights.to(z.device)
            keep = w.unsqueeze(-1) > 0  # where() keeps NaN/inf of padded positions out of the average
            self.z[i] = torch.einsum("bt,btd->bd", w, torch.where(keep, z, torch.zeros((), dtype=z.dtype)))
            if factor is not None:
                self.factor[i] = torch.einsum("bt,bt->b", w, torch.where(keep[..., 0], factor[..., 0], 0.0))
        elif isinstance(self.select, slice):
            self.z[i] = z[:, self.select].mean(1)
            if factor is not None:
                self.factor[i] = factor[:, self.select, 0].mean(1)
        else:
            real = self._real(z)
            self.z[i] = z[real]
            if factor is not None:
                self.factor[i] = factor[..., 0][real]

    def _real(self, z: torch.Tensor) -> torch.Tensor:
        if self.real is None:
            self.real = torch.ones(z.shape[:2], dtype=torch.bool)
        return self.real.to(z.device)

    def end(self, forward: Forward) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The batch's rows: ``(z, bias_factor, positions)``.

        Returns
        -------
        z : Tensor ``[R, sites, heads, d_head]`` float32 on the CPU
            ``R`` is the batch's number of inputs, or of real tokens when
            every token is kept; ``forward.finish`` applied.
        bias_factor : Tensor ``[R, sites]`` or None
            The pooled post-norm factor (1 on other layers); None without post-norm layers.
        positions : Tensor ``[R, 2]`` int64 or None
            For kept tokens: each row's input index (counted from 0 over all
            the inputs) and its position among that input's real tokens.
        """
        if any(z is None for z in self.z):
            raise RuntimeError("the model ran without passing through every recorded site")
        # Sites may sit on different devices (a model split by device_map): rows meet on the CPU.
        z = torch.stack([t.reshape(len(t), *self.shape).float().cpu() for t in self.z], 1)  # type: ignore[union-attr]
        factor = None
        if any(f is not None for f in self.factor):
            factor = torch.stack([f.cpu() if f is not None else torch.ones(len(z)) for f in self.factor], 1)
        positions = None
        if self.select is None:
            real = self.real.cpu()  # type: ignore[union-attr]
            rows = real.nonzero()
            within = (real.long().cumsum(1) - 1)[real]
            positions = torch.stack([rows[:, 0] + forward.first, within], 1)
        if forward.finish is not None:
            z = forward.finish(z)
        return z, factor, positions


def progress_bar(iterable, enabled: bool, desc: str = "recording heads"):
    """``iterable`` behind a tqdm progress bar (on stderr) when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


def record_batches(
    model: nn.Module,
    sites: Sequence[LayerHeads],
    inputs: Inputs,
    store: Store,
    *,
    batch_size: int,
    progress: bool = False,
) -> None:
    """Take ``inputs`` through ``model`` ``batch_size`` at a time and hand every batch's rows to ``store``.

    Parameters
    ----------
    model : nn.Module
    sites : sequence of LayerHeads
        The sites to record, all with the same number and width of heads
        (:func:`choose_sites`).
    inputs : Inputs
        The input adapter.
    store : Store
        Gets ``store.add(z, bias_factor, positions)`` once per batch, in
        order (see :meth:`Rows.end` for the shapes).
    batch_size : int
        Inputs per forward pass.
    progress : bool
        A progress bar over the batches.
    """
    rows = Rows(len(sites), (sites[0].n_heads, sites[0].d_head))
    with hooked_sites(model, sites, rows.take):
        for start in progress_bar(range(0, len(inputs), batch_size), progress):
            forward = inputs.forward(start, min(start + batch_size, len(inputs)))
            rows.begin(forward)
            forward.run()
            store.add(*rows.end(forward))
