"""Small TCP backends for transport-level tests (byte-exactness, half-close, counting).

These stand in for a real only where the test is about the bytes, not about XMPP; every
XMPP feature is also tested against ejabberd and Prosody.
"""

from __future__ import annotations

import socket
import threading


class EchoBackend:
    """Echoes every byte back and passes the client's FIN on after the echo (half-close)."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_server((host, port), backlog=512, reuse_port=False)
        self.accepted = 0
        self.received: list[bytes] = []
        self._lock = threading.Lock()
        self._stopped = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        first = b""
        with conn:
            try:
                while data := conn.recv(65536):
                    if len(first) < 65536:
                        first += data
                    conn.sendall(data)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        with self._lock:
            self.received.append(first)

    def close(self) -> None:
        self._stopped = True
        self.sock.close()
