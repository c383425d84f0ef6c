"""The command line's side of the warm process: when it runs a command itself instead."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from loopml.cli import warm


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setattr(warm, "ORIGINAL_ENVIRON", {"LOOPML_HOME": str(home), "PATH": "/bin"})
    return home


def _record(home: Path, **fields) -> None:
    record = {"pid": 1, "token": "t", "fingerprint": warm.fingerprint(warm.ORIGINAL_ENVIRON)}
    (home / "warm.json").write_text(json.dumps({**record, **fields}))


def test_no_warm_process_runs_the_command_here(home: Path) -> None:
    assert warm.try_forward(["score", "churn", "--data", "x.csv"]) is None


def test_a_broken_record_runs_the_command_here(home: Path) -> None:
    _record(home)  # no port
    assert warm.try_forward(["score", "churn"]) is None
    (home / "warm.json").write_text("{not json")
    assert warm.try_forward(["score", "churn"]) is None


def test_another_environment_runs_the_command_here(home: Path) -> None:
    _record(home, port=1, fingerprint="another environment")
    assert warm.try_forward(["score", "churn"]) is None


def test_commands_it_does_not_take_and_help_run_here(home: Path) -> None:
    for argv in (["status", "churn"], ["up"], ["init", "x.csv"], ["score", "--help"], []):
        assert warm.try_forward(argv) is None


def test_a_busy_warm_process_runs_the_command_here(home: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        _record(home, port=server.getsockname()[1])

        def answer_busy() -> None:
            connection, _ = server.accept()
            with connection:
                connection.sendall(b'{"state": "busy"}\n')

        thread = threading.Thread(target=answer_busy)
        thread.start()
        assert warm.try_forward(["monitor", "churn", "--data", "x.csv"]) is None
        thread.join(5)


def test_a_ready_warm_process_gets_the_command_and_its_output_is_relayed(
    home: Path, capsys: pytest.CaptureFixture
) -> None:
    received = {}
    with socket.create_server(("127.0.0.1", 0)) as server:
        _record(home, port=server.getsockname()[1])

        def serve_one() -> None:
            connection, _ = server.accept()
            with connection, connection.makefile("rb") as reader:
                connection.sendall(b'{"state": "ready"}\n')
                received.update(json.loads(reader.readline()))
                for message in (
                    {"stream": "err", "text": "progress\n"},
                    {"stream": "out", "text": "result\n"},
                    {"exit": 3},
                ):
                    connection.sendall(json.dumps(message).encode() + b"\n")

        thread = threading.Thread(target=serve_one)
        thread.start()
        code = warm.try_forward(["monitor", "churn", "--data", "x.csv"])
        thread.join(5)

    assert code == 3
    assert received["argv"] == ["monitor", "churn", "--data", "x.csv"]
    assert received["token"] == "t"
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("result\n", "progress\n")
