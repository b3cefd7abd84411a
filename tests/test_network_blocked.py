import socket

import pytest


def test_sockets_are_blocked():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(RuntimeError, match="network access"):
            s.connect(("127.0.0.1", 9))
    finally:
        s.close()
    with pytest.raises(RuntimeError, match="DNS"):
        socket.getaddrinfo("example.org", 443)
