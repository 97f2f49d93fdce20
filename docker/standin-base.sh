#!/usr/bin/env bash
# Builds a stand-in for the Dockerfile's base image (python:3.11-slim-bookworm)
# from Debian's packages, for machines that reach Debian's and PyPI's package
# registries but no container registry (CI here). The image is a Debian bookworm
# made by mmdebstrap with python3, python3-venv and ca-certificates, imported
# with `docker import`; the machine's CA bundle and pip settings are copied in,
# so that `pip install` during `docker build --network host` reaches the same
# package index the machine itself uses.
#
#     docker/standin-base.sh [TAG]        # default tag: probe-standin-base:bookworm
#     docker build --network host --build-arg BASE=probe-standin-base:bookworm \
#         -f docker/Dockerfile -t probe .
#
# Needs root, mmdebstrap and a running Docker daemon (DOCKER_HOST is honoured).
# STANDIN_TIMEOUT (seconds, default 900) bounds the whole build.
set -euo pipefail

tag="${1:-probe-standin-base:bookworm}"
limit="${STANDIN_TIMEOUT:-900}"

fail() { echo "standin-base: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (mmdebstrap builds the root file system as root)"
command -v mmdebstrap >/dev/null || fail "mmdebstrap is missing: apt-get install mmdebstrap"
command -v docker >/dev/null || fail "the docker client is missing: apt-get install docker.io"
docker version >/dev/null 2>&1 || fail "no Docker daemon answers (DOCKER_HOST=${DOCKER_HOST:-default}): start dockerd first"

work="$(mktemp -d /tmp/probe-standin.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# pip inside the image: the machine's CA bundle (it may hold the CA of a
# TLS-inspecting egress proxy) and the index settings that make sense in
# another file system. Local paths (file:// indexes, find-links, constraint
# files) exist only on this machine and are left out.
python3 - "$work/pip.conf" <<'PY'
import subprocess, sys
keep = {"index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "default-timeout", "retries"}
lines = ["[global]", "cert = /etc/ssl/certs/ca-certificates.crt"]
try:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                         text=True, timeout=60).stdout
except (OSError, subprocess.SubprocessError):
    out = ""
settings = {}
for line in out.splitlines():
    name, _, value = line.partition("=")
    key = name.split(".", 1)[-1]
    value = value.strip().strip("'\"")
    if key in keep and value:
        urls = [v for v in value.split() if not v.startswith("file:")]
        if urls:
            settings[key] = " ".join(urls)  # the environment's value wins: it is listed last
for key, value in settings.items():
    lines.append(f"{key} = {value}")
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY

bundle=/etc/ssl/certs/ca-certificates.crt
[ -r "$bundle" ] || fail "no CA bundle at $bundle (apt-get install ca-certificates)"

# The host's own apt settings for Release files (an archive snapshot may be older
# than its Valid-Until), applied inside the chroot as well.
echo "standin-base: mmdebstrap bookworm (python3, python3-venv, ca-certificates)..." >&2
start=$SECONDS
timeout --kill-after=30 "$limit" mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-venv,ca-certificates \
    --aptopt='Acquire::Check-Valid-Until "false"' --aptopt='Acquire::Check-Date "false"' \
    --customize-hook="copy-in $bundle /etc/ssl/certs" \
    --customize-hook="copy-in $work/pip.conf /etc" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$work/rootfs.tar" \
    || fail "mmdebstrap failed or took longer than ${limit}s (is Debian's package registry reachable?)"

left=$(( limit - (SECONDS - start) ))
[ "$left" -gt 0 ] || fail "no time left to import the image (limit ${limit}s)"
timeout --kill-after=30 "$left" docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    "$work/rootfs.tar" "$tag" >/dev/null \
    || fail "docker import failed"
echo "standin-base: $tag built in $(( SECONDS - start ))s" >&2
