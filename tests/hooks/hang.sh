#!/bin/sh
# Never finishes: leaves a grandchild (sleep under a sub-shell) and, with HOOK_IGNORE_TERM=1,
# refuses SIGTERM so only SIGKILL ends it. Records the pids it started under $EB_OUT.
[ "${HOOK_IGNORE_TERM:-0}" = 1 ] && trap '' TERM
sh -c 'sleep 300 & echo $! > "$EB_OUT/grandchild.pid"; wait' &
echo $$ > "$EB_OUT/hook.pid"
while :; do sleep 1; done
