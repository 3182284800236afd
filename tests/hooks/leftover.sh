#!/bin/sh
# Succeeds but leaves a background process behind in its group.
sleep 300 &
echo $! > "$EB_OUT/leftover.pid"
echo '{"status": "ok"}' > "$EB_OUT/result.json"
