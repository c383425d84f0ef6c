"""The champion served outside loopml (``mlflow.pyfunc.load_model("models:/NAME@champion")``)
when an integer column of the training table already holds nulls.

Parquet keeps such a column as pandas' nullable Int64; CSV reads it back as float64. Whichever
form the model was trained from, its training rows, read either way, must pass the logged
signature and get the predictions ``loopml score`` writes. Everything runs for real: the train
and score flows in this process against the session's Prefect server, MLflow on SQLite.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.types import DataType
from threadpoolctl import threadpool_limits

from tests.conftest import init_project
from tests.integration.conftest import unique_project_name

TARGET = "y"
TRAINING_ROWS = 400
SEARCH_TRIALS = 3


def counts_table(rows: int = TRAINING_ROWS, seed: int = 0) -> pd.DataFrame:
    """A regression table whose integer column ``visits`` holds 20 % nulls; ``area`` is an
    integer column without nulls."""
    generator = np.random.default_rng(seed)
    x1, x2 = generator.normal(size=rows), generator.normal(size=rows)
    flag_a = generator.random(rows) < 0.5
    visits = pd.array(generator.integers(0, 10, rows), dtype="Int64")
    visits[generator.random(rows) < 0.2] = pd.NA
    area = generator.integers(40, 200, rows)
    signal = 10 * x1 + 5 * flag_a - 3 * x2 + visits.fillna(5).to_numpy(float) + 0.02 * area
    return pd.DataFrame(
        {
            "x1": x1,
            "x2": x2,
            "flag_a": flag_a,
            "flag_b": generator.random(rows) < 0.3,
            "visits": visits,
            "area": area,
            TARGET: (signal + generator.normal(size=rows)).round().astype(int),
        }
    )


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


@dataclass
class TrainedFromNulls:
    name: str
    project_dir: Path
    training_path: Path  # the training table, as Parquet or as CSV


@pytest.fixture(scope="module", params=["parquet", "csv"])
def trained(request, prefect_server, tmp_path_factory) -> Iterator[TrainedFromNulls]:
    """A champion trained by ``loopml train``'s flow from the table written as Parquet or CSV,
    with the environment (LOOPML_HOME, MLflow, Prefect API) pointing at it."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.training import train_flow

    root = tmp_path_factory.mktemp(f"nullable-{request.param}")
    home, project_dir = root / "home", root / "project"
    home.mkdir()
    project_dir.mkdir()
    name = unique_project_name(f"nullable_{request.param}")
    api_url = prefect_server.api_url
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOOPML_HOME", str(home))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        patch.setenv("PREFECT_API_URL", api_url)
        patch.setenv("OMP_NUM_THREADS", "1")
        for variable in ("MLFLOW_REGISTRY_URI", "LOOPML_OPTUNA_STORAGE", "LOOPML_DASK_ADDRESS"):
            patch.delenv(variable, raising=False)
        with temporary_settings(updates={PREFECT_API_URL: api_url}), threadpool_limits(limits=1):
            training_path = write_table(counts_table(), project_dir / f"counts.{request.param}")
            init_project(training_path, TARGET, name, project_dir)
            config_path = project_dir / "configs" / f"{name}.yaml"
            raw = yaml.safe_load(config_path.read_text())
            raw["search"].update(families=["ridge"], trials=SEARCH_TRIALS, timeout_seconds=120)
            config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
            result = train_flow(project=name, project_dir=str(project_dir))
            assert result["promoted"], result
            yield TrainedFromNulls(name, project_dir, training_path)


def score(trained: TrainedFromNulls, source: Path) -> pd.DataFrame:
    """What ``loopml score`` writes for ``source``."""
    from flows.scoring import score_flow

    out = source.with_name(f"{source.stem}-{source.suffix[1:]}-scored.csv")
    score_flow(
        project=trained.name, data=str(source), out=str(out), project_dir=str(trained.project_dir)
    )
    return pd.read_csv(out)


def test_training_rows_read_from_csv_or_parquet_pass_pyfunc_with_loopml_scores(trained, tmp_path):
    """The first 150 training rows (nulls in ``visits`` included), as Parquet gives them
    (Int64) and as CSV gives them (float64): pyfunc predicts what ``loopml score`` wrote."""
    rows = counts_table().iloc[:150]  # the training table's first rows, written both ways
    assert rows["visits"].hasnans
    batches = {
        "parquet": write_table(rows, tmp_path / "batch.parquet"),
        "csv": write_table(rows, tmp_path / "batch.csv"),
    }
    assert isinstance(read_table(batches["parquet"])["visits"].dtype, pd.Int64Dtype)
    assert read_table(batches["csv"])["visits"].dtype == np.float64
    written = score(trained, batches[trained.training_path.suffix[1:]])["prediction"]
    served_model = mlflow.pyfunc.load_model(f"models:/{trained.name}@champion")

    for table_format, batch in batches.items():
        served = served_model.predict(read_table(batch))

        np.testing.assert_allclose(
            np.asarray(served, dtype=float), written.to_numpy(), rtol=1e-9, err_msg=table_format
        )


def test_columns_without_nulls_keep_their_types_and_refuse_new_nulls(trained):
    """Only the integer column that held nulls is widened: ``area`` stays ``long``, so a batch
    with a null in it is refused as the README says (``loopml score`` imputes it instead)."""
    served_model = mlflow.pyfunc.load_model(f"models:/{trained.name}@champion")
    schema = served_model.metadata.get_input_schema().input_dict()
    assert schema["area"].type == DataType.long
    assert schema["x1"].type == DataType.double
    assert schema["flag_a"].type == DataType.boolean
    assert schema["visits"].type not in (DataType.long, DataType.double)

    rows = read_table(trained.training_path).iloc[:20]
    rows["area"] = rows["area"].astype(float)
    rows.loc[rows.index[3], "area"] = np.nan
    with pytest.raises(MlflowException, match="area"):
        served_model.predict(rows)
