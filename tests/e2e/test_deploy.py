"""deploy/ checked offline: the systemd unit with `systemd-analyze verify` (and its
exposure score), the Kubernetes manifests against the API schemas
(`kubernetes-validate`), the node.toml files with `porcupine serve --check`, and the
Containerfile's rules (multi-stage, non-root, data volume)."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import yaml

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

DEPLOY = harness.REPO / "deploy"


def check_config(text: str, *extra: str) -> subprocess.CompletedProcess:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(text)
    try:
        return subprocess.run([str(harness.BINARY), "serve", "--config", f.name, "--check",
                               "--node-id", "2", *extra],
                              capture_output=True, text=True, timeout=30)
    finally:
        os.unlink(f.name)


class Systemd(unittest.TestCase):
    def setUp(self):
        harness.require_binary()
        harness.require_tool("systemd-analyze", "systemd")

    def unit(self, tmp: str) -> str:
        text = (DEPLOY / "systemd" / "porcupine.service").read_text()
        # verify checks ExecStart exists: point it at the binary under test.
        text = text.replace("/usr/local/bin/porcupine", str(harness.BINARY))
        path = os.path.join(tmp, "porcupine.service")
        Path(path).write_text(text)
        return path

    def test_unit_verifies(self):
        with tempfile.TemporaryDirectory() as tmp:
            cp = subprocess.run(["systemd-analyze", "verify", self.unit(tmp)],
                                capture_output=True, text=True, timeout=60)
            self.assertEqual(cp.returncode, 0, cp.stderr)
            self.assertEqual(cp.stderr.strip(), "", f"systemd-analyze complained: {cp.stderr}")

    def test_unit_is_hardened(self):
        text = (DEPLOY / "systemd" / "porcupine.service").read_text()
        for line in ["User=porcupine", "ProtectSystem=strict", "ReadWritePaths=/var/lib/porcupine",
                     "NoNewPrivileges=yes", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                     "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]:
            self.assertIn(line, text.splitlines())
        with tempfile.TemporaryDirectory() as tmp:
            cp = subprocess.run(["systemd-analyze", "security", "--offline=yes", self.unit(tmp)],
                                capture_output=True, text=True, timeout=60)
            m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", cp.stdout + cp.stderr)
            self.assertIsNotNone(m, cp.stdout + cp.stderr)
            print(f"\n  systemd-analyze security exposure: {m.group(1)} (0 best, 10 worst)",
                  end=" ", file=sys.stderr)
            self.assertLessEqual(float(m.group(1)), 3.0)

    def test_node_toml_is_valid(self):
        cp = check_config((DEPLOY / "systemd" / "node.toml").read_text())
        self.assertEqual(cp.returncode, 0, cp.stderr)
        self.assertIn("bootstrap_expect = 3", cp.stdout)


class Kubernetes(unittest.TestCase):
    def setUp(self):
        harness.require_binary()
        if shutil.which("kubernetes-validate") is None:
            self.skipTest("kubernetes-validate not installed (pip install kubernetes-validate)")
        self.docs = [d for f in sorted((DEPLOY / "k8s").glob("*.yaml"))
                     if f.name != "kustomization.yaml"
                     for d in yaml.safe_load_all(f.read_text()) if d]

    def test_manifests_match_the_api_schemas(self):
        files = [str(f) for f in sorted((DEPLOY / "k8s").glob("*.yaml"))
                 if f.name != "kustomization.yaml"]
        cp = subprocess.run(["kubernetes-validate", "--strict", *files],
                            capture_output=True, text=True, timeout=120)
        self.assertEqual(cp.returncode, 0, cp.stdout + cp.stderr)
        self.assertNotIn("ERROR", cp.stdout + cp.stderr)

    def kind(self, kind: str, name: str | None = None) -> dict:
        for d in self.docs:
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name):
                return d
        self.fail(f"no {kind} {name or ''}")

    def test_statefulset_has_what_a_cluster_needs(self):
        sts = self.kind("StatefulSet")
        spec = sts["spec"]
        peers = self.kind("Service", spec["serviceName"])
        self.assertEqual(peers["spec"]["clusterIP"], "None", "peer discovery needs a headless Service")
        self.assertTrue(peers["spec"].get("publishNotReadyAddresses"))
        self.assertEqual(spec["podManagementPolicy"], "Parallel")
        self.assertTrue(spec["volumeClaimTemplates"], "one PVC per pod")
        pod = spec["template"]["spec"]
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        main = pod["containers"][0]
        self.assertEqual(main["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(main["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.kind("PodDisruptionBudget")
        self.kind("Service", "porcupine-mail")
        secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        self.assertEqual(secrets, {"porcupine-admin-token", "porcupine-cluster-tls", "porcupine-mail-tls"})

    def test_configmap_node_toml_is_valid_for_every_pod(self):
        text = self.kind("ConfigMap")["data"]["node.toml"]
        replicas = self.kind("StatefulSet")["spec"]["replicas"]
        self.assertIn(f"bootstrap_expect = {replicas}", text)
        cp = check_config(text)
        self.assertEqual(cp.returncode, 0, cp.stderr)
        for i in range(replicas):
            self.assertIn(f'"porcupine-{i}.porcupine-peers:2503"', text)


class Container(unittest.TestCase):
    def test_containerfile_rules(self):
        text = (DEPLOY / "Containerfile").read_text()
        froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
        self.assertGreaterEqual(len(froms), 2, "multi-stage build")
        self.assertIn("COPY --from=build", text)
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        self.assertTrue(users and not users[-1].startswith(("0", "root")), f"non-root: {users}")
        self.assertRegex(text, r'VOLUME \["/var/lib/porcupine"\]')


if __name__ == "__main__":
    unittest.main()
