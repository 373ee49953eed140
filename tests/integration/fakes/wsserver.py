"""A minimal RFC 6455 WebSocket server (standard library only) for the
provider fakes: the Slack Socket Mode and Discord Gateway fakes run on it.

    srv = WSServer(on_connect=lambda conn: conn.send_json({...})).start()
    srv.url            # ws://127.0.0.1:PORT
    conn = srv.wait_connections(1)[0]
    conn.path, conn.headers, conn.wait_messages(1), conn.send_json(obj)
    conn.close(4000, "bye")   # a close frame, then the socket
    conn.drop()               # the TCP socket only, no close frame

It checks what a client must do: the upgrade request's headers, and that
every client frame is masked (an unmasked one is a protocol error, 1002).
"""

import base64
import hashlib
import json
import socket
import socketserver
import struct
import threading
import time

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Conn:
    def __init__(self, server, sock, path, headers):
        self.server = server
        self.sock = sock
        self.path = path
        self.headers = headers
        self.messages = []  # text messages received (str), in order
        self.close_code = None  # code of the client's close frame
        self.closed = False
        self.errors = []
        self.cond = threading.Condition()
        self.send_lock = threading.Lock()

    # -- sending -----------------------------------------------------------
    def _frame(self, opcode, payload, fin=True):
        head = bytes([(0x80 if fin else 0) | opcode])
        n = len(payload)
        if n < 126:
            head += bytes([n])
        elif n < 65536:
            head += bytes([126]) + struct.pack("!H", n)
        else:
            head += bytes([127]) + struct.pack("!Q", n)
        with self.send_lock:
            try:
                self.sock.sendall(head + payload)
            except OSError:
                pass

    def send_text(self, text):
        self._frame(1, text.encode())

    def send_json(self, obj):
        self.send_text(json.dumps(obj))

    def close(self, code=1000, reason=""):
        self._frame(8, struct.pack("!H", code) + reason.encode())

    def drop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    # -- receiving -----------------------------------------------------------
    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    def run(self):
        parts, kind = [], None
        try:
            while True:
                b0, b1 = self._read(2)
                fin, opcode = b0 & 0x80, b0 & 0x0F
                masked, n = b1 & 0x80, b1 & 0x7F
                if n == 126:
                    n = struct.unpack("!H", self._read(2))[0]
                elif n == 127:
                    n = struct.unpack("!Q", self._read(8))[0]
                if not masked:
                    self.errors.append("unmasked client frame")
                    self.close(1002, "frames must be masked")
                    break
                key = self._read(4)
                data = bytes(c ^ key[i % 4] for i, c in enumerate(self._read(n)))
                if opcode == 8:
                    self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                    self.close(self.close_code if self.close_code != 1005 else 1000)
                    break
                if opcode == 9:
                    self._frame(10, data)
                    continue
                if opcode == 10:
                    continue
                if opcode in (1, 2):
                    kind, parts = opcode, [data]
                elif opcode == 0:
                    parts.append(data)
                if fin:
                    msg = b"".join(parts)
                    if kind == 1:
                        with self.cond:
                            self.messages.append(msg.decode())
                            self.cond.notify_all()
                        if self.server.on_message:
                            self.server.on_message(self, msg.decode())
        except (EOFError, OSError, ValueError):
            pass
        try:
            self.sock.close()
        except OSError:
            pass
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def json_messages(self):
        with self.cond:
            return [json.loads(m) for m in self.messages]

    def wait_messages(self, n, timeout=10.0, pred=None):
        """Wait until n messages (matching pred(parsed JSON)) arrived; returns them."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = [json.loads(m) for m in self.messages]
                if pred:
                    got = [m for m in got if pred(m)]
                if len(got) >= n:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out waiting for %d ws messages on %s, have %r"
                                         % (n, self.path, self.messages[-5:]))
                self.cond.wait(min(left, 0.1))

    def wait_closed(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("ws connection %s not closed" % self.path)
                self.cond.wait(min(left, 0.1))


class WSServer:
    def __init__(self, on_connect=None, on_message=None):
        self.on_connect = on_connect
        self.on_message = on_message
        self.conns = []
        self.bad_handshakes = []
        self.cond = threading.Condition()
        self.server = None

    def start(self):
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                sock = self.request
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                head, _ = data.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
                problems = []
                if method != "GET":
                    problems.append("method")
                if headers.get("upgrade", "").lower() != "websocket":
                    problems.append("upgrade")
                if "upgrade" not in headers.get("connection", "").lower():
                    problems.append("connection")
                if headers.get("sec-websocket-version") != "13":
                    problems.append("version")
                key = headers.get("sec-websocket-key", "")
                try:
                    if len(base64.b64decode(key, validate=True)) != 16:
                        problems.append("key")
                except ValueError:
                    problems.append("key")
                if problems:
                    outer.bad_handshakes.append((path, problems))
                    sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    return
                accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
                sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                              "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                              % accept).encode())
                conn = Conn(outer, sock, path, headers)
                with outer.cond:
                    outer.conns.append(conn)
                    outer.cond.notify_all()
                if outer.on_connect:
                    outer.on_connect(conn)
                conn.run()

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False

        self.server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    @property
    def port(self):
        return self.server.server_address[1]

    @property
    def url(self):
        return "ws://127.0.0.1:%d" % self.port

    def wait_connections(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.conns) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("timed out waiting for %d ws connections (have %d)"
                                         % (n, len(self.conns)))
                self.cond.wait(min(left, 0.1))
            return list(self.conns)

    def close(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        for c in list(self.conns):
            if not c.closed:
                c.drop()
