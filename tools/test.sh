#!/usr/bin/env bash
# Everything the test suite needs on a fresh Debian machine, then the suite itself.
#   bash tools/test.sh [pytest args...]
# As root it installs the real parts the tests drive (OpenSSH server, screen, tmux, rsync,
# Slurm with munge, task-spooler for the benchmarks, systemd-analyze); elsewhere it uses what is
# there, and tests whose real part is missing skip with the reason (outside CI only).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES="openssh-server openssh-client screen tmux rsync task-spooler slurmctld slurmd slurm-client munge systemd jq procps"
missing=""
for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "installing:$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # policy-rc.d keeps the packages' own services from starting; the tests start their own
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
        rm -f /usr/sbin/policy-rc.d
    else
        echo "not root: cannot install$missing; tests that need them will skip" >&2
    fi
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,vast,modal]'
exec .venv/bin/python -m pytest "$@"
