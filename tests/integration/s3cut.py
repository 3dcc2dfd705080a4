"""A loopback TCP proxy in front of the stack's S3 server that stops the server the moment the
first upload (an HTTP PUT) goes through it: "S3 died during `dvc push`", at a known point
rather than after a guessed delay. Point a client's AWS_ENDPOINT_URL at `url`."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class CutOnFirstUpload:
    def __init__(self, s3_port: int, cut: Callable[[], object]) -> None:
        self._target = ("127.0.0.1", s3_port)
        self._cut = cut
        self._lock = threading.Lock()
        self.cut_done = threading.Event()
        self.requests: list[bytes] = []  # the first line of each request seen, in order
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:  # the server is down: the client sees its connection dropped
            client.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=self._copy, args=(upstream, client), daemon=True).start()
        self._copy(client, upstream, requests=True)

    def _copy(self, src: socket.socket, dst: socket.socket, requests: bool = False) -> None:
        try:
            while data := src.recv(65536):
                if requests and self._upload(data):
                    return  # the PUT never reaches the server, which is now stopped
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                sock.close()

    def _upload(self, data: bytes) -> bool:
        """Record a request line; on the first PUT stop the server (once) and say so."""
        for method in (b"GET ", b"HEAD ", b"PUT ", b"POST ", b"DELETE "):
            if data.startswith(method):
                self.requests.append(data.split(b"\r\n", 1)[0])
        if not data.startswith(b"PUT ") and not self.cut_done.is_set():
            return False
        with self._lock:
            if not self.cut_done.is_set():
                self._cut()
                self.cut_done.set()
        return True
