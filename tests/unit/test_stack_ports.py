"""`loopml up`'s ports are checked before anything starts, each error one line naming the flag."""

from __future__ import annotations

import socket

import pytest

from loopml.cli.stack.processes import StackPorts, check_ports
from loopml.errors import StackError
from tests.conftest import free_port


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_a_port_that_is_not_a_port_number_is_refused(port):
    ports = StackPorts(prefect=port, mlflow=free_port(), evidently=free_port())
    with pytest.raises(StackError, match=rf"port {port} \(prefect\) is not a port number"):
        check_ports(ports)


def test_a_port_in_use_is_refused_and_a_skipped_one_is_not():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = StackPorts(prefect=port, mlflow=free_port(), evidently=free_port())
        with pytest.raises(StackError, match=rf"port {port} \(prefect\) already in use"):
            check_ports(ports)
        check_ports(ports, skip=("prefect",))  # the running local server's port, by design


def test_the_same_port_twice_is_refused():
    port = free_port()
    with pytest.raises(StackError, match="the ports must differ"):
        check_ports(StackPorts(prefect=port, mlflow=port, evidently=free_port()))
