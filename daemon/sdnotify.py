"""A dependency-free sd_notify: tell systemd we are ready, alive, reloading or stopping.

The `sdnotify` package connects once at construction and hides every error, even programming
ones; this sends one datagram per call (so a restarted systemd is reached) and reports an
unreachable socket as False.
"""
from __future__ import annotations

import os
import socket


def _address(raw: str) -> str:
    # '@name' is the abstract namespace, spelled with a leading NUL on the wire
    return "\0" + raw[1:] if raw.startswith("@") else raw


def notify(state: str) -> bool:
    """Send e.g. 'READY=1' or 'WATCHDOG=1'. False when not under Type=notify, or when the
    socket cannot be reached: a lost notification must not stop the daemon, and the caller
    (which knows whether systemd is expected) decides whether to log it."""
    raw = os.environ.get("NOTIFY_SOCKET")
    if not raw:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)  # a socket nobody drains must never stall the core loop
            sock.connect(_address(raw))
            sock.sendall(state.encode())
    except OSError:
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when no watchdog is set."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec:
        return None
    try:
        interval_us = int(usec)
        if pid and int(pid) != os.getpid():
            return None  # the watchdog is meant for another process (e.g. our parent)
    except ValueError:
        return None
    return interval_us / 2e6 if interval_us > 0 else None
