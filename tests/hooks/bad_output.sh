#!/bin/sh
# Exits 0 with a result.json that breaks the contract in the way $1 names.
case "$1" in
  none) ;;
  garbage) printf '{"status": "ok", findings: [' > "$EB_OUT/result.json" ;;
  list) echo '[1, 2]' > "$EB_OUT/result.json" ;;
  no-status) echo '{"findings": []}' > "$EB_OUT/result.json" ;;
  findings-not-list) echo '{"status": "ok", "findings": "none"}' > "$EB_OUT/result.json" ;;
  no-severity) echo '{"status": "ok", "findings": [{"issue": "x"}]}' > "$EB_OUT/result.json" ;;
esac
exit 0
