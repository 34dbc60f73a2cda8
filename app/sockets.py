"""The listening sockets of `microscope serve`.

With several worker processes on one shared socket, the worker that wakes first accepts every pending
connection (uvloop accepts until the backlog is empty): 32 keep-alive clients connecting at once left 30
connections on one of two workers and 2 on the other, so one process served nearly every request. On Linux each
worker listens instead on a socket of its own in the port's SO_REUSEPORT group, and the kernel spreads new
connections over the workers by a hash of their addresses (14 and 18 in the same trial).
"""
import socket
import sys


def bound_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to the address (OSError if it is in use); `reuse_port`: one of a SO_REUSEPORT group."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # sockets in TIME_WAIT do not count
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def listening_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening socket, with TCP_NODELAY set where connections inherit it (Linux): uvicorn's worker processes
    do not set it on the connections they accept, so with --workers > 1 each response waited for the client's
    delayed ACK (about 44 ms per request on loopback)."""
    sock = bound_socket(host, port, reuse_port)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def spreads_connections(port: int) -> bool:
    """Whether the kernel balances a SO_REUSEPORT group's connections (Linux; BSDs and macOS send them all to
    one socket), and the port is fixed (with port 0 each worker would listen on a port of its own)."""
    return sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT") and port != 0


def check_free(host: str, port: int) -> None:
    """Raise OSError (address in use) if anything listens on the port already: a SO_REUSEPORT bind would
    otherwise join another server of the same user silently and share its connections."""
    bound_socket(host, port).close()


class OwnSocket:
    """Stands in the socket list that uvicorn's supervisor hands every worker it starts (and restarts):
    unpickled in the worker, it is a listening socket of that worker's own in the port's SO_REUSEPORT group."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port

    def __reduce__(self):
        return listening_socket, (self.host, self.port, True)
