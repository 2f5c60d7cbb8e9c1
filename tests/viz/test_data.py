"""Notebook 01's class browser: one class's images in a row, and the dropdown that switches between classes."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from rswb.data.scenes import SceneFolder  # noqa: E402
from rswb.data.synthetic import ensure_embedded  # noqa: E402
from rswb.viz import class_browser, figure_picker, plot_class_images  # noqa: E402


@pytest.fixture(scope="module")
def folder():
    return SceneFolder(ensure_embedded("scenes"))


def test_plot_class_images_shows_the_first_n_images_of_the_class_with_their_names(folder):
    label = 3
    expected = [r.path for r in folder.records if r.label == label][:5]
    fig = plot_class_images(folder, label, n=5, size=32)
    axes = fig.axes
    assert len(axes) == 5 and [ax.get_title() for ax in axes] == [Path(p).name for p in expected]
    assert all(ax.images[0].get_array().shape[:2] == (32, 32) for ax in axes)
    assert folder.classes[label] in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="no class 99"):
        plot_class_images(folder, 99)


def test_class_browser_switches_the_picture_with_the_dropdown(folder):
    pytest.importorskip("ipywidgets")
    box = class_browser(folder, n=3, size=32)
    pick, image = box.children
    assert list(pick.options) == list(folder.classes) and pick.value == folder.classes[0]
    first = bytes(image.value)
    assert first.startswith(b"\x89PNG")
    pick.value = folder.classes[1]
    assert bytes(image.value) != first and bytes(image.value).startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="at least one view"):
        figure_picker({})


def test_widgets_carry_their_picture_for_pages_without_the_widget_library():
    """An HTML export without widget state (or offline) shows the PNG the widget carries, not an empty box."""
    import base64

    import matplotlib.pyplot as plt

    from rswb.viz import figure_picker

    def view(colour):
        def draw():
            fig, ax = plt.subplots(figsize=(1, 1))
            ax.set_facecolor(colour)
            return fig
        return draw

    picker = figure_picker({"red": view("red"), "blue": view("blue")})
    bundle = picker._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle  # JupyterLab still renders the live widget
    image = picker.children[1]
    assert base64.b64decode(bundle["image/png"]) == image.value
    picker.children[0].value = "blue"  # the fallback follows what the widget shows now
    assert base64.b64decode(picker._repr_mimebundle_()["image/png"]) == image.value != base64.b64decode(
        bundle["image/png"])
