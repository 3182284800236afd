#!/usr/bin/env python3
"""A stand-in reviewer: echoes its environment and context listing into result.json, with the
findings given as JSON in $HOOK_FINDINGS and the status in $HOOK_STATUS."""
import json
import os
import sys
from pathlib import Path

out = Path(os.environ["EB_OUT"])
context = Path(os.environ["EB_CONTEXT_DIR"])
print("reviewing", os.environ["EB_PHASE"], flush=True)
result = {
    "status": os.environ.get("HOOK_STATUS", "ok"),
    "findings": json.loads(os.environ.get("HOOK_FINDINGS", "[]")),
    "env": {k: v for k, v in os.environ.items() if k.startswith("EB_")},
    "cwd": os.getcwd(),
    "stdin_empty": sys.stdin.read() == "",
    "context": sorted(str(p.relative_to(context)) for p in context.rglob("*") if p.is_file()),
}
(out / "result.json").write_text(json.dumps(result))
