"""TLS end to end with real clients against `porcupine up`: swaks STARTTLS with
certificate verification against the CA `up` printed, openssl s_client -starttls
smtp and pop3, curl pop3s://, Python poplib POP3_SSL and stls(); the STARTTLS
injection (CVE-2011-0411) over a real TLS socket; SIGHUP reload; and the cluster's
mutual TLS: an RPC from a client without a cluster certificate gets nothing."""

import os
import signal
import socket
import ssl
import subprocess
import time
import unittest
import poplib

import harness
from harness import Cluster, HOST, make_message, require_tool

USER = "tls-user@example.test"
PASSWORD = "tls-pass-1"


class TlsSingleNode(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster(nodes=1).start()
        cls.cluster.add_user(USER, PASSWORD)
        cls.ca = cls.cluster.tls_ca()

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()
        cls.cluster.cleanup()

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca)
        return ctx

    def test_up_prints_the_ca_and_it_is_a_certificate(self):
        with open(self.ca) as f:
            self.assertIn("BEGIN CERTIFICATE", f.read())
        key = os.path.join(os.path.dirname(self.ca), "ca.key")
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)

    def test_swaks_starttls_verified_delivers(self):
        swaks = require_tool("swaks")
        subject = f"tls-swaks-{time.time_ns()}"
        out = subprocess.run(
            [swaks, "--server", HOST, "--port", str(self.cluster.smtp_port()),
             "--from", "sender@elsewhere.test", "--to", USER,
             "--tls", "--tls-verify", "--tls-ca-path", self.ca,
             "--header", f"Subject: {subject}", "--body", "over TLS"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertIn("STARTTLS", out.stdout)
        self.assertIn("250 2.0.0", out.stdout)
        # The message is readable over POP3S, with ESMTPS in its trace.
        pop = poplib.POP3_SSL(HOST, self.cluster.pop3s_port(), context=self.context(), timeout=30)
        try:
            pop.user(USER)
            pop.pass_(PASSWORD)
            count, _ = pop.stat()
            texts = [b"\r\n".join(pop.retr(i)[1]) for i in range(1, count + 1)]
        finally:
            pop.quit()
        mine = [t for t in texts if subject.encode() in t]
        self.assertEqual(len(mine), 1, texts)
        self.assertIn(b"with ESMTPS id", mine[0])

    def test_swaks_tls_verify_fails_without_the_ca(self):
        swaks = require_tool("swaks")
        out = subprocess.run(
            [swaks, "--server", HOST, "--port", str(self.cluster.smtp_port()),
             "--from", "sender@elsewhere.test", "--to", USER, "--tls", "--tls-verify",
             "--tls-ca-path", "/etc/ssl/certs/ca-certificates.crt", "--quit-after", "TLS"],
            capture_output=True, text=True, timeout=60)
        self.assertNotEqual(out.returncode, 0, out.stdout)

    def test_openssl_s_client_starttls_smtp_and_pop3(self):
        openssl = require_tool("openssl")
        for proto, port, command, expect in [
            ("smtp", self.cluster.smtp_port(), b"EHLO c.test\r\nQUIT\r\n", b"250"),
            ("pop3", self.cluster.pop_port(), b"CAPA\r\nQUIT\r\n", b"+OK"),
        ]:
            out = subprocess.run(
                [openssl, "s_client", "-connect", f"{HOST}:{port}", "-starttls", proto,
                 "-CAfile", self.ca, "-verify_return_error", "-servername", "localhost",
                 "-quiet"],
                input=command, capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 0, (proto, out.stdout, out.stderr))
            self.assertIn(expect, out.stdout, (proto, out.stdout, out.stderr))
            # After the handshake STARTTLS/STLS is no longer offered.
            self.assertNotIn(b"STARTTLS", out.stdout)
            self.assertNotIn(b"STLS", out.stdout)

    def test_curl_pop3s_lists_and_retrieves(self):
        curl = require_tool("curl")
        harness.deliver(self.cluster.smtp_port(), USER, make_message("curl-pop3s"))
        url = f"pop3s://{HOST}:{self.cluster.pop3s_port()}/"
        out = subprocess.run(
            [curl, "--silent", "--show-error", "--noproxy", "*", "--cacert", self.ca,
             "--user", f"{USER}:{PASSWORD}", url],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertRegex(out.stdout, r"^1 \d+")
        out = subprocess.run(
            [curl, "--silent", "--show-error", "--noproxy", "*", "--cacert", self.ca,
             "--user", f"{USER}:{PASSWORD}", url + "1"],
            capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("Subject:", out.stdout)
        # Without the CA, curl refuses the certificate (exit 60: peer certificate).
        out = subprocess.run(
            [curl, "--silent", "--noproxy", "*", "--cacert", "/etc/ssl/certs/ca-certificates.crt",
             "--user", f"{USER}:{PASSWORD}", url], capture_output=True, timeout=60)
        self.assertNotEqual(out.returncode, 0)

    def test_poplib_stls(self):
        pop = poplib.POP3(HOST, self.cluster.pop_port(), timeout=30)
        try:
            self.assertIn("STLS", pop.capa())
            pop.stls(context=self.context())
            self.assertNotIn("STLS", pop.capa())
            pop.user(USER)
            self.assertTrue(pop.pass_(PASSWORD).startswith(b"+OK"))
        finally:
            pop.quit()

    def test_starttls_injection_is_dropped_over_real_tls(self):
        with socket.create_connection((HOST, self.cluster.smtp_port()), timeout=30) as raw:
            f = raw.makefile("rb")
            self.assertTrue(f.readline().startswith(b"220"))
            raw.sendall(b"EHLO c.test\r\n")
            while True:
                line = f.readline()
                if line[3:4] == b" ":
                    break
            raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@elsewhere.test>\r\n")
            self.assertTrue(f.readline().startswith(b"220 2.0.0"))
            tls = self.context().wrap_socket(raw, server_hostname="localhost")
            tf = tls.makefile("rb")
            tls.sendall(b"RCPT TO:<" + USER.encode() + b">\r\n")
            # The injected MAIL never ran, and the session starts over: 503.
            self.assertTrue(tf.readline().startswith(b"503"), "injected MAIL ran")
            tls.sendall(b"QUIT\r\n")
            self.assertTrue(tf.readline().startswith(b"221"))

    def test_sighup_reloads_the_certificate(self):
        node_pid = self.cluster.info[0].pid
        ctx = self.context()

        def leaf_der() -> bytes:
            with socket.create_connection((HOST, self.cluster.pop3s_port()), timeout=30) as s:
                with ctx.wrap_socket(s, server_hostname="localhost") as t:
                    return t.getpeercert(binary_form=True)

        before = leaf_der()
        tls_dir = os.path.dirname(self.ca)
        out = subprocess.run(
            [str(harness.BINARY), "cert", "issue", "--node-id", "0", "--ca-dir", tls_dir,
             "--out-dir", tls_dir, "--san", "localhost", "--san", "127.0.0.1"],
            capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        os.kill(node_pid, signal.SIGHUP)
        deadline = time.monotonic() + 10
        while leaf_der() == before:
            self.assertLess(time.monotonic(), deadline, "certificate not reloaded")
            time.sleep(0.2)
        self.assertIn("certificate reloaded", self.cluster.logs(tail_lines=5000))


class ClusterMutualTls(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = Cluster(nodes=2).start()
        cls.ca = cls.cluster.tls_ca()

    @classmethod
    def tearDownClass(cls):
        cls.cluster.stop()
        cls.cluster.cleanup()

    def rpc_port(self) -> int:
        return self.cluster.base_port + 3

    def test_forged_rpc_without_a_cluster_certificate_gets_nothing(self):
        curl = require_tool("curl")
        url = f"https://{HOST}:{self.rpc_port()}/rpc"
        # Plain HTTP/2 as the nodes spoke before: no TLS, no answer.
        out = subprocess.run(
            [curl, "--silent", "--noproxy", "*", "--http2-prior-knowledge", "-X", "POST",
             "--data-binary", "x", "--max-time", "10", f"http://{HOST}:{self.rpc_port()}/rpc"],
            capture_output=True, timeout=30)
        self.assertNotEqual(out.returncode, 0, out.stdout)
        self.assertNotIn(b"load", out.stdout)
        # TLS that trusts the cluster CA but presents no client certificate: refused in
        # the handshake.
        out = subprocess.run(
            [curl, "--silent", "--show-error", "--noproxy", "*", "--cacert", self.ca,
             "--http2", "-X", "POST", "--data-binary", "x", "--max-time", "10", url],
            capture_output=True, text=True, timeout=30)
        self.assertNotEqual(out.returncode, 0, out.stdout)
        self.assertEqual(out.stdout, "")
        # A certificate from another CA is refused too.
        other = self.cluster.data + "/other-ca"
        subprocess.run([str(harness.BINARY), "ca", "init", "--dir", other], check=True,
                       capture_output=True, timeout=30)
        subprocess.run([str(harness.BINARY), "cert", "issue", "--node-id", "9", "--ca-dir", other,
                        "--out-dir", other, "--san", "127.0.0.1"], check=True,
                       capture_output=True, timeout=30)
        out = subprocess.run(
            [curl, "--silent", "--show-error", "--noproxy", "*", "--cacert", self.ca,
             "--cert", other + "/node-9.pem", "--key", other + "/node-9.key",
             "--http2", "-X", "POST", "--data-binary", "x", "--max-time", "10", url],
            capture_output=True, text=True, timeout=30)
        self.assertNotEqual(out.returncode, 0, out.stdout)
        self.assertEqual(out.stdout, "")

    def test_a_cluster_certificate_is_answered(self):
        # The control: with node 1's own certificate the same request reaches the RPC
        # layer (a 400 for the undecodable body, so the refusals above are TLS's).
        curl = require_tool("curl")
        tls_dir = os.path.dirname(self.ca)
        out = subprocess.run(
            [curl, "--silent", "--noproxy", "*", "--cacert", self.ca,
             "--cert", tls_dir + "/node-1.pem", "--key", tls_dir + "/node-1.key",
             "--http2", "-X", "POST", "--data-binary", "x", "--max-time", "10",
             "--write-out", "%{http_code}", f"https://{HOST}:{self.rpc_port()}/rpc"],
            capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertTrue(out.stdout.endswith("400"), out.stdout)

    def test_mail_crosses_nodes_over_mutual_tls(self):
        user = "mtls@example.test"
        self.cluster.add_user(user, "pw-mtls-1")
        self.cluster.wait_users_known([user])
        subject = f"mtls-{time.time_ns()}"
        for i in range(2):
            reply = harness.deliver(self.cluster.smtp_port(i), user, make_message(f"{subject}-{i}"))
            self.assertEqual(reply.code, 250, reply)
        self.cluster.wait_ready_for_pop(user, "pw-mtls-1", i=1)
        pop = poplib.POP3(HOST, self.cluster.pop_port(1), timeout=30)
        try:
            pop.user(user)
            pop.pass_("pw-mtls-1")
            count, _ = pop.stat()
            self.assertEqual(count, 2)
        finally:
            pop.quit()


if __name__ == "__main__":
    unittest.main()
