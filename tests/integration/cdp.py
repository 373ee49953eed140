"""A small Chrome DevTools Protocol client over --remote-debugging-pipe, for
tests that check the whatsweb fixture page and the plugin's inject.js without
the daemon (the same transport the plugin uses: Chromium reads NUL-terminated
JSON commands on its fd 3 and writes answers and events on its fd 4).

    with Browser(profile_dir) as b:
        sid = b.open_page(url, script=inject_js, binding="__sb_emit")
        ev = b.wait_binding(lambda e: e["ev"] == "qr")
        b.evaluate(sid, "window.__sb.state()")
"""

import json
import os
import queue
import shutil
import subprocess
import threading
import time

CHROMIUM_ARGS = ["--headless=new", "--remote-debugging-pipe", "--no-first-run",
                 "--no-default-browser-check", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-extensions", "--mute-audio"]


def chromium_path():
    return shutil.which(os.environ.get("SB_CHROMIUM", "chromium"))


class CDPError(Exception):
    pass


class Browser:
    def __init__(self, profile, binary=None, extra_args=()):
        self.profile = profile
        self.binary = binary or chromium_path()
        self.extra_args = list(extra_args)
        self.proc = None
        self.next_id = 0
        self.lock = threading.Lock()
        self.pending = {}
        self.events = queue.Queue()     # (method, params, sessionId)
        self.bindings = queue.Queue()   # parsed payloads of Runtime.bindingCalled
        self.binding_log = []
        self.reader = None

    def start(self):
        to_r, to_w = os.pipe()
        from_r, from_w = os.pipe()
        # Chromium wants them as 3 and 4; dup above the range first so the
        # preexec dup2 calls cannot clobber one another.
        hi_r = os.dup2(to_r, 103) or 103
        hi_w = os.dup2(from_w, 104) or 104

        def pre():
            os.dup2(103, 3)
            os.dup2(104, 4)
            os.close(103)
            os.close(104)
        args = [self.binary] + CHROMIUM_ARGS + ["--user-data-dir=" + self.profile]
        if os.geteuid() == 0:
            args.append("--no-sandbox")
        args += self.extra_args + ["about:blank"]
        # Python's own descriptors are close-on-exec (PEP 446): nothing else leaks.
        self.proc = subprocess.Popen(args, preexec_fn=pre, close_fds=False,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        for fd in (to_r, from_w, hi_r, hi_w):
            os.close(fd)
        self.wfd, self.rfd = to_w, from_r
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        return self

    def _read(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self.rfd, 1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self.lock:
                        q = self.pending.pop(msg["id"], None)
                    if q:
                        q.put(msg)
                else:
                    if msg.get("method") == "Runtime.bindingCalled":
                        payload = json.loads(msg["params"]["payload"])
                        self.binding_log.append(payload)
                        self.bindings.put(payload)
                    self.events.put((msg.get("method"), msg.get("params"), msg.get("sessionId")))
        with self.lock:
            for q in self.pending.values():
                q.put({"error": {"message": "browser closed"}})
            self.pending.clear()

    def call(self, method, params=None, session=None, timeout=15.0):
        with self.lock:
            self.next_id += 1
            mid = self.next_id
            q = self.pending[mid] = queue.Queue()
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.wfd, json.dumps(msg).encode() + b"\0")
        try:
            ans = q.get(timeout=timeout)
        except queue.Empty:
            raise CDPError("%s: no answer in %.0f s" % (method, timeout)) from None
        if "error" in ans:
            raise CDPError("%s: %s" % (method, ans["error"].get("message")))
        return ans["result"]

    def open_page(self, url, script=None, binding="__sb_emit"):
        """A new tab attached (flatten) with Page/Runtime on, the binding and
        the script added for every document, navigated to url. Returns the
        session id."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=sid)
        self.call("Runtime.enable", session=sid)
        if binding:
            self.call("Runtime.addBinding", {"name": binding}, session=sid)
        if script:
            self.call("Page.addScriptToEvaluateOnNewDocument", {"source": script}, session=sid)
        self.call("Page.navigate", {"url": url}, session=sid)
        return sid

    def evaluate(self, session, expr, timeout=15.0):
        res = self.call("Runtime.evaluate", {"expression": expr, "awaitPromise": True,
                                             "returnByValue": True}, session=session,
                        timeout=timeout)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise CDPError((d.get("exception") or {}).get("description") or d.get("text"))
        return res["result"].get("value")

    def wait_binding(self, pred, timeout=15.0):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no page event matched in %.0f s; seen %r"
                                     % (timeout, self.binding_log[-10:]))
            try:
                ev = self.bindings.get(timeout=left)
            except queue.Empty:
                continue
            if pred(ev):
                return ev

    def close(self):
        if self.proc and self.proc.poll() is None:
            try:
                self.call("Browser.close", timeout=5)
            except (CDPError, OSError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for fd in ("wfd", "rfd"):
            if getattr(self, fd, None) is not None:
                try:
                    os.close(getattr(self, fd))
                except OSError:
                    pass
                setattr(self, fd, None)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
