#!/bin/sh
# Run every bench and print its figures (DESIGN §8). Not pass/fail: a bench that cannot run says
# why and the others go on. --smoke uses small sizes (CI: the whole run stays under ~2 minutes).
#   bench/run_all.sh [--smoke]
set -u
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python}
SMOKE=""
[ "${1:-}" = "--smoke" ] && SMOKE="--smoke"
status=0

run() {
    name=$1; shift
    echo "== $name: $*"
    start=$(date +%s)
    if ! "$@"; then
        echo "!! $name failed (exit $?)"
        status=1
    fi
    echo "   ($name took $(( $(date +%s) - start )) s)"
}

echo "expbridge benches $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
run local   "$PY" bench/bench_local.py $SMOKE
run daemon  "$PY" bench/bench_daemon.py $SMOKE
run scale   "$PY" bench/bench_scale.py $SMOKE
# The SSH and Slurm benches need root, sshd and slurmctld; full runs only (they start servers).
if [ -z "$SMOKE" ]; then
    [ -f bench/bench_ssh.py ] && run ssh "$PY" bench/bench_ssh.py
    [ -f bench/bench_slurm.py ] && run slurm "$PY" bench/bench_slurm.py
fi
exit $status
