"""A figure is rendered to PNG once, and the run's plots and the model card show those bytes."""

from __future__ import annotations

import base64
import multiprocessing
from concurrent.futures import Future

import numpy as np
import pytest
from matplotlib.figure import Figure

from loopml import figures
from loopml.figures import png_bytes
from loopml.model_card import figure_data_uri


@pytest.fixture
def drawn_here(monkeypatch) -> list[Figure]:
    """The figures this process draws (``Figure.savefig`` calls), in order."""
    drawn: list[Figure] = []
    real_savefig = Figure.savefig

    def counting_savefig(self, *args, **kwargs):
        drawn.append(self)
        return real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", counting_savefig)
    return drawn


def test_a_figure_is_rendered_once_and_the_card_embeds_the_same_png(drawn_here):
    figure = Figure()
    figure.add_subplot().plot([0, 1], [1, 0])

    png = png_bytes(figure)
    assert png.startswith(b"\x89PNG")
    uri = figure_data_uri(figure)
    assert base64.b64decode(uri.removeprefix("data:image/png;base64,")) == png
    assert drawn_here == [figure]


def _histograms() -> Figure:
    figure = Figure(figsize=(6, 3), layout="tight")
    for index in range(3):
        axes = figure.add_subplot(1, 3, index + 1)
        axes.hist(np.random.default_rng(index).normal(size=500), bins=20)
        axes.set_title(f"column {index}")
    return figure


def test_a_figure_rendered_ahead_is_drawn_by_the_worker_as_it_would_be_here(drawn_here):
    figures.start_render_worker()
    ahead, here = _histograms(), _histograms()

    figures.render_ahead([ahead, None])

    assert png_bytes(ahead) == png_bytes(here)  # the same PNG, byte for byte
    assert drawn_here == [here]  # the worker drew the other one
    assert png_bytes(ahead) is png_bytes(ahead)  # and it is kept


def test_a_worker_that_dies_costs_only_the_time_the_figure_takes_here():
    figures.start_render_worker()
    worker = figures._render_worker()
    for process in list(worker._processes.values()):
        process.kill()
        process.join()
    figure = _histograms()

    figures.render_ahead([figure])

    assert png_bytes(figure).startswith(b"\x89PNG")
    later = _histograms()
    figures.render_ahead([later])  # a fresh worker takes over
    assert png_bytes(later) == png_bytes(_histograms())


def test_a_worker_that_does_not_answer_is_given_up_on_and_the_figures_are_drawn_here(
    monkeypatch,
):
    waited_for = []

    class Pending(Future):
        def result(self, timeout=None):
            waited_for.append(self)
            return super().result(timeout)

    class HungWorker:  # takes figures and never answers
        def __init__(self):
            self.stopped = False

        def submit(self, *args):
            return Pending()

        def shutdown(self, **kwargs):
            self.stopped = True

    hung = HungWorker()
    monkeypatch.setattr(figures, "_worker", hung)
    monkeypatch.setattr(figures, "RENDER_WAIT_SECONDS", 0.05)
    first, second = _histograms(), _histograms()
    figures.render_ahead([first, second])

    assert png_bytes(first).startswith(b"\x89PNG")  # drawn here after the wait
    assert hung.stopped and figures._worker is None  # given up on
    assert png_bytes(second) == png_bytes(first)  # drawn here too,
    assert len(waited_for) == 1  # without waiting for the worker again


def _draw_ahead_and_return() -> None:
    figure = _histograms()
    figures.render_ahead([figure])
    assert png_bytes(figure).startswith(b"\x89PNG")


def test_a_multiprocessing_child_that_used_the_worker_exits():
    """A deployment run is a multiprocessing child: its exit joins every child process, so the
    worker must be stopped first, or the run's process never ends."""
    child = multiprocessing.get_context("spawn").Process(target=_draw_ahead_and_return)
    child.start()
    child.join(120)
    alive = child.is_alive()
    if alive:
        child.kill()
        child.join()

    assert not alive
    assert child.exitcode == 0


def _draw_in_forked_child(queue) -> None:
    inherited = figures._worker is not None
    figure = _histograms()
    figures.render_ahead([figure])
    queue.put((inherited, figures._worker is not None, png_bytes(figure)[:8]))


def _fork_a_child_that_draws(queue) -> None:
    """In a fresh process (not the test runner, whose threads make a fork unsafe): start a
    worker, then fork a child that draws."""
    figures.start_render_worker()
    parent_worker = figures._render_worker()
    context = multiprocessing.get_context("fork")
    child_queue = context.Queue()
    child = context.Process(target=_draw_in_forked_child, args=(child_queue,))
    child.start()
    inherited, has_worker, png_start = child_queue.get(timeout=120)
    child.join(120)
    kept = figures._render_worker() is parent_worker
    queue.put((inherited, has_worker, png_start, child.exitcode, kept))


def test_a_forked_child_does_not_inherit_the_parents_worker():
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    parent = context.Process(target=_fork_a_child_that_draws, args=(queue,))
    parent.start()
    inherited, has_worker, png_start, child_exit, parent_kept_its_worker = queue.get(timeout=240)
    parent.join(120)

    assert not inherited  # the parent's handle is not the child's worker
    assert has_worker and png_start == b"\x89PNG\r\n\x1a\n"  # its own worker drew it
    assert child_exit == 0
    assert parent_kept_its_worker
    assert parent.exitcode == 0
