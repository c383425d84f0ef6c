"""Reading tables (CSV, Parquet, SQL) and fingerprinting them. I/O lives here, at the edge."""

from __future__ import annotations

import csv
import gzip
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from loopml.errors import DataError

CSV_SUFFIXES = {".csv", ".txt", ".tsv"}
CSV_DELIMITERS = ",;\t|"  # the ones spreadsheets and databases export with
SNIFF_BYTES = 64 * 1024
PARQUET_SUFFIXES = {".parquet", ".pq"}

OUTPUT_SUFFIXES = (".csv", ".parquet", ".pq")


def check_output_path(path: Path | None) -> None:
    """Refuse an output format loopml would not really write (``x.xlsx`` holding CSV bytes);
    ``None`` (no output file) passes."""
    if path is not None and path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise DataError(
            f"cannot write {path.name}: --out must end in .csv or .parquet "
            f"(not {path.suffix or 'no suffix'})"
        )


def _table_kind(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes[-1:] == [".gz"] or suffixes[-1:] == [".zip"]:
        suffixes = suffixes[:-1]
    suffix = suffixes[-1] if suffixes else ""
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in CSV_SUFFIXES:
        return "csv"
    raise DataError(
        f"{path}: unsupported file type {suffix or '(none)'!r}; "
        "use CSV (.csv) or Parquet (.parquet)"
    )


def csv_separator(path: Path) -> str:
    """The field separator of a delimited text file: tab for ``.tsv``, else sniffed from its
    start among ``, ; tab |`` (European exports use ``;``), falling back to a comma."""
    if ".tsv" in [suffix.lower() for suffix in path.suffixes]:
        return "\t"
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes[-1:] == [".zip"]:
        return ","
    opener = gzip.open if suffixes[-1:] == [".gz"] else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as handle:
            sample = handle.read(SNIFF_BYTES)
    except OSError:
        return ","  # pandas reports the unreadable file
    header = sample.splitlines()[0] if sample else ""
    try:
        separator = csv.Sniffer().sniff(sample, delimiters=CSV_DELIMITERS).delimiter
    except csv.Error:
        separator = max(CSV_DELIMITERS, key=header.count)
    if header.count(separator) == 0 and header.count(",") > 0:
        return ","
    return separator if header.count(separator) > 0 else ","


def read_table(
    path: str | Path, *, sql_url: str | None = None, columns: list[str] | None = None
) -> pd.DataFrame:
    """Read a whole table from a CSV or Parquet file, or a SQL query when ``sql_url`` is given.

    ``columns`` reads only those of them the file has, with text as pandas categories: a
    1M-row reference then costs its numbers and a few small codes, not a Python string per cell.

    Raises:
        DataError: missing, empty, unreadable or of an unsupported type.
    """
    if sql_url:
        return read_sql(str(path), sql_url)
    if columns is not None:
        return _read_columns(Path(path), columns)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = _table_kind(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    try:
        if kind == "parquet":
            _decode_on_every_core()
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, sep=csv_separator(path), low_memory=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: cannot be read as {kind.upper()}: {_first_line(exc)}") from exc
    except Exception as exc:  # pyarrow raises its own types for corrupt Parquet
        raise DataError(f"{path}: cannot be read as {kind.upper()}: {_first_line(exc)}") from exc
    if frame.empty:
        raise DataError(f"{path}: the table has no rows")
    frame.columns = [str(column) for column in frame.columns]
    return frame


def _read_columns(path: Path, columns: list[str]) -> pd.DataFrame:
    if _table_kind(path) != "parquet" or not path.is_file():
        frame = read_table(path)
        kept = frame[[column for column in columns if column in frame.columns]]
        return kept.astype({c: "category" for c in kept.columns if kept[c].dtype == object})
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises its own types for corrupt Parquet
        raise DataError(f"{path}: cannot be read as PARQUET: {_first_line(exc)}") from exc
    wanted = [name for name in columns if name in schema.names]
    text = [name for name in wanted if pa.types.is_string(schema.field(name).type)]
    _decode_on_every_core()
    # Each column handed to pandas as it is converted (self_destruct), one block per column:
    # ``pd.read_parquet`` held the whole Arrow table beside the whole frame (1M rows x 20
    # columns: 329 MB at the peak against 252 MB, measured). Readers take a column at a time.
    table = pq.read_table(path, columns=wanted, read_dictionary=text, use_pandas_metadata=True)
    frame = table.to_pandas(split_blocks=True, self_destruct=True)
    del table
    if frame.empty:
        raise DataError(f"{path}: the table has no rows")
    return frame


def _decode_on_every_core() -> None:
    """Let pyarrow decode Parquet on every core this process may use.

    pyarrow sizes its thread pool from ``OMP_NUM_THREADS``, which loopml sets to
    ``LOOPML_MAX_THREADS`` (default 1) for scikit-learn's OpenMP loops: every Parquet read then
    decoded on one thread (a 1M-row x 20-column reference: 0.8 s against 0.3 s on two cores,
    measured). A read is a short burst; the search's parallelism is not affected.
    """
    cores = len(os.sched_getaffinity(0))
    if pa.cpu_count() < cores:
        pa.set_cpu_count(cores)


def release_read_buffers() -> None:
    """Give back to the system the memory pyarrow's pool keeps after a large read.

    pyarrow's allocator (mimalloc) holds freed pages for its own reuse, and pandas allocates
    elsewhere: a 1M-row x 20-column Parquet reference read once stayed resident (~300 MB,
    measured) in a process that lives on (the warm process, the runner's forks).
    """
    pa.default_memory_pool().release_unused()


_PARQUET_READ_BYTES = 1 << 20  # how much of a column chunk a streamed Parquet read holds


def iter_table_chunks(
    path: str | Path, chunk_rows: int = 100_000, *, text_as_categories: bool = False
) -> Iterator[pd.DataFrame]:
    """Yield a CSV or Parquet file in chunks of about ``chunk_rows`` rows (memory stays flat).

    ``text_as_categories``: a Parquet file's text columns come as pandas categories (its
    dictionary pages as they are), not as a Python string per cell: a pass that only reads
    them costs a fraction of the time and memory (CSV chunks are read as usual).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = _table_kind(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            # pre_buffer=False: with pyarrow's default, memory grows with every batch read
            # until the file closes (~6.5 MB per 100k rows), which breaks flat-memory reading.
            # buffer_size: without it a row group's column chunks are read whole before its
            # first batch, so a file written as one row group cost its whole size (4M rows x
            # 21 columns: pyarrow's pool peaked at 694 MB; with 1 MB reads, 99 MB and faster).
            text = None
            if text_as_categories:
                schema = pq.read_schema(path)
                text = [
                    name for name in schema.names if pa.types.is_string(schema.field(name).type)
                ]
            parquet = pq.ParquetFile(
                path, pre_buffer=False, buffer_size=_PARQUET_READ_BYTES, read_dictionary=text
            )
            _decode_on_every_core()
            for record_batch in parquet.iter_batches(batch_size=chunk_rows):
                yield record_batch.to_pandas()
        else:
            yield from pd.read_csv(
                path, sep=csv_separator(path), chunksize=chunk_rows, low_memory=False
            )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as {kind.upper()}: {_first_line(exc)}") from exc
    except (pa.ArrowException, OSError) as exc:  # a corrupt or truncated Parquet file
        raise DataError(f"{path}: cannot be read as {kind.upper()}: {_first_line(exc)}") from exc


def read_sql(query: str, url: str) -> pd.DataFrame:
    """Run ``query`` against the SQLAlchemy database ``url``.

    ``$VAR`` / ``${VAR}`` in the URL are read from the environment when the query runs, so a
    config can name ``postgresql://app:${LOANS_DB_PASSWORD}@db/loans`` without the password.

    Raises:
        DataError: the URL names an unset variable, the query failed or returned no rows.
    """
    import sqlalchemy

    expanded = os.path.expandvars(url)
    unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expanded)
    if unset:
        raise DataError(f"the database URL needs environment variable {unset[0]}, which is unset")
    try:
        engine = sqlalchemy.create_engine(expanded)
        with engine.connect() as connection:
            frame = pd.read_sql_query(sqlalchemy.text(query), connection)
    except Exception as exc:
        raise DataError(f"SQL query failed on {_redact(url)}: {_first_line(exc)}") from exc
    finally:
        if "engine" in locals():
            engine.dispose()
    if frame.empty:
        raise DataError("the SQL query returned no rows")
    return frame


def arrow_table(frame: pd.DataFrame) -> pa.Table:
    """``frame`` as an Arrow table; object columns mixing types (``True`` beside ``"True"``,
    numbers beside text) are kept as text rather than refused."""
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        mixed = frame.select_dtypes(include="object").columns
        return pa.Table.from_pandas(
            frame.astype({column: "string" for column in mixed}), preserve_index=False
        )


def write_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` to Parquet at ``path`` (mixed-type object columns as text)."""
    pq.write_table(arrow_table(frame), path)
    return Path(path)


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write CSV or Parquet by the file's suffix, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _table_kind(path) == "parquet":
        write_parquet(frame, path)
    else:
        frame.to_csv(path, index=False)
    return path


def frame_hash(frame: pd.DataFrame) -> str:
    """A content hash of a table (columns, dtypes and values; row order matters)."""
    digest = hashlib.sha256()
    digest.update("|".join(f"{c}:{t}" for c, t in frame.dtypes.astype(str).items()).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def file_hash(path: str | Path) -> str:
    """A content hash of a file's bytes, read in blocks.

    Raises:
        DataError: no such file, or not a CSV/Parquet file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    _table_kind(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def batch_id(path: str | Path) -> str:
    """The id every command gives a batch file: ``b`` + its content hash (:func:`file_hash`),
    so scoring, monitoring, the inbox and explain name the same file's rows alike."""
    return "b" + file_hash(path)


def bundled_sample_path() -> Path:
    """The Telco churn sample shipped with loopml."""
    return Path(__file__).parent / "data" / "telco_churn.csv"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
