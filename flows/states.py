"""Named final states of loopml's flow runs.

A batch that fails its suite is not a broken run: validation did its job and the batch is
quarantined. Such a run ends in a ``Failed``-type state named ``Quarantined`` (Prefect 3 lets a
flow return a state of any type under its own name). Why Failed-type and not Completed-type: the
batch was not scored or monitored, the CLI exits non-zero, and the caller (the CLI, the inbox
flow) gets the ``ValidationFailed`` back from the run, which Prefect only does for a failed
state. Why a name: Prefect names the run's state event after it (``prefect.flow-run.Quarantined``),
so the runs list shows "Quarantined" and the failure notification (which expects
``prefect.flow-run.Failed`` / ``Crashed``) does not fire.
"""

from __future__ import annotations

from prefect.states import Failed, State

from loopml.errors import ValidationFailed

QUARANTINED = "Quarantined"


def quarantined(error: ValidationFailed) -> State:
    """The final state of a run whose batch was quarantined; ``error`` is what callers get."""
    return Failed(name=QUARANTINED, message=str(error), data=error)
