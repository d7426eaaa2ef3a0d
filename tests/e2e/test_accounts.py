"""Accounts (issue 14): address validation, domains, postmaster/abuse, subaddressing,
aliases and catch-alls, quotas, end to end through SMTP (swaks, smtplib) and POP3
(poplib) on a two-node cluster with two copies of each message."""

import poplib
import smtplib
import time
import unittest
import uuid

import faults
import harness

POSTMASTER = "admin@a.test"


class AccountsTest(unittest.TestCase):
    cluster: harness.Cluster

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(nodes=2, up_args=("--postmaster", POSTMASTER)).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.admin = cls.cluster.admin_url()
        cls.users = {
            POSTMASTER: "pw-admin",
            "alice@a.test": "pw-alice",
            "bob@a.test": "pw-bob",
            "carol@b.test": "pw-carol",
        }
        for d in ["a.test", "b.test"]:
            harness.run_cli("domain", "add", d, admin=cls.admin)
        cls.cluster.add_users(list(cls.users.items()))
        cls.cluster.wait_users_known(cls.users, nodes=[0, 1])
        cls.cluster.wait_ready_for_pop("alice@a.test", "pw-alice")

    # --- helpers -----------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True):
        return harness.run_cli(*args, admin=self.admin, check=check)

    def rcpt(self, address: str) -> harness.SmtpReply:
        with harness.SmtpRaw(self.cluster.smtp_port()) as s:
            s.cmd("EHLO client.test")
            s.cmd("MAIL FROM:<x@elsewhere.test>")
            return s.cmd(f"RCPT TO:<{address}>" if address else "RCPT TO:<postmaster>")

    def subjects(self, user: str, password: str, delete: bool = False) -> list[str]:
        """Subjects of every message in the mailbox (poplib, RETR each)."""
        p = poplib.POP3("127.0.0.1", self.cluster.pop_port(), timeout=30)
        try:
            p.user(user)
            p.pass_(password)
            count, _ = p.stat()
            out = []
            for n in range(1, count + 1):
                _, lines, _ = p.retr(n)
                msg = b"\r\n".join(lines)
                out.append(harness.header_value(msg, "Subject") or "")
                if delete:
                    p.dele(n)
            p.quit()
            return out
        finally:
            try:
                p.close()
            except OSError:
                pass

    def wait_subject(self, user: str, subject: str, count: int = 1) -> list[str]:
        deadline = time.monotonic() + 15
        while True:
            got = self.subjects(user, self.users[user])
            if got.count(subject) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.3)

    def account(self, address: str) -> dict:
        status, body = harness.http_request(f"{self.admin}/v1/users/{address}")
        self.assertEqual(status, 200, body)
        return body

    # --- 1. validation -----------------------------------------------------------------

    def test_validation_errors_name_the_rule(self):
        cases = [
            (("user", "add", "x@-bad-.test", "--password", "p"),
             'domain label "-bad-" may not start or end with a hyphen (RFC 1035 §2.3.1)'),
            (("user", "add", "a..b@a.test", "--password", "p"), "RFC 5322 §3.2.3 dot-atom"),
            (("user", "add", "x" * 65 + "@a.test", "--password", "p"),
             "local part is 65 octets; at most 64 (RFC 5321 §4.5.3.1.1)"),
            (("domain", "add", "under_score.test"), "only letters, digits and hyphens"),
            (("domain", "add", ("a" * 64) + ".test"), "at most 63 (RFC 1035 §2.3.4)"),
            (("alias", "add", "s@a.test", "nobody@elsewhere.test"), "not a local account or alias"),
            (("alias", "add", "s@a.test", "a b@a.test"), "atext"),
        ]
        for args, rule in cases:
            cp = self.cli(*args, check=False)
            self.assertNotEqual(cp.returncode, 0, args)
            self.assertIn(rule, cp.stderr, args)
            self.assertIn("(HTTP 400)", cp.stderr, args)
        # A quoted local part is fine, and reached as SMTP writes it.
        self.cli("user", "add", '"john doe"@a.test', "--password", "pw-john")
        self.users["john doe@a.test"] = "pw-john"
        self.cluster.wait_users_known(["john doe@a.test"], nodes=[0])
        self.assertEqual(self.rcpt('"John Doe"@a.test').code, 250)

    # --- 2. domains --------------------------------------------------------------------

    def test_domain_del_refused_while_in_use_then_forced(self):
        self.cli("domain", "add", "gone.test", "--quota-bytes", "1M")
        listed = self.cli("domain", "list").stdout
        self.assertRegex(listed, r"gone\.test\s+0\s+0\s+1048576")
        self.cli("user", "add", "u@gone.test", "--password", "pw")
        self.cli("alias", "add", "@gone.test", "u@gone.test")
        cp = self.cli("domain", "del", "gone.test", check=False)
        self.assertNotEqual(cp.returncode, 0)
        self.assertIn("still has 1 account(s) and 1 alias(es)", cp.stderr)
        self.assertIn("(HTTP 409)", cp.stderr)
        self.assertEqual(self.rcpt("anyone@gone.test").code, 250, "the catch-all still takes it")
        out = self.cli("domain", "del", "gone.test", "--force").stdout
        self.assertIn("1 account(s), 1 alias(es) removed", out)
        self.assertNotIn("gone.test", self.cli("domain", "list").stdout)
        self.assertNotIn("u@gone.test", self.cli("user", "list").stdout)
        self.assertEqual(self.cli("alias", "list").stdout.count("gone.test"), 0)
        r = self.rcpt("u@gone.test")
        self.assertEqual((r.code, r.text[:5]), (550, "5.7.1"), r)
        # An empty domain goes without --force.
        self.cli("domain", "add", "empty.test")
        self.cli("domain", "del", "empty.test")
        cp = self.cli("domain", "del", "empty.test", check=False)
        self.assertIn("no such domain", cp.stderr)

    def test_admin_api_statuses(self):
        def call(method, path, body=None):
            status, answer = harness.http_request(f"{self.admin}{path}", method, body)
            return status, answer

        for method, path, body, want in [
            ("POST", "/v1/domains", {"domain": "-x.test"}, 400),
            ("POST", "/v1/domains", {"domain": "a.test"}, 409),
            ("POST", "/v1/domains", {"domain": "q.test", "quota_bytes": "lots"}, 400),
            ("DELETE", "/v1/domains/nope.test", None, 404),
            ("DELETE", "/v1/domains/a.test", None, 409),
            ("PUT", "/v1/domains/nope.test/quota", {"quota_bytes": 5}, 404),
            ("POST", "/v1/aliases", {"source": "s@nope.test", "targets": ["alice@a.test"]}, 404),
            ("POST", "/v1/aliases", {"source": "s@a.test", "targets": []}, 400),
            ("POST", "/v1/aliases", {"source": "alice@a.test", "targets": ["bob@a.test"]}, 409),
            ("DELETE", "/v1/aliases/nope@a.test", None, 404),
            ("PUT", "/v1/users/nobody@a.test/quota", {"quota_messages": 1}, 404),
            ("GET", "/v1/users/nobody@a.test", None, 404),
            ("POST", "/v1/users", {"address": "x@-bad-.test", "password": "p"}, 400),
        ]:
            status, answer = call(method, path, body)
            self.assertEqual(status, want, (method, path, answer))
            self.assertEqual(set(answer), {"error"}, (method, path, answer))
        status, answer = call("POST", "/v1/domains", {"domain": "Q.test", "quota_bytes": "2M",
                                                       "quota_messages": 10})
        self.assertEqual(status, 201, answer)
        self.assertEqual((answer["domain"], answer["quota_bytes"], answer["quota_messages"]),
                         ("q.test", 2 << 20, 10))
        status, answer = call("PUT", "/v1/domains/q.test/quota", {"quota_messages": "unlimited"})
        self.assertEqual((status, answer["quota_bytes"], answer["quota_messages"]),
                         (200, 2 << 20, "unlimited"))
        status, answer = call("DELETE", "/v1/domains/q.test")
        self.assertEqual((status, answer["deleted"]), (200, "q.test"))

    # --- 3. postmaster / abuse ---------------------------------------------------------

    def test_postmaster_and_abuse_for_every_domain(self):
        tag = uuid.uuid4().hex[:8]
        rcpts = ["postmaster@a.test", "Postmaster@B.TEST", "abuse@b.test", "abuse@a.test", ""]
        for r in rcpts:
            reply = self.rcpt(r)
            self.assertEqual(reply.code, 250, (r, reply))
        with smtplib.SMTP("127.0.0.1", self.cluster.smtp_port(), timeout=30) as s:
            for i, r in enumerate(rcpts):
                msg = harness.make_message(f"pm-{tag}-{i}")
                refused = s.sendmail("x@elsewhere.test", [r or "postmaster"], msg)
                self.assertEqual(refused, {})
        got = self.wait_subject(POSTMASTER, f"pm-{tag}-4")
        for i in range(len(rcpts)):
            self.assertIn(f"pm-{tag}-{i}", got)
        # A domain's own postmaster alias wins over the configured account.
        self.cli("alias", "add", "postmaster@b.test", "carol@b.test")
        try:
            harness.deliver(self.cluster.smtp_port(), ["postmaster@b.test"],
                            harness.make_message(f"own-{tag}"))
            self.assertIn(f"own-{tag}", self.wait_subject("carol@b.test", f"own-{tag}"))
            self.assertNotIn(f"own-{tag}", self.subjects(POSTMASTER, self.users[POSTMASTER]))
        finally:
            self.cli("alias", "del", "postmaster@b.test")

    # --- 4. subaddressing --------------------------------------------------------------

    def test_subaddress_delivered_to_the_base_account(self):
        tag = uuid.uuid4().hex[:8]
        cp = harness.run_swaks(self.cluster.smtp_port(), "alice+news@a.test",
                               "--header", f"Subject: sub-{tag}")
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        self.assertIn(f"sub-{tag}", self.wait_subject("alice@a.test", f"sub-{tag}"))
        r = self.rcpt("nobody+news@a.test")
        self.assertEqual(r.code, 550, r)

    # --- 5. aliases and catch-all ------------------------------------------------------

    def test_alias_fans_out_once_per_mailbox(self):
        tag = uuid.uuid4().hex[:8]
        self.cli("alias", "add", "sales@a.test", "alice@a.test", "bob@a.test")
        self.cli("alias", "add", "team@a.test", "sales@a.test", "alice@a.test")
        self.assertIn("sales@a.test -> alice@a.test, bob@a.test", self.cli("alias", "list").stdout)
        # alice is reached three ways in one message: one copy.
        r = harness.deliver(self.cluster.smtp_port(),
                            ["sales@a.test", "team@a.test", "alice+x@a.test"],
                            harness.make_message(f"fan-{tag}"))
        self.assertEqual(r.code, 250, r)
        alice = self.wait_subject("alice@a.test", f"fan-{tag}")
        bob = self.wait_subject("bob@a.test", f"fan-{tag}")
        self.assertEqual(alice.count(f"fan-{tag}"), 1, alice)
        self.assertEqual(bob.count(f"fan-{tag}"), 1, bob)
        self.cli("alias", "del", "team@a.test")
        self.cli("alias", "del", "sales@a.test")
        self.assertEqual(self.rcpt("sales@a.test").code, 550)

    def test_catch_all_and_alias_loops(self):
        tag = uuid.uuid4().hex[:8]
        self.cli("alias", "add", "@b.test", "carol@b.test")
        try:
            r = harness.deliver(self.cluster.smtp_port(), ["whoever@b.test"],
                                harness.make_message(f"catch-{tag}"))
            self.assertEqual(r.code, 250, r)
            self.assertIn(f"catch-{tag}", self.wait_subject("carol@b.test", f"catch-{tag}"))
        finally:
            self.cli("alias", "del", "@b.test")
        self.assertEqual(self.rcpt("whoever@b.test").code, 550)
        # A loop can only be made by replacing an alias; it reaches nobody and ends.
        self.cli("alias", "add", "l1@a.test", "alice@a.test")
        self.cli("alias", "add", "l2@a.test", "l1@a.test")
        self.cli("alias", "del", "l1@a.test")
        self.cli("alias", "add", "l1@a.test", "l2@a.test")
        try:
            r = self.rcpt("l1@a.test")
            self.assertEqual((r.code, r.text[:5]), (550, "5.1.1"), r)
        finally:
            self.cli("alias", "del", "l1@a.test")
            self.cli("alias", "del", "l2@a.test")
        cp = self.cli("alias", "add", "alice@a.test", "bob@a.test", check=False)
        self.assertIn("already an account or an alias", cp.stderr)

    # --- 6. quotas ---------------------------------------------------------------------

    def test_message_quota_with_swaks_and_pop3_deletes(self):
        user, pw = "q@a.test", "pw-q"
        self.cli("user", "add", user, "--password", pw, "--quota-messages", "2")
        self.users[user] = pw
        self.cluster.wait_users_known([user], nodes=[0])
        for i in range(2):
            cp = harness.run_swaks(self.cluster.smtp_port(), user, "--header", f"Subject: q{i}")
            self.assertEqual(cp.returncode, 0, cp.stdout)
        acct = self.account(user)
        # Two nodes, two copies of each message: counted once each.
        self.assertEqual((acct["used_messages"], acct["quota_messages_max"]), (2, 2), acct)
        cp = harness.run_swaks(self.cluster.smtp_port(), user, "--header", "Subject: q2")
        self.assertNotEqual(cp.returncode, 0)
        self.assertIn("<** 552 5.2.2", cp.stdout)
        self.assertIn("holds 2 of 2 messages", cp.stdout)
        listed = self.cli("user", "list").stdout
        self.assertRegex(listed, r"q@a\.test\s+\d+\s+unlimited\s+2\s+2")
        # POP3 deletes bring the mailbox back under its quota.
        self.subjects(user, pw, delete=True)
        self.assertEqual(self.account(user)["used_messages"], 0)
        cp = harness.run_swaks(self.cluster.smtp_port(), user, "--header", "Subject: q3")
        self.assertEqual(cp.returncode, 0, cp.stdout)
        # Raised with `user set`: room again.
        self.cli("user", "set", user, "--quota-messages", "unlimited")
        self.assertIsNone(self.account(user)["quota_messages_max"])

    def test_byte_quota_refused_at_end_of_data_and_domain_default(self):
        self.cli("domain", "add", "small.test", "--quota-bytes", "3000")
        user, pw = "r@small.test", "pw-r"
        self.cli("user", "add", user, "--password", pw)
        self.users[user] = pw
        self.cluster.wait_users_known([user], nodes=[0])
        body = ("x" * 74 + "\n") * 20  # 1500 bytes in lines under the 1000-byte limit
        cp = harness.run_swaks(self.cluster.smtp_port(), user, "--body", body)
        self.assertEqual(cp.returncode, 0, cp.stdout)
        used = self.account(user)["used_bytes"]
        self.assertGreater(used, 1500)
        self.assertLess(used, 3000)
        # RCPT passes (not full yet); the message does not fit: 552 at end of DATA.
        cp = harness.run_swaks(self.cluster.smtp_port(), user, "--body", body)
        self.assertNotEqual(cp.returncode, 0)
        self.assertRegex(cp.stdout, r"<-\s+250 2\.1\.5")
        self.assertIn("<** 552 5.2.2", cp.stdout)
        self.assertIn(f"holds {used} of 3000 bytes", cp.stdout)
        self.assertEqual(self.account(user)["used_messages"], 1, "nothing stored")
        # The account's own limit overrides the domain default.
        self.cli("user", "set", user, "--quota-bytes", "1M")
        cp = harness.run_swaks(self.cluster.smtp_port(), user, "--body", body)
        self.assertEqual(cp.returncode, 0, cp.stdout)


class UnconfiguredTest(unittest.TestCase):
    """One node without a `postmaster` key and with `-` as the subaddress separator."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = harness.Cluster(nodes=1, up_args=("--recipient-delimiter", "-")).start()
        cls.addClassCleanup(cls.cluster.cleanup)
        cls.cluster.add_users([("dave@c.test", "pw-dave")])
        cls.cluster.wait_ready_for_pop("dave@c.test", "pw-dave")

    def rcpt(self, address: str) -> harness.SmtpReply:
        with harness.SmtpRaw(self.cluster.smtp_port()) as s:
            s.cmd("EHLO client.test")
            s.cmd("MAIL FROM:<x@elsewhere.test>")
            return s.cmd(f"RCPT TO:<{address}>")

    def test_postmaster_without_a_target_is_451_not_a_guess(self):
        # Not delivered to dave (the domain's only account): kept at the sender.
        for a in ["postmaster@c.test", "abuse@c.test", "postmaster"]:
            r = self.rcpt(a)
            self.assertEqual((r.code, r.text[:5]), (451, "4.3.0"), (a, r))
            self.assertIn("no postmaster configured", r.text)
        self.assertIn("postmaster/abuse with no account", self.cluster.logs())
        # An alias of the domain fixes it for that domain.
        harness.run_cli("alias", "add", "postmaster@c.test", "dave@c.test",
                        admin=self.cluster.admin_url())
        self.assertEqual(self.rcpt("postmaster@c.test").code, 250)
        self.assertEqual(self.rcpt("abuse@c.test").code, 451)

    def test_the_configured_delimiter_only(self):
        tag = uuid.uuid4().hex[:8]
        self.assertEqual(self.rcpt("dave+x@c.test").code, 550)
        r = harness.deliver(self.cluster.smtp_port(), ["dave-lists@c.test"],
                            harness.make_message(f"dash-{tag}"))
        self.assertEqual(r.code, 250, r)
        got = [harness.header_value(m, "Subject")
               for _, _, m in harness.fetch_all(self.cluster.pop_port(), "dave@c.test", "pw-dave")]
        self.assertIn(f"dash-{tag}", got)


class QuotaAcrossRepairTest(unittest.TestCase):
    """Usage counts each message once on three nodes with two copies each, and stays
    exact when a node dies and repair makes new copies elsewhere."""

    def test_usage_exact_after_a_node_is_lost_and_repaired(self):
        c = harness.Cluster(nodes=3, up_args=("--repair-interval-secs", "5")).start()
        self.addCleanup(c.cleanup)
        user, pw = "quota@r.test", "pw-quota"
        harness.run_cli("user", "add", user, "--password", pw, "--quota-messages", "5",
                        admin=c.admin_url())
        faults.wait_users_known(c, range(3), [user])
        faults.wait_view(c, range(3), 20)
        for k in range(5):
            deadline = time.monotonic() + 15
            while True:
                r = harness.deliver(c.smtp_port(k % 3), user, harness.make_message(f"r{k}"))
                if r.code == 250 or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            self.assertEqual(r.code, 250, r)
        box = faults.holders_by_id(faults.mailbox(c, 0, user))
        self.assertEqual(len(box), 5)
        self.assertEqual(sum(len(set(h)) for h in box.values()), 10, box)

        def used(node: int) -> dict:
            status, body = harness.http_request(f"{c.admin_url(node)}/v1/users/{user}")
            self.assertEqual(status, 200, body)
            return body

        for n in range(3):
            self.assertEqual(used(n)["used_messages"], 5, f"node {n}")
        counts = {i: sum(i in h for h in box.values()) for i in (1, 2)}
        victim = max(counts, key=lambda i: (counts[i], i))
        survivors = [i for i in range(3) if i != victim]
        epoch0 = faults.wait_view(c, range(3), 10)
        c.kill_node(victim)
        faults.wait_view(c, survivors, 15, epoch_above=epoch0)
        harness.run_cli("node", "remove", str(victim), admin=c.admin_url(survivors[0]))
        deadline = time.monotonic() + 60
        while True:
            now = faults.holders_by_id(faults.mailbox(c, survivors[0], user))
            if all(len(set(h)) == 2 and victim not in h for h in now.values()) and len(now) == 5:
                break
            if time.monotonic() > deadline:
                self.fail(f"not repaired in 60 s: {now}")
            time.sleep(1.0)
        for n in survivors:
            u = used(n)
            self.assertEqual((u["used_messages"], u["usage_known"]), (5, True), f"node {n}: {u}")
        with harness.SmtpRaw(c.smtp_port(survivors[0])) as s:
            s.cmd("EHLO client.test")
            s.cmd("MAIL FROM:<x@elsewhere.test>")
            r = s.cmd(f"RCPT TO:<{user}>")
        self.assertEqual((r.code, r.text[:5]), (552, "5.2.2"), r)
        self.assertIn("holds 5 of 5 messages", r.text)


if __name__ == "__main__":
    unittest.main()
