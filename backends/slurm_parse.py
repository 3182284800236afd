"""Pure text in and out of Slurm: the sbatch options and batch script we feed it, the poll
snippet, the squeue/sacct/scontrol tables it prints, and the mapping of Slurm job states onto
expbridge job states (DESIGN §3).

No I/O here, so every state a one-node test cluster cannot produce (OUT_OF_MEMORY, PREEMPTED,
NODE_FAIL from sacct) is tested by parsing recorded output (tests/data/slurm/).
"""
from __future__ import annotations

import dataclasses
import json
import re
import shlex
from dataclasses import dataclass
from typing import Mapping, Sequence

from backends.base import Handle, JobSpec, RunStatus, classify_exit, parse_exit_file
from daemon.errors import ConfigError, UnsafeValue

# One squeue call per tick; `exit_code` is the raw wait status (code << 8 | signal).
SQUEUE_FIELDS = ("JobID", "JobArrayID", "Name", "State", "Reason", "exit_code", "StartTime", "EndTime")
SQUEUE_FORMAT = ",".join(f"{f}:|" for f in SQUEUE_FIELDS)
TAIL_BYTES = 8192  # of the log, read only after a non-zero exit (OOM patterns)
NAMED_FORMAT = "JobID:|,Name:|,WorkDir:|"  # adoption by name checks the job dir too
SACCT_FIELDS = ("JobID", "JobName", "State", "ExitCode", "Start", "End", "Reason")

PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING"}
# not final yet: the job's processes may still be alive, or the final state not yet recorded
RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "POWER_UP_NODE"}
LOST = {"NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "REVOKED"}
TIMEOUT = {"TIMEOUT", "DEADLINE"}
HELD_REASONS = ("JobHeldUser", "JobHeldAdmin")


@dataclass(frozen=True)
class SlurmJob:
    """What Slurm says about one job (or one array task), whichever tool said it."""

    ref: str  # "123" or "123_4": what a Handle carries
    name: str
    state: str  # base state, upper case: RUNNING, CANCELLED, ...
    reason: str = ""
    exit_code: int | None = None  # the process's code, when it exited by itself
    signal: int | None = None  # the signal that ended it, when one did
    start: str = ""
    end: str = ""
    cancelled_by: str = ""  # sacct: "CANCELLED by 1000"


@dataclass(frozen=True)
class JobFiles:
    """The wrapper's files for one job, as read back in the poll bundle."""

    exit_text: str | None = None
    started_text: str | None = None
    tail: str = ""


def job_ref(job_id: str, array_id: str) -> str:
    """The id a Handle keeps: the array form `123_4` for array tasks, the plain id otherwise."""
    if array_id and "_" in array_id and "[" not in array_id:
        return array_id
    return job_id


def base_id(ref: str) -> str:
    return ref.split("_", 1)[0]


def _split_state(raw: str) -> tuple[str, str]:
    """'CANCELLED by 1000' -> ('CANCELLED', '1000'); 'COMPLETED+' -> ('COMPLETED', '')."""
    state, _, rest = raw.strip().partition(" ")
    by = rest[3:].strip() if rest.startswith("by ") else ""
    return state.rstrip("+").upper(), by


def _wait_status(raw: str) -> tuple[int | None, int | None]:
    """squeue's exit_code is a raw wait status: 1024 is exit 4, 9 is signal 9."""
    try:
        status = int(raw)
    except ValueError:
        return None, None
    sig = status & 0x7F
    return (None, sig) if sig else (status >> 8, None)


def _code_sig(raw: str) -> tuple[int | None, int | None]:
    """sacct/scontrol's ExitCode is 'code:signal'."""
    code, _, sig = raw.strip().partition(":")
    try:
        c, s = int(code), int(sig or 0)
    except ValueError:
        return None, None
    return (None, s) if s else (c, None)


def parse_squeue(text: str) -> dict[str, SlurmJob]:
    """Rows of `squeue -h -t all -r -O SQUEUE_FORMAT`, keyed by ref; other lines are ignored."""
    jobs: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        cells = line.split("|")
        if len(cells) < len(SQUEUE_FIELDS) or not cells[0].strip().isdigit():
            continue
        job_id, array_id, name, state, reason, status, start, end = (c.strip() for c in cells[:8])
        code, sig = _wait_status(status)
        ref = job_ref(job_id, array_id)
        base, _ = _split_state(state)
        jobs[ref] = SlurmJob(ref, name, base, reason, code, sig, start, end)
    return jobs


def parse_named(text: str) -> list[tuple[str, str, str]]:
    """Rows of `squeue -O NAMED_FORMAT`: (job id, name, work dir)."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            rows.append((cells[0], cells[1], cells[2]))
    return rows


def parse_sacct(text: str) -> dict[str, SlurmJob]:
    """Rows of `sacct -X -n -P --format=SACCT_FIELDS`: `123_4|name|CANCELLED by 0|0:15|...`."""
    jobs: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        cells = line.split("|")
        if len(cells) < 4 or not cells[0][:1].isdigit() or "." in cells[0]:
            continue  # steps (123.batch) say nothing the allocation row does not
        ref, name, state_raw, exit_raw = cells[:4]
        start, end, reason = (cells[4:7] + ["", "", ""])[:3]
        state, by = _split_state(state_raw)
        code, sig = _code_sig(exit_raw)
        jobs[ref] = SlurmJob(ref, name, state, reason, code, sig, start, end, by)
    return jobs


_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:]*)=")


def parse_scontrol_record(text: str) -> dict[str, str]:
    """One `scontrol show job -o` record as key -> value; values may contain spaces."""
    fields: dict[str, str] = {}
    matches = list(_SCONTROL_KEY.finditer(text.strip()))
    for here, nxt in zip(matches, matches[1:] + [None]):
        end = nxt.start() if nxt else len(text.strip())
        fields.setdefault(here.group(1), text.strip()[here.end():end].strip())
    return fields


def parse_scontrol(text: str) -> dict[str, SlurmJob]:
    """`scontrol show job -o` output (one record per line; array tasks carry ArrayTaskId)."""
    jobs: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        rec = parse_scontrol_record(line)
        if "JobId" not in rec or "JobState" not in rec:
            continue
        task = rec.get("ArrayTaskId", "")
        ref = f"{rec['ArrayJobId']}_{task}" if task.isdigit() and rec.get("ArrayJobId") else rec["JobId"]
        code, sig = _code_sig(rec.get("ExitCode", ""))
        state, _ = _split_state(rec["JobState"])
        jobs[ref] = SlurmJob(ref, rec.get("JobName", ""), state, rec.get("Reason", ""), code, sig,
                             rec.get("StartTime", ""), rec.get("EndTime", ""))
    return jobs


# -- the poll bundle ----------------------------------------------------------------------------
def parse_bundle(text: str, marker: str) -> tuple[str, int | None, dict[int, JobFiles]]:
    """Split one poll's output: the squeue section, squeue's exit status, and per-job files.

    Sections start with lines `<marker> <kind> [<n>]`; the marker carries a per-call nonce, so a
    job's own log tail cannot fake one.
    """
    squeue_lines: list[str] = []
    rc: int | None = None
    files: dict[int, dict[str, list[str]]] = {}
    section, index = "squeue", -1
    for line in text.splitlines():
        if line.startswith(marker + " "):
            parts = line[len(marker) + 1:].split()
            if parts[:1] == ["rc"] and len(parts) > 1 and parts[1].lstrip("-").isdigit():
                rc, section = int(parts[1]), "none"
            elif parts[:1] == ["job"] and len(parts) > 1 and parts[1].isdigit():
                index, section = int(parts[1]), "exit"
                files[index] = {"exit": [], "started": [], "tail": []}
            elif parts[:1] and parts[0] in ("started", "tail") and index in files:
                section = parts[0]
            continue
        if section == "squeue":
            squeue_lines.append(line)
        elif index in files and section in files[index]:
            files[index][section].append(line)
    out = {i: JobFiles("\n".join(f["exit"]) or None, "\n".join(f["started"]) or None,
                       "\n".join(f["tail"])) for i, f in files.items()}
    return "\n".join(squeue_lines), rc, out


# -- states --------------------------------------------------------------------------------------
def _float(text: str | None) -> float | None:
    try:
        return float(text.split()[0]) if text else None
    except (ValueError, IndexError):
        return None


def to_status(job: SlurmJob | None, files: JobFiles) -> RunStatus:
    """One job's RunStatus from what Slurm said (None: Slurm no longer knows it) and its files.

    Slurm's verdict wins for the classes only it can see (TIMEOUT, CANCELLED, NODE_FAIL,
    PREEMPTED, OUT_OF_MEMORY); the wrapper's exit file gives the code and, with the log tail,
    tells a CUDA OOM from an ordinary failure.
    """
    started = _float(files.started_text)
    exited = parse_exit_file(files.exit_text or "")
    code, ended = exited if exited else (None, None)
    if job is None:
        if exited is None:
            return RunStatus("lost", None, "lost", "unknown to Slurm and no exit file", started_at=started)
        return RunStatus("exited", code, classify_exit(code, files.tail), "", started, ended)
    if code is None:
        code = job.exit_code if job.exit_code is not None else (128 + job.signal if job.signal else None)
    state, why = job.state, f"slurm {job.state}" + (f" ({job.reason})" if job.reason not in ("", "None") else "")
    if state in PENDING:
        held = job.reason in HELD_REASONS
        return RunStatus("suspended" if held else "pending", detail=("held: " if held else "") + job.reason)
    if state in RUNNING:
        return RunStatus("running", detail=why, started_at=started)
    if state == "SUSPENDED":
        return RunStatus("suspended", detail=why, started_at=started)
    if state in TIMEOUT:
        return RunStatus("exited", code, "timeout", why, started, ended)
    if state in LOST:
        return RunStatus("lost", code, "lost", why, started, ended)
    if state == "OUT_OF_MEMORY":
        return RunStatus("exited", code, "oom", why, started, ended)
    if state == "CANCELLED":
        by = f" by uid {job.cancelled_by}" if job.cancelled_by else ""
        return RunStatus("exited", code, "cancelled", why + by, started, ended)
    if state in ("COMPLETED", "FAILED", "SPECIAL_EXIT"):
        return _finished(job, exited is not None, code, files.tail, why, started, ended)
    return RunStatus("pending", detail=f"unrecognised Slurm state {state}")


def _finished(job: SlurmJob, has_exit: bool, code: int | None, tail: str, why: str,
              started: float | None, ended: float | None) -> RunStatus:
    if not has_exit and job.signal:
        # killed by a signal before the wrapper could write its exit file: the job vanished
        return RunStatus("lost", code, "lost", f"{why}: signal {job.signal} and no exit file", started, ended)
    final = 0 if code is None and job.state == "COMPLETED" else (code if code is not None else 1)
    return RunStatus("exited", final, classify_exit(final, tail), "" if has_exit else why, started, ended)


# -- settings and the batch script ---------------------------------------------------------------
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.,:=+@%/-]+$")
_TIME = re.compile(r"^(?:\d+-)?\d+(?::\d+){0,2}$|^UNLIMITED$|^INFINITE$")
_MEM = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)
SLURM_REF = re.compile(r"^\d+(?:_\d+)?$")  # a job id or an array task id: all that reaches a shell
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class SlurmSettings:
    """sbatch options from the config (`slurm:` section), overridable per job with `merged()`.

    `time` is Slurm's format (`30` minutes, `4:00:00`, `1-12:00:00`); `gres` is `gpu:N`, a bare
    N (GPUs) or any Slurm gres string; `max_submitted` is the number of virtual slots.
    """

    login_host: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None
    gres: str | int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    array_throttle: int | None = None
    max_submitted: int = 8

    def __post_init__(self) -> None:
        for key in ("login_host", "partition", "account", "qos"):
            value = getattr(self, key)
            if value is not None and not _SAFE_VALUE.match(str(value)):
                raise ConfigError(f"slurm.{key}: {value!r} is not a Slurm name (letters, digits, _.,:=+@%/-)")
        if self.time is not None and not _TIME.match(str(self.time)):
            raise ConfigError(f"slurm.time: {self.time!r}; expected minutes or [D-]HH:MM:SS, e.g. 4:00:00")
        if self.mem is not None and not _MEM.match(str(self.mem)):
            raise ConfigError(f"slurm.mem: {self.mem!r}; expected a size such as 16G or 4000M")
        if self.gres is not None and not _SAFE_VALUE.match(str(self.gres)):
            raise ConfigError(f"slurm.gres: {self.gres!r}; expected gpu:N or a number of GPUs")
        for key in ("cpus_per_task", "array_throttle", "max_submitted"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ConfigError(f"slurm.{key}: {value!r}; expected a whole number >= 0")

    def merged(self, overrides: Mapping[str, object]) -> "SlurmSettings":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown slurm override(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **overrides) if overrides else self  # type: ignore[arg-type]

    def gres_value(self) -> str | None:
        if self.gres is None or str(self.gres) in ("", "0"):
            return None
        return f"gpu:{self.gres}" if str(self.gres).isdigit() else str(self.gres)


def sbatch_args(s: SlurmSettings, name: str, out: str, chdir: str, after_ok: Sequence[str],
                tasks: int | None, throttle: int | None) -> list[str]:
    """sbatch options; no Slurm-level requeue, because retries follow expbridge's own policy."""
    args = [f"--job-name={name}", f"--output={out}", f"--chdir={chdir}", "--no-requeue"]
    pairs = (("partition", s.partition), ("account", s.account), ("qos", s.qos), ("time", s.time),
             ("gres", s.gres_value()), ("cpus-per-task", s.cpus_per_task), ("mem", s.mem))
    args += [f"--{flag}={value}" for flag, value in pairs if value not in (None, "")]
    for ref in after_ok:
        if not SLURM_REF.match(ref):
            raise UnsafeValue(f"dependency {ref!r} is not a Slurm job id")
    if after_ok:
        args.append("--dependency=afterok:" + ":".join(after_ok))
    if tasks is not None:
        args.append(f"--array=0-{tasks - 1}" + (f"%{throttle}" if throttle else ""))
    return args


def _job_args(job: JobSpec) -> str:
    env = {**job.env, "EB_JOB": job.job_id, "EB_ATTEMPT": str(job.attempt)}
    for key in env:
        if not _ENV_KEY.match(key):
            raise UnsafeValue(f"environment name {key!r} in job {job.job_id}")
    # Slurm picks the GPUs and sets CUDA_VISIBLE_DEVICES; ${GPU} follows it at run time
    cmd = job.cmd.replace("${GPU}", "${CUDA_VISIBLE_DEVICES:-}")
    argv = [job.job_dir, job.log_path, job.cwd, "", job.conda_hook or "", job.conda_env or "", cmd]
    exports = "".join(f"{k}={shlex.quote(v)}; export {k}\n" for k, v in env.items())
    return exports + "set -- " + " ".join(shlex.quote(a) for a in argv) + "\n"


def batch_script(jobs: Sequence[JobSpec], wrapper: str) -> str:
    """wrapper.sh with its arguments set in front: one job, or a `case` on the array task id."""
    body = wrapper.split("\n", 1)[1] if wrapper.startswith("#!") else wrapper
    if len(jobs) == 1:
        head = _job_args(jobs[0])
    else:
        cases = "".join(f"{i})\n{_job_args(j)};;\n" for i, j in enumerate(jobs))
        head = (f'case "${{SLURM_ARRAY_TASK_ID:-}}" in\n{cases}'
                f'*) echo "expbridge: unexpected array task ${{SLURM_ARRAY_TASK_ID:-}}" >&2; exit 96;;\nesac\n')
    names = ", ".join(j.session for j in jobs)
    return f"#!/bin/sh\n# expbridge batch script for {names}\n{head}{body}"


def poll_script(handles: Sequence[Handle], marker: str) -> str:
    """squeue for all jobs, then each job's exit/started files and, after a failure, its log tail."""
    for h in handles:
        if not SLURM_REF.match(h.ref):
            raise UnsafeValue(f"handle ref {h.ref!r} is not a Slurm job id")
    ids = ",".join(sorted({base_id(h.ref) for h in handles}, key=int))
    lines = [f"squeue -h -t all -r -j {ids} -O {shlex.quote(SQUEUE_FORMAT)} 2>&1; echo {marker} rc $?"]
    for i, h in enumerate(handles):
        d, logf = shlex.quote(h.job_dir), shlex.quote(h.log_path)
        out = shlex.quote(handle_extra(h).get("out", "/dev/null"))
        lines.append(f"echo {marker} job {i}; cat -- {d}/exit 2>/dev/null; echo; echo {marker} started; "
                     f"cat -- {d}/started 2>/dev/null; echo; "
                     f"if [ -f {d}/exit ] && ! grep -q '^0 ' {d}/exit; then echo {marker} tail; "
                     f"tail -c {TAIL_BYTES} -- {logf} {out} 2>/dev/null; fi")
    return "\n".join(lines) + "\n"


def handle_extra(handle: Handle) -> dict[str, str]:
    try:
        data = json.loads(handle.extra) if handle.extra else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
