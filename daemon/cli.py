"""`expbridge`: the one command. Parsing lives here; the work lives in daemon/commands.py."""
from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="expbridge", description="Run an ARIS experiment plan, and keep it running.")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", help="config file (YAML)")
        sp.add_argument("--state-dir", help="where the state database lives")

    def backend_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--backend", choices=["local", "ssh", "slurm", "vast", "modal"])
        sp.add_argument("--hosts", help="ssh: comma-separated host aliases")
        sp.add_argument("--ssh-config", help="ssh: an ssh_config file for the aliases")
        sp.add_argument("--partition", help="slurm: partition")
        sp.add_argument("--slurm-host", help="slurm: login-node alias (default: sbatch locally)")

    run = sub.add_parser("run", help="run one project's plan in the foreground until it is done")
    run.add_argument("project")
    run.add_argument("overrides", nargs="*", help="'key: value' settings, e.g. 'auto_deploy: false'")
    common(run)
    backend_flags(run)

    dmn = sub.add_parser("daemon", help="watch projects and run their plans (the systemd service)")
    dmn.add_argument("--project", action="append", default=[], help="a project folder (repeatable)")
    common(dmn)
    backend_flags(dmn)

    st = sub.add_parser("status", help="runs and jobs by state")
    st.add_argument("project", nargs="?")
    st.add_argument("--json", action="store_true")
    common(st)

    lg = sub.add_parser("logs", help="show a job's log (RUN or JOB id)")
    lg.add_argument("target")
    lg.add_argument("--project")
    lg.add_argument("-f", "--follow", action="store_true")
    common(lg)

    wt = sub.add_parser("wait", help="wait until a project's plan is done, blocked or failed")
    wt.add_argument("project")
    wt.add_argument("--timeout", type=float, default=0.0)
    common(wt)

    for verb in ("pause", "resume", "skip", "retry"):
        sp = sub.add_parser(verb, help=f"{verb} a run (edits its Status cell)")
        sp.add_argument("run")
        sp.add_argument("--project", default=".")
    ap = sub.add_parser("approve", help="approve a plan waiting at the deployment checkpoint")
    ap.add_argument("project")
    rp = sub.add_parser("report", help="regenerate EXPERIMENT_RESULTS.md and the queue summary")
    rp.add_argument("project")
    common(rp)

    val = sub.add_parser("validate", help="show what expbridge understood of a project or file")
    val.add_argument("rest", nargs=argparse.REMAINDER)
    trk = sub.add_parser("tracker", help="edit tracker cells: tracker set FILE RUN [--status S] [--notes N]")
    trk.add_argument("rest", nargs=argparse.REMAINDER)
    hs = sub.add_parser("hosts", help="SSH hosts: reachable, GPUs, our jobs, breaker state")
    hs.add_argument("--json", action="store_true")
    common(hs)
    backend_flags(hs)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key: value` overrides may come after options too (argparse stops collecting positionals)
    if args.cmd == "run" and all(":" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from daemon import commands
    from daemon.errors import ExpbridgeError

    try:
        code = commands.dispatch(args)
        if args.cmd in ("run", "daemon"):
            # state is committed and files written: do not let a network call that a hung host
            # left open in a worker thread keep the process alive at exit
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    except ExpbridgeError as exc:
        print(f"expbridge: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
