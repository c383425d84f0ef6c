"""The embedded stack behind ``loopml up``, split by concern.

``processes`` (child processes, ports, the stack file), ``servers`` (each server's command and
environment), ``notifications`` (the local sink and its webhook block), ``deployments`` (served
deployments, in-flight runs, automations on the Prefect server), ``supervisor`` (the ``Stack``
that starts and stops it all) and ``commands`` (``up``, ``serve``, ``automations``).
"""
