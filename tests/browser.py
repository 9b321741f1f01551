"""Open visualizations in headless Chromium and report what a user's browser would see.

Talks the Chrome DevTools Protocol over a websocket. Debian's Python has no websocket
client and the tests install nothing, so the few parts of RFC 6455 a client needs
(handshake, masked text frames out, unmasked frames in, ping and close) are here.

    with Browser(tmp_dir) as browser:
        page = browser.open(path_to_index_html, screenshot=tmp_dir / "page.png")
        assert not page.errors and not page.broken_images
"""
import base64
import json
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

CHROMIUM = "/usr/bin/chromium"
# Headless, sandbox-free (containers), and silent on the network: the tests must
# pass offline and not wait on background services.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
                  "--window-size=1366,900"]
START_TIMEOUT = 60
PAGE_TIMEOUT = 30

IMAGES_JS = """JSON.stringify(Array.from(document.images).map(
    image => ({src: image.getAttribute('src'), naturalWidth: image.naturalWidth})))"""


def chromium_available():
    return os.access(CHROMIUM, os.X_OK)


@dataclass
class Page:
    url: str
    errors: list = field(default_factory=list)     # console errors, exceptions, log errors
    dialogs: list = field(default_factory=list)    # alert/confirm/prompt messages
    images: list = field(default_factory=list)     # [{'src', 'naturalWidth'}]
    text: str = ""                                 # document.body.innerText
    scripts: list = field(default_factory=list)    # text of every inline <script>

    @property
    def broken_images(self):
        return [image["src"] for image in self.images if image["naturalWidth"] <= 0]


class Browser:
    def __init__(self, work_dir=None):
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=work_dir)
        self._process = subprocess.Popen(
            [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = self._debugging_port()
            self._socket = WebSocket(_page_websocket_url(port))
        except BaseException:
            self.close()
            raise
        self._next_id = 0
        self._events = []
        # Once only: enabling a domain again replays the messages it already sent.
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if getattr(self, "_socket", None) is not None:
            self._socket.close()
            self._socket = None
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def open(self, path, screenshot=None) -> Page:
        """Load a local HTML file, wait for it (and its images) to load, and report."""
        url = pathlib.Path(path).resolve().as_uri()
        page = Page(url)
        self._events.clear()
        self.call("Page.navigate", url=url)
        self._wait_for("Page.loadEventFired", page)
        page.images = json.loads(self.evaluate(IMAGES_JS))
        page.text = self.evaluate("document.body.innerText")
        page.scripts = json.loads(self.evaluate(
            "JSON.stringify(Array.from(document.scripts).map(s => s.textContent))"))
        # Late console messages (after load) are collected too.
        self._drain(page, seconds=0.3)
        if screenshot is not None:
            self._screenshot(screenshot)
        return page

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def call(self, method, **params):
        """Send one command and return its result; events read meanwhile are kept."""
        self._next_id += 1
        message_id = self._next_id
        self._socket.send(json.dumps({"id": message_id, "method": method, "params": params}))
        deadline = time.monotonic() + PAGE_TIMEOUT
        while time.monotonic() < deadline:
            message = self._receive(deadline)
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message.get("result", {})
        raise TimeoutError(f"No reply to {method} within {PAGE_TIMEOUT} s.")

    # --- internals ---------------------------------------------------------------------

    def _receive(self, deadline):
        message = json.loads(self._socket.receive(timeout=max(0.01, deadline - time.monotonic())))
        if "method" in message:
            self._events.append(message)
            if message["method"] == "Page.javascriptDialogOpening":
                # An open dialog blocks the page: record it, dismiss it, read on.
                self._next_id += 1
                self._socket.send(json.dumps({"id": self._next_id,
                                              "method": "Page.handleJavaScriptDialog",
                                              "params": {"accept": True}}))
        return message

    def _wait_for(self, method, page):
        deadline = time.monotonic() + PAGE_TIMEOUT
        while not any(event["method"] == method for event in self._events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{page.url}: no {method} within {PAGE_TIMEOUT} s.")
            self._receive(deadline)
        self._collect(page)

    def _drain(self, page, seconds):
        deadline = time.monotonic() + seconds
        while True:
            try:
                self._receive(deadline)
            except socket.timeout:
                break
        self._collect(page)

    def _collect(self, page):
        for event in self._events:
            report = _problem(event)
            if report and report not in page.errors:
                page.errors.append(report)
            if event["method"] == "Page.javascriptDialogOpening":
                message = event["params"].get("message", "")
                if message not in page.dialogs:
                    page.dialogs.append(message)

    def _screenshot(self, path):
        size = self.call("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", clip=clip,
                         captureBeyondViewport=True)["data"]
        pathlib.Path(path).write_bytes(base64.b64decode(data))

    def _debugging_port(self):
        """Chromium picks a free port (port 0) and writes it to DevToolsActivePort."""
        marker = os.path.join(self._profile, "DevToolsActivePort")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Chromium exited with status {self._process.returncode}.")
            try:
                with open(marker) as fh:
                    first_line = fh.readline().strip()
                if first_line:
                    return int(first_line)
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"Chromium did not open a debugging port within {START_TIMEOUT} s.")


def _page_websocket_url(port):
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            targets = json.load(reply)
        pages = [t for t in targets if t.get("type") == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.1)
    raise TimeoutError("Chromium opened no page.")


def _problem(event):
    """A one-line description of an error event, or None for anything else."""
    method, params = event["method"], event.get("params", {})
    if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        texts = [str(arg.get("value", arg.get("description", ""))) for arg in params["args"]]
        return f"console.{params['type']}: {' '.join(texts)}"
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        description = details.get("exception", {}).get("description", details.get("text"))
        return f"uncaught exception: {description}"
    if method == "Log.entryAdded" and params["entry"].get("level") == "error":
        entry = params["entry"]
        return f"log error: {entry.get('text')} {entry.get('url', '')}".strip()
    return None


class WebSocket:
    """A minimal RFC 6455 client: text messages over ws:// (no extensions)."""

    def __init__(self, url):
        assert url.startswith("ws://"), url
        host_port, _, path = url[len("ws://"):].partition("/")
        host, _, port = host_port.partition(":")
        self._socket = socket.create_connection((host, int(port or 80)), timeout=START_TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        # No Origin header: Chromium refuses origins it was not told to allow.
        self._socket.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\n"
                              "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                              "\r\n").encode())
        header = b""
        while b"\r\n\r\n" not in header:
            chunk = self._socket.recv(1)
            if not chunk:
                raise ConnectionError("The websocket handshake was cut off.")
            header += chunk
        status = header.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(f"Websocket handshake refused: {status.decode()}")

    def send(self, text):
        self._send_frame(0x1, text.encode())

    def receive(self, timeout):
        """The next whole text message; socket.timeout when none starts in time."""
        fragments = []
        while True:
            final, opcode, payload = self._read_frame(timeout if not fragments else None)
            if opcode == 0x9:                      # ping: answer, keep reading
                self._send_frame(0xA, payload)
            elif opcode == 0x8:
                raise ConnectionError("Chromium closed the websocket.")
            elif opcode in (0x0, 0x1, 0x2):
                fragments.append(payload)
                if final:
                    return b"".join(fragments).decode()

    def close(self):
        try:
            self._send_frame(0x8, b"")
        except OSError:
            pass
        self._socket.close()

    def _send_frame(self, opcode, payload):
        # Client frames must be masked (RFC 6455, 5.3).
        header = bytes([0x80 | opcode])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        elif len(payload) < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", len(payload))
        mask = os.urandom(4)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        self._socket.sendall(header + mask + masked)

    def _read_frame(self, timeout):
        # Only the wait for a frame to start may time out: stopping inside a frame
        # would lose its place in the stream.
        self._socket.settimeout(timeout or START_TIMEOUT)
        first = self._read_exactly(1)[0]
        self._socket.settimeout(START_TIMEOUT)
        second = self._read_exactly(1)[0]
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read_exactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read_exactly(8))[0]
        mask = self._read_exactly(4) if second & 0x80 else None
        payload = self._read_exactly(length)
        if mask:
            payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        return bool(first & 0x80), first & 0x0F, payload

    def _read_exactly(self, n):
        chunks, remaining = [], n
        while remaining:
            chunk = self._socket.recv(min(remaining, 1 << 20))
            if not chunk:
                raise ConnectionError("Chromium closed the connection.")
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
