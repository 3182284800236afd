#!/bin/sh
# expbridge job wrapper, the same on every backend (POSIX sh; copied to remote hosts).
#   wrapper.sh JOB_DIR LOG CWD GPU CONDA_HOOK CONDA_ENV CMD
# The files it writes in JOB_DIR are the truth about how a job ended:
#   pid      the wrapper's pid (the process-group leader when started with setsid/screen)
#   started  epoch seconds, written before the command starts
#   exit     "<code> <epoch>", renamed into place so a reader never sees half a line
# CMD is the researcher's own shell command; under bash it runs with pipefail, so
# `python train.py | tee x` cannot hide a crash. bash is preferred when present (re-exec below)
# because its clock and subshells save several process spawns per job.
if [ -z "${BASH_VERSION:-}" ] && command -v bash >/dev/null 2>&1; then
    exec bash "$0" "$@"
fi
set -u
job_dir=$1 log=$2 workdir=$3 gpu=$4 conda_hook=$5 conda_env=$6 cmd=$7

# the local backend and the ssh launch script create both already; mkdir is a process, so test first
{ [ -d "$job_dir" ] && [ -d "${log%/*}" ]; } || mkdir -p "$job_dir" "${log%/*}" || exit 96
now() {
    if [ -n "${EPOCHREALTIME:-}" ]; then printf '%s' "$EPOCHREALTIME"; else date +%s.%N 2>/dev/null || date +%s; fi
}

if [ -n "$gpu" ]; then
    CUDA_VISIBLE_DEVICES=$gpu
    export CUDA_VISIBLE_DEVICES
fi
CUDA_DEVICE_ORDER=PCI_BUS_ID
EB_JOB_DIR=$job_dir
export CUDA_DEVICE_ORDER EB_JOB_DIR

# pid and started are written in place: a reader that finds one empty treats it as not there yet
printf '%s\n' "$$" > "$job_dir/pid"
printf '%s\n' "${EPOCHREALTIME:-$(now)}" > "$job_dir/started"

(
    [ -n "${BASH_VERSION:-}" ] && set -o pipefail
    cd -- "$workdir" || { echo "expbridge: cannot cd to $workdir" >&2; exit 97; }
    if [ -n "$conda_hook" ]; then
        eval "$conda_hook" || { echo "expbridge: conda hook failed" >&2; exit 98; }
        if [ -n "$conda_env" ]; then
            conda activate "$conda_env" || { echo "expbridge: conda activate $conda_env failed" >&2; exit 98; }
        fi
    fi
    unset job_dir log workdir gpu conda_hook conda_env
    eval "$cmd"
) >>"$log" 2>&1 </dev/null
code=$?
printf '%s %s\n' "$code" "${EPOCHREALTIME:-$(now)}" > "$job_dir/exit.tmp" && mv -f "$job_dir/exit.tmp" "$job_dir/exit"
exit "$code"
