"""A figure is rendered to PNG once, and the run's plots and the model card show those bytes."""

from __future__ import annotations

import base64

from matplotlib.figure import Figure

from loopml.figures import png_bytes
from loopml.model_card import figure_data_uri


def test_a_figure_is_rendered_once_and_the_card_embeds_the_same_png(monkeypatch):
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])
    renders = []
    real_savefig = Figure.savefig

    def counting_savefig(self, *args, **kwargs):
        renders.append(self)
        return real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", counting_savefig)

    png = png_bytes(figure)
    assert png.startswith(b"\x89PNG")
    uri = figure_data_uri(figure)
    assert base64.b64decode(uri.removeprefix("data:image/png;base64,")) == png
    assert renders == [figure]
