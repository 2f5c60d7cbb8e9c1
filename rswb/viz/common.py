"""Small computations and widgets several figure modules share (no model is run here)."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["figure_picker", "fig_png", "pca_2d", "picture_box"]


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components ``[N, 2]`` and their share of the variance ``[2]``."""
    x = x - x.mean(0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    # The sign of a singular vector is arbitrary: make each one's largest loading positive, so plots are stable.
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(1)])
    signs[signs == 0] = 1
    y = (u * s * signs)[:, :2]
    var = s**2
    share = var[:2] / var.sum() if var.sum() > 0 else np.zeros(2)
    if y.shape[1] < 2:  # a single component (K = 1, or one distinct code): pad with zeros
        y = np.pad(y, ((0, 0), (0, 2 - y.shape[1])))
        share = np.pad(share, (0, 2 - len(share)))
    return y, share


def figure_picker(views: Mapping[str, Callable[[], Any]], value: str | None = None,
                  description: str = "show") -> Any:
    """A dropdown that switches which figure is shown.

    Each view is drawn on first selection (then cached) and shown as a PNG in an ``ipywidgets.Image``: an image
    widget's state is plain data, so the picker also builds and draws its first view headless (papermill, a plain
    Python process) where an ``Output`` widget would need a frontend.

    Args:
        views: ``{name: callable () -> matplotlib Figure}``.
        value: the view shown first (default: the first one).
        description: the dropdown's label.

    Returns:
        A :func:`picture_box`: the ``Dropdown``, then the ``Image`` (its picture is also the static fallback).

    Raises:
        ImportError: ipywidgets is not installed (``pip install 'rswb[notebooks]'``).
        ValueError: ``views`` is empty or ``value`` is not one of them.
    """
    try:
        import ipywidgets as widgets
    except ImportError as err:
        raise ImportError("figure_picker needs ipywidgets (pip install 'rswb[notebooks]')") from err
    import matplotlib.pyplot as plt

    if not views:
        raise ValueError("figure_picker needs at least one view")
    first = next(iter(views)) if value is None else value
    if first not in views:
        raise ValueError(f"{first!r} is not one of the views: {', '.join(views)}")
    pick = widgets.Dropdown(options=list(views), value=first, description=description)
    image = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
    cache: dict[str, bytes] = {}

    def show(*_: Any) -> None:
        if pick.value not in cache:
            fig = views[pick.value]()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", bbox_inches="tight")
            plt.close(fig)  # shown through the widget only, not again by the inline backend
            cache[pick.value] = buf.getvalue()
        image.value = cache[pick.value]

    pick.observe(show, names="value")
    show()
    return picture_box([pick, image], lambda: image.value)


def fig_png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (tight bounding box)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


_PICTURE_BOX: type | None = None


def picture_box(children: list[Any], fallback: Callable[[], bytes | None]) -> Any:
    """An ``ipywidgets.VBox`` whose display also carries a PNG of its current picture.

    JupyterLab renders the live widget (its mime type ranks first); an HTML export without the widget's state or
    without a network to load the widget library from (``rswb notebooks run`` drops the state, so the pages work
    offline) shows the PNG instead of an empty box.

    Args:
        children: the box's widgets.
        fallback: ``() -> PNG bytes`` of what the widget shows now (``None``: no picture yet).
    """
    global _PICTURE_BOX
    import ipywidgets as widgets

    if _PICTURE_BOX is None:
        class PictureBox(widgets.VBox):
            """A VBox with a static PNG beside its widget view (see :func:`picture_box`)."""

            def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
                import base64

                data = dict(super()._repr_mimebundle_(**kwargs) or {})
                png = self._rswb_fallback()
                if png:
                    data["image/png"] = base64.b64encode(png).decode("ascii")
                return data

        _PICTURE_BOX = PictureBox
    box = _PICTURE_BOX(children)
    box._rswb_fallback = fallback
    return box
