#!/bin/sh
# Check the Kubernetes samples:
#  1. every manifest validates against the Kubernetes API schemas (npm
#     kubernetes-models, whose validators are generated from the official
#     OpenAPI document: types, required fields, enums, formats; it does not
#     flag unknown field names);
#  2. the ConfigMap's config passes `switchboardd --check-config` with the
#     Deployment's environment, when a built or installed daemon is at hand
#     (SB_DAEMON, else ../../host/switchboardd, else /usr/sbin/switchboardd).
# The npm packages are installed once into SB_K8S_MODULES
# (default ~/.cache/switchboard-k8s-check).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
modules=${SB_K8S_MODULES:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-k8s-check}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "kubernetes: node/npm not installed: schema check skipped"
else
    if [ ! -d "$modules/node_modules/kubernetes-models" ] || [ ! -d "$modules/node_modules/js-yaml" ]; then
        mkdir -p "$modules"
        (cd "$modules" && npm install --no-audit --no-fund --silent --no-save \
            kubernetes-models@5.1.0 js-yaml@4) || { echo "kubernetes: npm install failed: schema check skipped"; modules=""; }
    fi
    if [ -n "$modules" ]; then
        SB_K8S_MODULES=$modules node "$here/validate.mjs" "$here"/*.yaml
    fi
fi

daemon=${SB_DAEMON:-}
[ -n "$daemon" ] || { [ -x "$here/../../host/switchboardd" ] && daemon=$here/../../host/switchboardd; } || true
[ -n "$daemon" ] || { [ -x /usr/sbin/switchboardd ] && daemon=/usr/sbin/switchboardd; } || true
if [ -z "$daemon" ]; then
    echo "kubernetes: no switchboardd built or installed: config check skipped"
    exit 0
fi
command -v python3 >/dev/null 2>&1 || { echo "kubernetes: no python3: config check skipped"; exit 0; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Lay the ConfigMap out as the Deployment mounts it, with stub plugin files.
python3 - "$here/configmap.yaml" "$here/deployment.yaml" "$tmp" <<'PY'
import json, os, re, sys
cm, dep, out = sys.argv[1:4]
text = open(cm).read()
# The ConfigMap's data is literal blocks of JSON: "  key: |" then indented lines.
data, key, lines = {}, None, []
for line in text.splitlines():
    m = re.match(r"^  ([A-Za-z0-9._-]+): \|$", line)
    if m:
        if key: data[key] = "\n".join(lines)
        key, lines = m.group(1), []
    elif key is not None and (line.startswith("    ") or not line.strip()):
        lines.append(line[4:])
    elif key is not None:
        data[key] = "\n".join(lines); key = None
if key: data[key] = "\n".join(lines)
items = re.findall(r"- key: (\S+)\n\s+path: (\S+)", open(dep).read())
os.makedirs(os.path.join(out, "plugins"))
for k, p in items:
    dst = os.path.join(out, "etc", p)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    json.loads(data[k])
    open(dst, "w").write(data[k])
    for name in json.loads(data[k]).get("plugins", {}):
        open(os.path.join(out, "plugins", name + ".so"), "w").close()
env = re.findall(r"- name: (ENABLE_\w+|MULTI_PROVIDER_PORT|\w+_WEBHOOK_PATH)\n\s+value: \"?([^\"\n]*)\"?", open(dep).read())
open(os.path.join(out, "env"), "w").write("".join("%s=%s\n" % e for e in env))
PY
# shellcheck disable=SC2046
env -i PATH="$PATH" $(cat "$tmp/env") "$daemon" --check-config --config "$tmp/etc/switchboard.json" \
    --plugin-dir "$tmp/plugins"
echo "kubernetes: manifests OK"
