"""The local server's supervisor withdraws its record and stops only while no command uses it."""

from __future__ import annotations

import fcntl
import json
import os
import threading
import time
from pathlib import Path

import pytest

from loopml.cli.stack import server_watchdog


@pytest.fixture
def config(tmp_path: Path) -> dict:
    used = tmp_path / "server.used"
    used.touch()
    an_hour_ago = time.time() - 3600
    os.utime(used, (an_hour_ago, an_hour_ago))
    server_file = tmp_path / "server.json"
    server_file.write_text(json.dumps({"pid": os.getpid()}))
    return {
        "used_file": str(used),
        "lock_file": str(tmp_path / "server.lock"),
        "server_file": str(server_file),
        "stack_file": str(tmp_path / "stack.json"),  # no `loopml up`
        "api_url": "http://127.0.0.1:9/api",  # nothing listens: no run in flight
        "auth_string": "loopml:secret",
        "idle_seconds": 60.0,
    }


def test_an_idle_server_withdraws_its_record_then_stops(config):
    stopped = []
    assert server_watchdog.retire_if_idle(config, lambda: stopped.append(True))
    assert stopped == [True] and not Path(config["server_file"]).exists()


def test_a_recently_used_server_stays(config):
    Path(config["used_file"]).touch()
    assert not server_watchdog.retire_if_idle(config, pytest.fail)
    assert Path(config["server_file"]).exists()


def test_a_record_of_another_supervisor_is_left_alone(config):
    Path(config["server_file"]).write_text(json.dumps({"pid": os.getpid() + 1}))
    assert server_watchdog.retire_if_idle(config, lambda: None)
    assert Path(config["server_file"]).exists()


def test_a_command_that_found_the_record_meanwhile_keeps_the_server(config, monkeypatch):
    """The supervisor saw it idle, but a command held the lock, read the record and touched the
    last-used file before the supervisor got the lock: it must look again and stay up."""
    checked = threading.Event()
    real_idle = server_watchdog.idle

    def idle_then_tell(*args):
        answer = real_idle(*args)
        checked.set()
        return answer

    monkeypatch.setattr(server_watchdog, "idle", idle_then_tell)
    stopped, result = [], []
    with open(config["lock_file"], "a+") as lock:  # the command's ensure_local_server
        fcntl.flock(lock, fcntl.LOCK_EX)
        supervisor = threading.Thread(
            target=lambda: result.append(
                server_watchdog.retire_if_idle(config, lambda: stopped.append(True))
            )
        )
        supervisor.start()
        assert checked.wait(30)  # the supervisor found it idle and now waits for the lock
        Path(config["used_file"]).touch()
        fcntl.flock(lock, fcntl.LOCK_UN)
    supervisor.join(30)
    assert result == [False] and stopped == []
    assert Path(config["server_file"]).exists()
