"""loopml: workflow-orchestrated MLOps for tabular data.

Pure logic lives in this package (no Prefect imports, nothing done at import time);
Prefect tasks and flows live in the top-level ``tasks`` and ``flows`` packages.
"""

__version__ = "0.1.0"
