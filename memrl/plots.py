"""The few matplotlib moves that the run report, `memrl eval` and the benchmarks share: a figure saved as a PNG
and closed, a curve with or without error bars, labelled axes. matplotlib is imported only when a plot is drawn,
on the Agg backend (files only, no display), so importing a module that plots costs nothing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def pyplot():
    """`matplotlib.pyplot` on the Agg backend, imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextmanager
def figure(path: Path, figsize: tuple[float, float], ncols: int = 1, dpi: int = 120) -> Iterator[list[Axes]]:
    """A row of `ncols` axes (a list, left to right) to draw on; on leaving the block the figure is laid out
    tight and saved to `path` as a PNG at `dpi`. It is closed either way, so an error leaks no figure."""
    plt = pyplot()
    fig, axes = plt.subplots(1, ncols, figsize=figsize, squeeze=False)
    try:
        yield list(axes[0])
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def series(ax: Axes, xs: Sequence[float], ys: Sequence[float], err=None, capsize: float = 3, **style) -> None:
    """One curve on `ax`, circle markers unless `style` says otherwise: a line, or with `err` (matplotlib's `yerr`:
    a half-width per point, or [below, above] lists) error bars with caps `capsize` points wide. `style` goes to
    `ax.plot` / `ax.errorbar` (label, linestyle, color, ms...)."""
    style.setdefault("marker", "o")
    if err is None:
        ax.plot(xs, ys, **style)
    else:
        ax.errorbar(xs, ys, yerr=err, capsize=capsize, **style)


def label_axes(ax: Axes, xlabel: str, ylabel: str, title: str | None = None, *, title_size: float | None = None,
               legend_size: float | None = None) -> None:
    """Axis labels, an optional title (`title_size` points, else matplotlib's title size), a light grid, and a
    legend (`legend_size` points) when any curve on `ax` has a label: empty axes get no legend warning."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title, **({} if title_size is None else {"fontsize": title_size}))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=legend_size)


def log2_x(ax: Axes, ticks: Sequence[float] | None = None) -> None:
    """A base-2 log x axis (for N = 1, 2, 4...); with `ticks`, ticks at exactly those values, written as plain
    numbers (8, not 2^3) and without minor-tick labels."""
    ax.set_xscale("log", base=2)
    if ticks is not None:
        from matplotlib.ticker import NullFormatter, ScalarFormatter

        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
