"""Every error expbridge raises, named for what it means.

ExpbridgeError
├── ConfigError            a config file, CLAUDE.md key or override is wrong (file:line in the message)
├── InputError             a plan, tracker or manifest cannot be used (carries diagnostics)
├── InvalidTransition      a state change the transition table does not allow
├── LockHeld               another controller owns the project or the state directory
├── StoreError             the state database is unusable (corrupt, full disk)
├── HookError              a hook crashed, timed out or wrote a bad result.json
└── BackendError           an execution backend failed (retryable says whether to try again)
    ├── BackendUnavailable preflight failed: unreachable, no credentials, missing extra
    ├── LaunchFailed       a submit did not produce a verified start
    ├── CapacityUnavailable renting found no offer (a provisioning retry, not a job attempt)
    └── UnsafeValue        an id, path or host outside the safe charset (never reaches a shell)
"""
from __future__ import annotations


class ExpbridgeError(Exception):
    """Base of every error expbridge raises on purpose."""


class ConfigError(ExpbridgeError):
    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        super().__init__(f"{where}{message}")
        self.file, self.line = file, line


class InputError(ExpbridgeError):
    def __init__(self, message: str, diagnostics: list | None = None) -> None:
        super().__init__(message)
        self.diagnostics = diagnostics or []


class InvalidTransition(ExpbridgeError):
    def __init__(self, kind: str, src: str, dst: str) -> None:
        super().__init__(f"{kind}: {src} -> {dst} is not an allowed transition")
        self.kind, self.src, self.dst = kind, src, dst


class LockHeld(ExpbridgeError):
    def __init__(self, path: str, holder: str) -> None:
        super().__init__(f"{path} is held by {holder}")
        self.path, self.holder = path, holder


class StoreError(ExpbridgeError):
    pass


class HookError(ExpbridgeError):
    pass


class BackendError(ExpbridgeError):
    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class BackendUnavailable(BackendError):
    pass


class LaunchFailed(BackendError):
    retryable = True


class CapacityUnavailable(BackendError):
    retryable = True


class UnsafeValue(BackendError):
    pass


class HostUnreachable(BackendError):
    """A remote host or the link to it failed (connect, auth, drop, timeout): infrastructure."""

    retryable = True


class ApprovalRequired(BackendError):
    """Renting would pass the budget's usd_max: nothing is rented until someone approves."""


class BudgetRefused(BackendError):
    """Renting would pass the budget's usd_hard_cap: refused outright."""
