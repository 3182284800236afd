"""What a Modal job runs, and what it costs (pure; no Modal import).

The container runs the shared job wrapper (passed in the environment and written to a temp
file), so the pid/started/exit files and the log are the same truth as on every other backend.
They are written to the outputs Volume, mounted at RESULTS, under
`<plan>-<run_ts>/<job>/a<N>/`. After the command ends, the job's `expected_output` files are
copied from its working directory into `outputs/` beside them, because the container's own
disk vanishes with it. The wrapper runs in its own session (`setsid -w`), so killing its
process group is a clean "the job died" rather than killing the copy step too.
"""
from __future__ import annotations

import re
import shlex
from pathlib import PurePosixPath
from typing import Mapping, Sequence

from backends.base import WRAPPER, JobSpec
from backends.sshscripts import remote_cwd
from daemon.errors import UnsafeValue

RESULTS = "/results"  # where the outputs Volume is mounted
# Modal's list prices, $/h per GPU (ARIS_SPEC §4.5); the config's usd_per_hour overrides
PRICES = {"T4": 0.59, "L4": 0.80, "A10": 1.10, "A10G": 1.10, "L40S": 1.95, "A100": 2.10,
          "A100-40GB": 2.10, "A100-80GB": 2.50, "H100": 3.95, "H200": 4.54, "B200": 6.25}
CPU_RATE = 0.05  # a CPU-only sandbox: cores and memory, roughly

RUNNER = r"""out=$1 log=$2 cwd=$3 cmd=$4; shift 4
w="${TMPDIR:-/tmp}/eb-wrapper-$$.sh"
printf '%s' "$EB_WRAPPER" > "$w"
unset EB_WRAPPER
setsid -w sh "$w" "$out" "$log" "$cwd" "" "" "" "$cmd"
code=$?
if cd -- "$cwd" 2>/dev/null; then
  set +f
  for pat in "$@"; do
    for f in $pat; do
      [ -e "$f" ] || continue
      mkdir -p -- "$out/outputs/$(dirname -- "$f")" && cp -r -- "$f" "$out/outputs/$f"
    done
  done
fi
sync
exit $code
"""


def volume_dir(job: JobSpec) -> str:
    """The attempt's folder inside the volume (relative to its root)."""
    return f"{job.plan}-{job.run_ts}/{job.job_id}/a{job.attempt}"


def check_outputs(patterns: Sequence[str]) -> list[str]:
    for pat in patterns:
        if pat.startswith("/") or ".." in PurePosixPath(pat).parts or "\n" in pat:
            raise UnsafeValue(f"expected_output {pat!r} must be a relative path inside the job's cwd")
    return list(patterns)


def argv(job: JobSpec, code_dir: str, project_dir: str, cmd: str) -> list[str]:
    """The container command: bash running RUNNER with the attempt's paths and the command."""
    out = f"{RESULTS}/{volume_dir(job)}"
    cwd = remote_cwd(code_dir, project_dir, job.cwd)
    return ["bash", "-c", RUNNER, "eb", out, f"{out}/log", cwd, cmd, *check_outputs(job.expected_output)]


def env(job: JobSpec) -> dict[str, str]:
    return {**job.env, "EB_JOB": job.job_id, "EB_ATTEMPT": str(job.attempt),
            "EB_WRAPPER": WRAPPER.read_text()}


def rate(gpu: str | None, override: float | None) -> float:
    """$/h for one job on `gpu` ("H100:2" counts two)."""
    if override is not None:
        return override
    if not gpu:
        return CPU_RATE
    name, _, count = gpu.partition(":")
    n = int(count) if count.isdigit() else 1
    return PRICES.get(name.upper(), PRICES.get(re.sub(r"-\d+GB$", "", name.upper()), 4.0)) * n


def estimate_line(gpu: str | None, usd_h: float, hours: float) -> str:
    """The cost estimate shown before every run (F78)."""
    return (f"Modal estimate: {gpu or 'CPU'} at ${usd_h:.2f}/h (${usd_h / 3600:.5f}/s) for "
            f"~{hours * 60:.0f} min = ${usd_h * hours:.2f}")


def describe(args: Sequence[str], environment: Mapping[str, str]) -> str:
    """For logs: the command without the wrapper text or environment values."""
    return f"{shlex.join(args[4:8])} env={sorted(k for k in environment if k != 'EB_WRAPPER')}"
