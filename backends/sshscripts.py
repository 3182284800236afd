"""The shell the SSH backend sends, and the parsing of what comes back (pure: no I/O).

Every value that reaches a remote shell is either validated against a safe charset (ids, session
names, numbers) or passed through shlex.quote. The user's command is the one deliberate
exception: it is raw shell by design, and it reaches the wrapper as one quoted argument, so it is
evaluated exactly once, by the wrapper, never by our own layers.
"""
from __future__ import annotations

import base64
import binascii
import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Iterable, Mapping

from daemon.errors import UnsafeValue

q = shlex.quote
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TAIL_BYTES = 10_000
# ARIS §3.11 order after the manifest hook and $ARIS_CONDA_HOOK; "~" is the remote home
CONDA_PATHS = (
    "~/anaconda3/bin/conda", "~/miniconda3/bin/conda", "~/miniforge3/bin/conda",
    "/opt/anaconda3/bin/conda", "/opt/miniconda3/bin/conda", "/opt/miniforge3/bin/conda",
    "/usr/local/anaconda3/bin/conda", "/opt/homebrew/anaconda3/bin/conda",
)


def home_path(path: str) -> str:
    """A remote path as a shell word: relative paths are under $HOME (only inside shells)."""
    if path.startswith("/"):
        return q(path)
    rel = path[2:] if path.startswith("~/") else ("" if path == "~" else path)
    return '"$HOME"' if not rel else f'"$HOME"/{q(rel)}'


def remote_cwd(code_dir: str, project_dir: str, local_cwd: str) -> str:
    """Map the job's local cwd (inside the project) onto the host's code dir."""
    try:
        rel = PurePosixPath(local_cwd).relative_to(PurePosixPath(project_dir))
    except ValueError:
        rel = PurePosixPath("..")
    if ".." in rel.parts:
        raise UnsafeValue(f"cwd {local_cwd!r} leaves the project {project_dir!r}")
    base = code_dir.rstrip("/") or "/"
    return base if str(rel) == "." else f"{base}/{rel}"


CONDA_EVAL = 'eval "$("$EB_CONDA" shell.bash hook)"'  # the path travels in $EB_CONDA, unparsed


def conda_resolve() -> str:
    """Shell that sets $eb_hook (and $eb_conda) by the ARIS F43 order after the manifest's hook.

    ARIS wrap(): a hook starting with `eval` is used as it is; a bare conda path becomes
    `eval "$(<path> shell.bash hook)"`. The path is passed in EB_CONDA rather than pasted into
    the eval string, so a path with quotes in it cannot break out.
    """
    paths = " ".join(home_path(p) for p in CONDA_PATHS)
    return f"""eb_hook=${{ARIS_CONDA_HOOK:-}}
if [ -z "$eb_hook" ]; then for p in {paths}; do [ -x "$p" ] && {{ eb_hook=$p; break; }}; done; fi
[ -n "$eb_hook" ] || eb_hook=$(command -v conda 2>/dev/null)
[ -n "$eb_hook" ] || eb_hook=conda
eb_conda=
case $eb_hook in eval*) ;; *) eb_conda=$eb_hook; eb_hook={q(CONDA_EVAL)};; esac
"""


def given_hook(hook: str) -> str:
    """The manifest's conda_hook, wrapped like ARIS wrap()."""
    if hook.startswith("eval"):
        return f"eb_hook={q(hook)}\neb_conda=\n"
    return f"eb_hook={q(CONDA_EVAL)}\neb_conda={q(hook)}\n"


@dataclass(frozen=True)
class Launch:
    session: str
    kind: str  # screen | tmux
    run_rel: str
    job_dir: str
    log: str
    cwd: str
    gpu: int | None
    cmd: str
    wrapper: str  # the wrapper's text, written once per run tree
    env: Mapping[str, str] = field(default_factory=dict)
    conda_env: str | None = None
    conda_hook: str | None = None
    start_timeout_s: float = 10.0


def launch_script(l: Launch) -> str:
    """Create the run tree, write the wrapper once, start the session, wait for `started`.

    Prints `EBOK <wrapper pid> <session process pid> <screen pid>` or `EBERR <reason>`.
    """
    for key in l.env:
        if not ENV_NAME.match(key):
            raise UnsafeValue(f"environment variable name {key!r} must match {ENV_NAME.pattern}")
    run, jd, log = home_path(l.run_rel), home_path(l.job_dir), home_path(l.log)
    if l.conda_env:
        hook = given_hook(l.conda_hook) if l.conda_hook else conda_resolve()
    else:
        hook = "eb_hook=\neb_conda=\n"
    env = " ".join(q(f"{k}={v}") for k, v in l.env.items())
    argv = (f'env {env} "EB_CONDA=$eb_conda" sh {run}/wrapper.sh {jd} {log} {home_path(l.cwd)} '
            f'{q("" if l.gpu is None else str(l.gpu))} "$eb_hook" {q(l.conda_env or "")} {q(l.cmd)}')
    # setsid -w: the wrapper leads its own session, so screen (which SIGCONTs a stopped window
    # process) cannot undo a suspend, and the job has no terminal to be hung up on
    start = (f"screen -dmS {q(l.session)} $eb_setsid {argv}" if l.kind == "screen"
             else f"tmux new-session -d -s {q(l.session)} $eb_setsid {argv}")
    tries = max(1, int(l.start_timeout_s / 0.02))
    return f"""cd "$HOME" || {{ echo "EBERR no home directory"; exit 90; }}
command -v {l.kind} >/dev/null 2>&1 || {{ echo "EBERR {l.kind} is not installed"; exit 93; }}
mkdir -p -- {run}/logs {jd} || {{ echo "EBERR cannot create the run tree"; exit 91; }}
if [ -e {jd}/started ] || [ -e {jd}/exit ]; then echo "EBERR attempt directory already used"; exit 92; fi
if [ ! -f {run}/wrapper.sh ]; then
  printf '%s' {q(l.wrapper)} > {run}/wrapper.sh.$$ && mv -f {run}/wrapper.sh.$$ {run}/wrapper.sh \\
    || {{ echo "EBERR cannot write the wrapper"; exit 91; }}
fi
eb_setsid=; command -v setsid >/dev/null 2>&1 && eb_setsid="setsid -w"
{hook}{start} || {{ echo "EBERR {l.kind} refused to start the session"; exit 94; }}
i=0
while [ ! -f {jd}/started ]; do
  i=$((i+1)); [ "$i" -gt {tries} ] && {{ echo "EBERR no started file within {l.start_timeout_s}s"; exit 95; }}
  sleep 0.02
done
pid=$(cat {jd}/pid)
wpid=$pid; [ -n "$eb_setsid" ] && wpid=$(ps -o ppid= -p "$pid" | tr -d ' ')
spid=$(ps -o ppid= -p "${{wpid:-0}}" 2>/dev/null | tr -d ' ')
echo "EBOK $pid ${{wpid:-0}} ${{spid:-0}}"
"""


def adopt_script(job_dir: str, grace_s: float) -> str:
    """Find an attempt whose launch reply never reached us (the daemon died mid-launch).

    Waits up to grace_s for a launch still in flight; prints `EBOK <pid> <wpid> <spid>` like a
    launch, or `EBERR none` when the attempt never started.
    """
    jd = home_path(job_dir)
    tries = max(1, int(grace_s / 0.05))
    return f"""cd "$HOME" || {{ echo "EBERR no home directory"; exit 90; }}
i=0
while [ ! -s {jd}/pid ] && [ ! -f {jd}/exit ]; do
  [ -d {jd} ] || {{ echo "EBERR none"; exit 0; }}
  i=$((i+1)); [ "$i" -gt {tries} ] && {{ echo "EBERR none"; exit 0; }}
  sleep 0.05
done
pid=$(cat {jd}/pid 2>/dev/null || echo 0)
wpid=$pid; command -v setsid >/dev/null 2>&1 && wpid=$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')
spid=$(ps -o ppid= -p "${{wpid:-0}}" 2>/dev/null | tr -d ' ')
echo "EBOK ${{pid:-0}} ${{wpid:-0}} ${{spid:-0}}"
"""


@dataclass(frozen=True)
class Probe:
    """One of our sessions to look at: identity (kind, name, session pid, wrapper pid) + files."""

    idx: int
    kind: str
    session: str
    spid: int  # screen: the SCREEN process; tmux: the server
    wpid: int  # the session's own process (setsid -w); the wrapper's parent
    pid: int  # the wrapper: leader of the job's process group
    job_dir: str
    log: str


_FUNCS = """eb_alive() {  # kind name spid wpid: our session, by its name AND its recorded pid
  case $1 in
    screen) printf '%s\\n' "$SL" | awk -v t="$3.$2" '$1==t{f=1} END{exit !f}' ;;
    tmux) printf '%s\\n' "$TL" | awk -v n="$2" -v p="$4" '$1==n && $2==p{f=1} END{exit !f}' ;;
    *) return 1 ;;
  esac
}
eb_mine() {  # wpid pid: the wrapper is still the process we started, leading its own group
  [ "$(ps -o pgid= -p "$2" 2>/dev/null | tr -d ' ')" = "$2" ] &&
    { [ "$1" = "$2" ] || [ "$(ps -o ppid= -p "$2" 2>/dev/null | tr -d ' ')" = "$1" ]; }
}
eb_kill() {  # kind name spid wpid pid: the wrapper's process group, then the session itself
  if eb_mine "$4" "$5"; then kill -TERM -- "-$5" 2>/dev/null; kill -CONT -- "-$5" 2>/dev/null; fi
  case $1 in
    screen) screen -S "$3.$2" -X quit ;;
    tmux) tmux kill-session -t "=$2" ;;
  esac >/dev/null 2>&1
}
eb_lists() {
  SL=$(screen -ls 2>/dev/null)
  TL=$(tmux list-panes -a -F '#{session_name} #{pane_pid}' 2>/dev/null)
}
"""
SMI = ("if command -v nvidia-smi >/dev/null 2>&1; then echo @@G; "
       "nvidia-smi --query-gpu=index,uuid,memory.used,memory.total --format=csv,noheader,nounits "
       "2>/dev/null || echo \"@@SMIFAIL $?\"; else echo @@NOSMI; fi")


def _probe_args(p: Probe) -> str:
    return f"{q(p.kind)} {q(p.session)} {int(p.spid)} {int(p.wpid)} {int(p.pid)}"


def poll_script(probes: Iterable[Probe], with_gpus: bool = True) -> str:
    """One command for every job on a host: liveness, exit file, log tail, GPUs.

    A live session whose exit file exists is stale: it is killed here, in the same round trip.
    """
    lines = ['cd "$HOME" || exit 90', _FUNCS, "eb_lists", "echo \"@@NOW $(date +%s)\""]
    for p in probes:
        jd, log, args = home_path(p.job_dir), home_path(p.log), _probe_args(p)
        lines.append(f"""a=0; eb_alive {args} && a=1
st=$(ps -o stat= -p {int(p.pid)} 2>/dev/null | cut -c1)
ex=$(head -c 200 {jd}/exit 2>/dev/null | tr -d '\\n')
cx=0; [ -f {jd}/cancelled ] && cx=1
echo "@@J {p.idx} $a ${{st:--}} $cx"
echo "@@S {p.idx} $(head -c 40 {jd}/started 2>/dev/null | tr -d '\\n')"
echo "@@E {p.idx} $ex"
if [ -n "$ex" ]; then
  echo "@@T {p.idx} $(tail -c {TAIL_BYTES} {log} 2>/dev/null | base64 | tr -d '\\n')"
  [ "$a" = 1 ] && {{ eb_kill {args}; echo "@@K {p.idx}"; }}
fi""")
    if with_gpus:
        lines.append(SMI)
    return "\n".join(lines) + "\n"


def gpu_script() -> str:
    return SMI + "\n"


def cancel_script(p: Probe, grace_s: float) -> str:
    """Mark the attempt cancelled, TERM its group, KILL what is left after the grace period."""
    jd, args = home_path(p.job_dir), _probe_args(p)
    tries = max(1, int(grace_s / 0.05))
    return f"""cd "$HOME" || exit 90
{_FUNCS}
[ -f {jd}/exit ] && {{ echo EBDONE; exit 0; }}
: > {jd}/cancelled
eb_lists
eb_alive {args} && eb_mine {int(p.wpid)} {int(p.pid)} || {{ echo EBGONE; exit 0; }}
eb_kill {args}
i=0
while kill -0 -- -{int(p.pid)} 2>/dev/null && [ "$i" -lt {tries} ]; do i=$((i+1)); sleep 0.05; done
kill -KILL -- -{int(p.pid)} 2>/dev/null
echo EBKILLED
"""


def watch_script(probes: Iterable[Probe], timeout_s: float, interval_s: float = 0.05) -> str:
    """Block until one of the jobs has an exit file or its wrapper is gone, or the timeout.

    Prints `@@X <idx>` for each job that ended. Cheap checks only (a file test and kill -0), so a
    waiter can sit on it for a whole tick and still see an exit within `interval_s`.
    """
    checks = " ".join(f"{{ [ -f {home_path(p.job_dir)}/exit ] || ! kill -0 {int(p.pid)} 2>/dev/null; }}"
                      f" && echo \"@@X {p.idx}\";" for p in probes)
    tries = max(1, int(timeout_s / interval_s))
    return f"""cd "$HOME" || exit 90
i=0
while [ "$i" -lt {tries} ]; do
  out=$({checks} :)
  [ -n "$out" ] && {{ printf '%s\\n' "$out"; exit 0; }}
  i=$((i+1)); sleep {interval_s}
done
"""


def orphan_script(kind: str, session: str, job_dir: str) -> str:
    """End an attempt whose launch reply was lost, if it started: the caller already gave up on it.

    The identity comes from the attempt's own pid file and the process tree (wrapper -> session
    process -> screen), checked against the session name, as for every other kill here.
    """
    jd = home_path(job_dir)
    return f"""cd "$HOME" || exit 90
{_FUNCS}
[ -f {jd}/pid ] || {{ echo EBNONE; exit 0; }}
[ -f {jd}/exit ] && {{ echo EBDONE; exit 0; }}
: > {jd}/cancelled
pid=$(cat {jd}/pid)
eb_lists
for w in "$pid" "$(ps -o ppid= -p "$pid" 2>/dev/null | tr -d ' ')"; do
  s=$(ps -o ppid= -p "${{w:-0}}" 2>/dev/null | tr -d ' ')
  if [ -n "$w" ] && eb_alive {q(kind)} {q(session)} "${{s:-0}}" "$w" && eb_mine "$w" "$pid"; then
    eb_kill {q(kind)} {q(session)} "$s" "$w" "$pid"; echo EBKILLED; exit 0
  fi
done
echo EBGONE
"""


def signal_script(p: Probe, sig: str) -> str:
    """STOP or CONT the job's process group, only when the session is still ours."""
    if sig not in ("STOP", "CONT"):
        raise UnsafeValue(f"signal {sig!r}")
    return f"""cd "$HOME" || exit 90
{_FUNCS}
eb_lists
eb_alive {_probe_args(p)} && eb_mine {int(p.wpid)} {int(p.pid)} || {{ echo EBGONE; exit 1; }}
kill -{sig} -- -{int(p.pid)} && echo EBOK
"""


def sessions_script(prefix: str = "eb-") -> str:
    """Our-named sessions on a host (for `expbridge hosts`), screen and tmux."""
    return (f"screen -ls 2>/dev/null | awk '{{print $1}}' | grep -E '^[0-9]+\\.{re.escape(prefix)}' "
            f"| sed 's/^[0-9]*\\.//'; tmux list-sessions -F '#{{session_name}}' 2>/dev/null "
            f"| grep -E '^{re.escape(prefix)}'; true")


@dataclass
class JobReading:
    alive: bool = False
    state: str = "-"
    cancelled: bool = False
    started: str = ""
    exit: str = ""
    tail: str = ""
    killed: bool = False


@dataclass
class HostReading:
    jobs: dict[int, JobReading] = field(default_factory=dict)
    gpu_csv: str | None = None  # None: no reading (missing or failing nvidia-smi)
    gpu_note: str = ""
    now: float | None = None


def parse_poll(stdout: str) -> HostReading:
    out = HostReading()
    gpu_lines: list[str] | None = None
    for line in stdout.splitlines():
        if gpu_lines is not None and not line.startswith("@@"):
            gpu_lines.append(line)
            continue
        tag, _, rest = line.partition(" ")
        if tag == "@@G":
            gpu_lines = []
        elif tag == "@@NOSMI":
            out.gpu_note = "nvidia-smi not found"
        elif tag == "@@SMIFAIL":
            gpu_lines, out.gpu_note = None, f"nvidia-smi failed (exit {rest.strip()})"
        elif tag == "@@NOW":
            out.now = _float(rest)
        elif tag in ("@@J", "@@S", "@@E", "@@T", "@@K"):
            _job_line(out, tag[2:], rest)
    if gpu_lines is not None:
        out.gpu_csv = "\n".join(gpu_lines)
    return out


def _job_line(out: HostReading, tag: str, rest: str) -> None:
    idx_text, _, value = rest.partition(" ")
    try:
        job = out.jobs.setdefault(int(idx_text), JobReading())
    except ValueError:
        return
    if tag == "J":
        parts = value.split()
        if len(parts) == 3:
            job.alive, job.state, job.cancelled = parts[0] == "1", parts[1], parts[2] == "1"
    elif tag == "S":
        job.started = value.strip()
    elif tag == "E":
        job.exit = value.strip()
    elif tag == "T":
        job.tail = _b64(value.strip())
    elif tag == "K":
        job.killed = True


def _b64(text: str) -> str:
    try:
        return base64.b64decode(text).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return ""


def _float(text: str) -> float | None:
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return None


def parse_launch(stdout: str) -> tuple[int, int, int] | str | None:
    """(wrapper pid, session process pid, screen pid) from EBOK, the EBERR reason, or None
    when there is no answer at all (the launch may or may not have happened)."""
    for line in stdout.splitlines():
        if line.startswith("EBOK "):
            # a job that already ended has no parent to look up: 0 never matches a live session
            parts = (line.split() + ["0", "0"])[1:4]
            try:
                return int(parts[0]), int(parts[1] or 0), int(parts[2] or 0)
            except (ValueError, IndexError):
                return f"unreadable launch reply {line!r}"
        if line.startswith("EBERR "):
            return line[6:]
    return None
