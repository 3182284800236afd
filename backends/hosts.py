"""`expbridge hosts [--json]`: each SSH host's reachability, GPUs, our sessions and breaker state.

One round trip per host (nvidia-smi and the `eb-` sessions), all hosts at once. Read-only: it
never starts, stops or changes anything on a host.
"""
from __future__ import annotations

from typing import Any

from backends.gpus import parse_gpu_csv
from backends.ssh import SshBackend
from backends.sshscripts import SMI, parse_poll, sessions_script
from daemon.errors import HostUnreachable


def hosts_report(backend: SshBackend) -> list[dict[str, Any]]:
    """One dict per configured host, in config order."""
    probed = backend.each_host(list(backend.hosts), lambda alias: _probe(backend, alias))
    return [probed[a] if isinstance(probed[a], dict) else _row(backend, a, False, str(probed[a]))
            for a in backend.hosts]


def _probe(backend: SshBackend, alias: str) -> dict[str, Any]:
    script = f"{sessions_script()}; {SMI}"
    try:
        stdout = backend.call(alias, script).stdout
    except HostUnreachable as exc:
        return _row(backend, alias, False, str(exc))
    sessions = []
    for line in stdout.splitlines():
        if line.startswith("@@G") or line.startswith("@@NOSMI"):
            break
        if line.startswith("eb-"):
            sessions.append(line.strip())
    reading = parse_poll(stdout)
    row = _row(backend, alias, True, "")
    gpus = parse_gpu_csv(reading.gpu_csv) if reading.gpu_csv is not None else []
    held = backend.held_gpus(alias)
    row["gpus"] = [{"index": g.index, "uuid": g.uuid, "used_mib": g.used_mib, "total_mib": g.total_mib,
                    "free": g.used_mib is not None and g.used_mib < backend.threshold_mib
                    and g.index not in held, "our_job": held.get(g.index)} for g in gpus]
    row["gpu_note"] = reading.gpu_note
    row["jobs"] = sessions
    return row


def _row(backend: SshBackend, alias: str, reachable: bool, error: str) -> dict[str, Any]:
    st = backend.state[alias]
    return {"alias": alias, "reachable": reachable, "error": error, "gpus": [], "gpu_note": "",
            "jobs": [], "breaker": st.breaker.state, "failures": st.breaker.failures}


def format_hosts(rows: list[dict[str, Any]]) -> str:
    """The human view: one block per host."""
    lines = []
    for r in rows:
        state = "up" if r["reachable"] else f"UNREACHABLE ({r['error']})"
        lines.append(f"{r['alias']}: {state}; breaker {r['breaker']}")
        for g in r["gpus"]:
            used = "?" if g["used_mib"] is None else g["used_mib"]
            owner = f" ({g['our_job']})" if g["our_job"] else (" free" if g["free"] else "")
            lines.append(f"  gpu {g['index']}: {used}/{g['total_mib']} MiB{owner}")
        if r["gpu_note"]:
            lines.append(f"  {r['gpu_note']}")
        lines.append(f"  our sessions: {', '.join(r['jobs']) or 'none'}")
    return "\n".join(lines)
