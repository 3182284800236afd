#!/bin/sh
# expbridge job wrapper, the same on every backend (POSIX sh; copied to remote hosts).
#   wrapper.sh JOB_DIR LOG CWD GPU CONDA_HOOK CONDA_ENV CMD
# The files it writes in JOB_DIR are the truth about how a job ended:
#   pid      the wrapper's pid (the process-group leader when started with setsid/screen)
#   started  epoch seconds, written before the command starts
#   exit     "<code> <epoch>", renamed into place so a reader never sees half a line
# CMD is the researcher's own shell command; it runs in bash with pipefail when bash exists, so
# `python train.py | tee x` cannot hide a crash.
set -u
job_dir=$1 log=$2 workdir=$3 gpu=$4 conda_hook=$5 conda_env=$6 cmd=$7

mkdir -p "$job_dir" "$(dirname "$log")" || exit 96
now() { date +%s.%N 2>/dev/null || date +%s; }
put() { printf '%s\n' "$2" > "$job_dir/$1.tmp" && mv -f "$job_dir/$1.tmp" "$job_dir/$1"; }

if [ -n "$gpu" ]; then
    CUDA_VISIBLE_DEVICES=$gpu
    export CUDA_VISIBLE_DEVICES
fi
CUDA_DEVICE_ORDER=PCI_BUS_ID
EB_JOB_DIR=$job_dir
export CUDA_DEVICE_ORDER EB_JOB_DIR

put pid "$$"
put started "$(now)"

shell=sh
command -v bash >/dev/null 2>&1 && shell=bash
script='
cd -- "$1" || { echo "expbridge: cannot cd to $1" >&2; exit 97; }
if [ -n "$2" ]; then
    eval "$2" || { echo "expbridge: conda hook failed" >&2; exit 98; }
    if [ -n "$3" ]; then conda activate "$3" || { echo "expbridge: conda activate $3 failed" >&2; exit 98; }; fi
fi
eval "$4"'
if [ "$shell" = bash ]; then
    bash -o pipefail -c "$script" eb-job "$workdir" "$conda_hook" "$conda_env" "$cmd" >>"$log" 2>&1 </dev/null
else
    sh -c "$script" eb-job "$workdir" "$conda_hook" "$conda_env" "$cmd" >>"$log" 2>&1 </dev/null
fi
code=$?
put exit "$code $(now)"
exit "$code"
