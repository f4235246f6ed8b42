#!/usr/bin/python3
"""deploy/validate on the repository's manifests and workflow (must pass) and
on a copy with one break of each kind (must fail, naming every break).

  validate_test.py valid|broken      (ctest runs both; HOTBOOT_SOURCE_DIR = the checkout)
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile

SRC = os.environ.get("HOTBOOT_SOURCE_DIR") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
VALIDATE = os.path.join(SRC, "deploy", "validate")


def run(k8s_dir, workflows_dir):
    r = subprocess.run([VALIDATE, "--json", "--k8s-dir", k8s_dir, "--workflows-dir", workflows_dir],
                       capture_output=True, text=True, timeout=170)
    try:
        out = json.loads(r.stdout)
    except json.JSONDecodeError:
        out = None
    return r.returncode, out, r.stderr


def edit(path, old, new):
    """Replaces old (which must be there once) by new in path."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if text.count(old) != 1:
        raise AssertionError(f"{path}: the text to break is not there once: {old!r}")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(old, new))


def test_valid():
    code, out, err = run(os.path.join(SRC, "deploy", "k8s"), os.path.join(SRC, ".github", "workflows"))
    assert out is not None, f"no JSON on stdout (exit {code}): {err}"
    assert code == 0 and out["ok"], f"the repository's deployment files do not validate: {out['errors'] or out}"
    kinds = {c["kind"] for c in out["checked"]}
    for kind in ("Deployment", "HorizontalPodAutoscaler", "DaemonSet", "Job", "ConfigMap", "Secret",
                 "Kustomization", "Workflow"):
        assert kind in kinds, f"{kind} was not checked (checked: {sorted(kinds)})"


def test_broken():
    with tempfile.TemporaryDirectory(prefix="hotboot-validate-test.") as tmp:
        k8s = os.path.join(tmp, "k8s")
        gh = os.path.join(tmp, ".github")
        shutil.copytree(os.path.join(SRC, "deploy", "k8s"), k8s)
        shutil.copytree(os.path.join(SRC, ".github"), gh)
        wf = os.path.join(gh, "workflows")
        # An unknown field deep in a pod template.
        edit(os.path.join(k8s, "daemonset-prepull.yaml"),
             "          imagePullPolicy: IfNotPresent\n",
             "          imagePullPolicy: IfNotPresent\n          restartDelaySeconds: 5\n")
        # A value of the wrong type.
        edit(os.path.join(k8s, "hpa.yaml"), "  minReplicas: 2\n", "  minReplicas: two\n")
        # A required field missing (a container without a name).
        edit(os.path.join(k8s, "job-build.yaml"), "        - name: build\n          image:",
             "        - image:")
        # A kind its apiVersion does not have.
        edit(os.path.join(k8s, "configmap.yaml"), "kind: ConfigMap\nmetadata:\n  name: hotboot-trust",
             "kind: ConfigMapp\nmetadata:\n  name: hotboot-trust")
        # A manifest the kustomization does not list.
        with open(os.path.join(k8s, "extra.yaml"), "w") as f:
            f.write("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n")
        # An unknown key in a workflow step, and an undefined context.
        edit(os.path.join(wf, "snapshot.yml"), "      - uses: actions/checkout@v4\n",
             "      - uses: actions/checkout@v4\n        retries: 3\n      - run: echo ${{ secret.X }}\n")

        code, out, err = run(k8s, wf)
        assert out is not None, f"no JSON on stdout (exit {code}): {err}"
        assert code == 1 and not out["ok"], f"the broken copy passed (exit {code}): {out}"
        errors = out["errors"]

        def has(file_end, what):
            return any(e["file"].endswith(file_end) and what in (e["path"] + " " + e["message"])
                       for e in errors)

        expected = [
            ("daemonset-prepull.yaml", "restartDelaySeconds"),          # unknown field
            ("hpa.yaml", "spec.minReplicas"),                           # wrong type
            ("job-build.yaml", "'name' is missing"),                    # required field
            ("configmap.yaml", "ConfigMapp"),                           # unknown kind
            ("kustomization.yaml", "extra.yaml is not listed"),
            ("snapshot.yml", "retries"),
            ("snapshot.yml", "secret"),
        ]
        missing = [x for x in expected if not has(*x)]
        assert not missing, f"breaks not reported: {missing}; errors: {json.dumps(errors, indent=1)}"
        # Each report names a line of the YAML it came from.
        for e in errors:
            if e["file"].endswith(("daemonset-prepull.yaml", "hpa.yaml")):
                assert e["line"] > 0, f"no line for {e}"


if __name__ == "__main__":
    case = sys.argv[1] if len(sys.argv) > 1 else ""
    tests = {"valid": test_valid, "broken": test_broken}
    if case not in tests:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    try:
        tests[case]()
    except AssertionError as e:
        print(f"FAIL deploy_validate.{case}: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"PASS deploy_validate.{case}")
