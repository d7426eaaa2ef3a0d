"""The dashboard at `/` of the admin API, in a real browser: headless Debian
`chromium` driven over the DevTools protocol (python `websocket-client`). The page
loads through a one-time login link, shows the 3 nodes, and shows a node down within
a few seconds of its `kill -9`. Screenshots go to $PORCUPINE_SHOTS
(/work/briefs/shots by default)."""

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.request

import faults
import harness

SHOTS = os.environ.get("PORCUPINE_SHOTS", "/work/briefs/shots")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


class Browser:
    """One headless chromium with one page, spoken to over the DevTools protocol."""

    def __init__(self):
        import websocket  # websocket-client

        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        if exe is None:
            raise unittest.SkipTest("chromium is not installed (apt install chromium)")
        self.profile = tempfile.mkdtemp(prefix="porcupine-chromium-")
        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-extensions", "--no-first-run", "--window-size=1400,1000",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            start_new_session=True)
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while not (os.path.exists(port_file) and _read(port_file).count("\n") >= 1):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise AssertionError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(_read(port_file).split()[0])
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.close()
                raise AssertionError("chromium shows no page target")
            time.sleep(0.1)
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30,
                                              suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        mid = self.next_id
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]
        raise AssertionError(f"{method}: no answer in 30 s")

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_js(self, expression: str, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            last = self.js(expression)
            if last:
                return last
            time.sleep(0.2)
        raise AssertionError(f"{what} not within {timeout_s} s (last: {last!r})")

    def screenshot(self, path: str) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


STATES = "JSON.stringify([...document.querySelectorAll('#nodes tr')].map(r => [r.dataset.node, r.dataset.state]))"


class DashboardTest(unittest.TestCase):
    def test_login_link_page_shows_nodes_and_a_killed_node_down(self):
        c = harness.Cluster(nodes=3).start()
        self.addCleanup(c.cleanup)
        faults.wait_view(c, [0, 1, 2], 30)
        admin = c.admin_url(0)
        # Without the token or a session cookie the page says how to log in.
        status, body = harness.http_request(admin + "/", auth=False)
        self.assertEqual(status, 401)
        self.assertIn("porcupine dashboard", body)
        c.add_users([(f"dash@{harness.DOMAIN}", "pw")])
        for k in range(5):
            harness.deliver(c.smtp_port(k % 3), f"dash@{harness.DOMAIN}", harness.make_message(f"d{k}"))
        url = harness.run_cli("dashboard", admin=admin).stdout.splitlines()[0]
        self.assertRegex(url, rf"^{admin}/dashboard/login\?code=[0-9a-f]{{64}}$")

        b = Browser()
        self.addCleanup(b.close)
        b.call("Page.enable")
        b.call("Page.navigate", url=url)
        b.wait_js("location.pathname === '/' && document.readyState === 'complete'", 15, "the page after login")
        # The link worked once: a second use is refused (401 page).
        status, _ = harness.http_request(url, auth=False)
        self.assertEqual(status, 401)
        b.wait_js(f"{STATES} === JSON.stringify([['0','up'],['1','up'],['2','up']])", 15, "3 nodes up")
        b.wait_js("document.querySelectorAll('#load-chart polyline').length === 3", 10, "load lines of 3 nodes")
        self.assertEqual(b.js("document.querySelectorAll('#buckets div').length"), 3)
        self.assertRegex(b.js("document.getElementById('registry').textContent"),
                         r"registry leader: \d+ · voters: 0, 1, 2 · learners: none")
        self.assertGreater(b.js("document.querySelectorAll('#views tr').length"), 0)
        # The cookie is HttpOnly: the page's script cannot read it.
        self.assertEqual(b.js("document.cookie"), "")
        # Read-only: the session cookie does not let the page change anything.
        r = b.call("Runtime.evaluate", expression="""fetch('/v1/users', {method: 'POST',
            headers: {'content-type': 'application/json'},
            body: JSON.stringify({address: 'x@evil.test', password: 'p'})}).then(r => r.status)""",
                   awaitPromise=True, returnByValue=True)
        self.assertEqual(r["result"]["value"], 401)
        # Some traffic for the charts: mail in through every node, a few retrievals.
        stop = threading.Event()

        def traffic():
            k = 0
            until = time.monotonic() + 60  # bounded even if the test hangs
            while not stop.is_set() and time.monotonic() < until:
                try:
                    harness.deliver(c.smtp_port(k % 2), f"dash@{harness.DOMAIN}", harness.make_message(f"t{k}"))
                    if k % 20 == 0:
                        p = harness.pop_session(c.pop_port(k % 2), f"dash@{harness.DOMAIN}", "pw")
                        p.retr(min(p.listing()))
                        p.quit()
                except (OSError, ConnectionError, ValueError, harness.PopError):
                    pass  # a view change (node 2 is killed below) may refuse some
                k += 1

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        self.addCleanup(stop.set)
        time.sleep(6)
        b.wait_js("document.getElementById('rate-legend').textContent.match(/SMTP accepted [1-9]/)", 10,
                  "a non-zero SMTP rate")
        b.screenshot(os.path.join(SHOTS, "dashboard-3-nodes.png"))

        killed_at = time.monotonic()
        c.kill_node(2)
        b.wait_js(f"JSON.parse({STATES}).some(([id, st]) => id === '2' && st !== 'up')", 10,
                  "node 2 not shown up")
        seen_silent = time.monotonic() - killed_at
        b.wait_js(f"JSON.parse({STATES}).some(([id, st]) => id === '2' && st === 'down')", 15,
                  "node 2 shown down")
        seen_down = time.monotonic() - killed_at
        print(f"\nnode 2 killed: shown not up after {seen_silent:.1f} s, down after {seen_down:.1f} s", flush=True)
        self.assertLess(seen_down, 15)
        b.wait_js("[...document.querySelectorAll('#views tr td:last-child')].some(td => td.textContent === '2')",
                  5, "the view change leaving node 2 out")
        time.sleep(3)
        b.screenshot(os.path.join(SHOTS, "dashboard-node-2-down.png"))
        stop.set()
        sender.join(30)


if __name__ == "__main__":
    unittest.main()
