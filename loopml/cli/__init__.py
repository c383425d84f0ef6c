"""The ``loopml`` command line: the top layer, the only package that imports flows/.

``app`` holds the Typer app and the list of commands, ``common`` the shared options and how a
command runs, one module per command group (``project``, ``registry``, ``demo``), and ``stack/``
the embedded stack behind ``loopml up``. See docs/architecture.md.
"""

from loopml.cli.app import app, main

__all__ = ["app", "main"]
