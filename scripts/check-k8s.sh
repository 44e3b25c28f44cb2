#!/usr/bin/env bash
# Offline check of the Kubernetes example (deploy/kubernetes/*.yaml): every
# resource against the Kubernetes API schemas that kubernetes-validate
# bundles (strict: an unknown field fails), and the start script it mounts
# through `sh -n`. Part of `make lint`. Needs python3 with venv and PyPI the
# first time (the venv is kept in target/).
#
# Environment (optional):
#   K8S_VALIDATE_VERSION  kubernetes-validate from PyPI (default 1.37.0)
#   K8S_VALIDATE_VENV     the venv (default target/k8s-validate-venv)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="${K8S_VALIDATE_VERSION:-1.37.0}"
venv="${K8S_VALIDATE_VENV:-$root/target/k8s-validate-venv}"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$version"
fi
shopt -s nullglob
manifests=("$root"/deploy/kubernetes/*.yaml)
[ ${#manifests[@]} -gt 0 ] || { echo "no manifest in deploy/kubernetes" >&2; exit 1; }
"$venv/bin/kubernetes-validate" --strict --quiet "${manifests[@]}"
# The scripts the manifests carry in ConfigMaps (keys ending in .sh) parse.
"$venv/bin/python" - "${manifests[@]}" <<'PY'
import subprocess, sys, yaml
bad = 0
for path in sys.argv[1:]:
    for doc in yaml.safe_load_all(open(path)):
        if not doc or doc.get("kind") != "ConfigMap":
            continue
        for name, text in (doc.get("data") or {}).items():
            if name.endswith(".sh"):
                r = subprocess.run(["sh", "-n"], input=text.encode(), capture_output=True)
                if r.returncode != 0:
                    bad += 1
                    print(f"{path}: {name}: {r.stderr.decode().strip()}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
echo "kubernetes manifests ok (${#manifests[@]} file(s))"
