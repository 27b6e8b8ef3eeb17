"""The `gaugeflow` command line (also `python -m run`).

    gaugeflow <command> [CONFIG] [--set section.key=value ...] [--output DIR] [--debug]
    gaugeflow import CONFIG FILE... [--set ...]

CONFIG is a TOML file or the name of a bundled config in run/configs/ (default: demo; `import`
needs it explicitly, followed by at least one file).
Commands:
    hmc       generate an ensemble (pure gauge or Nf=2), resumable
    import    import ILDG/LIME gauge files from other codes into an ensemble store
    train     train a flow (Haar base, or ensemble base lambda1 -> lambda2)
    evaluate  apply a trained flow to an ensemble: log-Jacobians, action differences,
              pseudofermion determinant ratios -> reweighting factors and ESS
    measure   pion correlators and the Feynman-Hellmann operator on original and flowed fields
    analyze   Feynman-Hellmann fits of <x>_g vs t_min, flows vs epsilon-reweighting, cost model
    demo      all of the above at toy scale
Run under MPI as `mpirun -n R gaugeflow <command> ...`; only rank 0 prints and writes.
Errors a user can fix (configuration, files, file system, a CG that did not converge, ...)
print one line `gaugeflow: error: ...` and exit with status 2; the traceback is in
<output>/gaugeflow.log (and on the screen with --debug). A job's input files are checked
before it writes anything. Ctrl-C (SIGINT) and SIGTERM (scancel, a wall-time limit) end a job
with one line, also in gaugeflow.log, after its cleanup; exit status 130 / 143; rerunning the
same command resumes it.
"""
from __future__ import annotations

import argparse
import sys

from .config import load_config, ConfigError

__all__ = ["main", "UsageError", "split_import_arguments"]

COMMANDS = ("hmc", "import", "train", "evaluate", "measure", "analyze", "demo")

IMPORT_USAGE = "gaugeflow import CONFIG FILE... (CONFIG: a TOML file or a bundled config name)"


class UsageError(ValueError):
    """The command line itself is wrong (e.g. `import` without its config or its files);
    ``hint`` says what to type instead."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint

    def __reduce__(self):
        return (type(self), (self.args[0] if self.args else "", self.hint))


def _parser():
    ap = argparse.ArgumentParser(prog="gaugeflow", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="command")
    for name in COMMANDS:
        usage = "gaugeflow import CONFIG FILE... [--set KEY=VALUE] [--output DIR] [--debug]" if name == "import" else None
        p = sub.add_parser(name, help=f"run the {name} stage", usage=usage)
        if name == "import":
            p.add_argument("inputs", nargs="*", metavar="CONFIG FILE",
                           help="the config (TOML file or bundled config name), then the ILDG/LIME files in Monte "
                                "Carlo order")
        else:
            p.add_argument("config", nargs="?", default="demo", help="TOML file or bundled config name")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set hmc.n_traj=50 (repeatable)")
        p.add_argument("--output", help="output directory (overrides job.output)")
        p.add_argument("--debug", action="store_true",
                       help="show the full traceback of an error on the screen (it is always in gaugeflow.log)")
    return ap


def _is_config(arg: str) -> bool:
    """Whether the first argument of `import` is a config: a name ending in .toml (whatever is
    wrong with it, :func:`run.config.load_config` says), a bundled config name, or another
    small text file that parses as TOML. An ILDG file, a directory or a missing file without
    the suffix is not."""
    from pathlib import Path
    from .config import tomllib
    p = Path(arg)
    if arg.endswith(".toml"):
        return True
    if p.is_file():
        try:
            if p.stat().st_size > (1 << 20):
                return False
            tomllib.loads(p.read_bytes().decode("utf-8"))
            return True
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            return False
    return not p.exists() and (Path(__file__).with_name("configs") / f"{arg}.toml").is_file()


def split_import_arguments(inputs: list) -> tuple:
    """``(config, files)`` of ``gaugeflow import CONFIG FILE...``: both are required, and the
    first argument must be a config (:func:`_is_config`); else a :class:`UsageError`."""
    from pathlib import Path
    if not inputs:
        raise UsageError("import needs a config and at least one ILDG file", IMPORT_USAGE)
    first, files = inputs[0], list(inputs[1:])
    if not _is_config(first):
        bundled = sorted(q.stem for q in Path(__file__).with_name("configs").glob("*.toml"))
        raise UsageError(f"no config given: the first argument {first!r} is neither a TOML file nor a bundled "
                         f"config name ({', '.join(bundled)})", "give the config first: " + IMPORT_USAGE)
    if not files:
        raise UsageError(f"no ILDG files given after the config {first!r}",
                         "list the files to import, in Monte Carlo order: " + IMPORT_USAGE)
    return first, files


def _options_first(argv: list) -> list:
    """``argv`` with the options of a command moved before its positional arguments, so that
    ``gaugeflow import CONFIG FILE... --set k=v`` parses like ``gaugeflow import --set k=v CONFIG FILE...``
    (argparse cannot mix options into a variable-length positional list of a subcommand)."""
    if not argv or argv[0] not in COMMANDS:
        return argv
    with_value, flags = ("--set", "--output"), ("--debug", "-h", "--help")
    opts, pos, i = [], [], 1
    while i < len(argv):
        a = argv[i]
        if a == "--":
            pos += argv[i + 1:]
            break
        if a in with_value and i + 1 < len(argv):
            opts += [a, argv[i + 1]]
            i += 2
            continue
        if a in flags or a.split("=", 1)[0] in with_value:
            opts.append(a)
        else:
            pos.append(a)
        i += 1
    return [argv[0]] + opts + (["--"] + pos if any(p.startswith("-") for p in pos) else pos)


def _input_errors() -> tuple:
    """Errors that mean "these input files are wrong or do not belong together": reported in
    one line (exit status 2) instead of a traceback. Raised identically on every MPI rank."""
    from lattice.io import CorruptFileError, MismatchError
    from flows import ParamFileError
    return (MismatchError, CorruptFileError, ParamFileError, FileNotFoundError)


def _user_errors() -> tuple:
    """Every error a user can cause (bad config, bad or mismatched files, invalid gauge fields,
    a CG that does not converge, a lattice that does not fit the layout, file-system errors):
    one line on the screen, exit status 2, the traceback in gaugeflow.log. Anything else is a
    bug and keeps its traceback."""
    from lattice import InvalidGaugeField, LayoutError
    from fermions import CGNotConverged
    from analysis import FitError
    from .lock import LockedError
    return (ConfigError, UsageError, LockedError, InvalidGaugeField, LayoutError, CGNotConverged, FitError,
            OSError) + _input_errors()


def _hint(exc) -> str:
    """What to do about a user error (appended to its one-line message): the error's own
    ``hint`` attribute (:func:`run.inputs.with_hint`), else the generic one of its type."""
    import errno
    from lattice import InvalidGaugeField, LayoutError
    from fermions import CGNotConverged, EvenOddError
    from lattice.io import MismatchError, CorruptFileError
    from flows import ParamFileError
    from analysis import FitError
    own = getattr(exc, "hint", None)
    if own:
        return str(own)
    generic = (      # first match wins: subclasses before their bases
        (CGNotConverged, "raise fermions.cg_maxiter or loosen fermions.cg_tol (or check kappa and mu)"),
        (FitError, "the data do not support this fit: try other analyze.t_min / t_max, analyze.n_states = 1 or "
                   "analyze.correlated = false, or measure more configurations"),
        (InvalidGaugeField, "the gauge field is not in SU(N) (or not finite): check the input file, or lower "
                            "hmc.tau / raise hmc.n_steps if HMC diverged"),
        (EvenOddError, "use even extents with L_0 >= 4 and a rank count that keeps the local L_0 even"),
        (LayoutError, "check lattice.shape (and train.shape) against the number of MPI ranks"),
        (MismatchError, "use the settings the file was made with, or another job.output"),
        (CorruptFileError, "restore the file from a copy, or move it away and rerun"),
        (ParamFileError, "restore the file from a copy, or delete it and rerun `gaugeflow train` (it writes "
                         "flow.h5, pf_flow.h5 and their checkpoints)"),
        (FileNotFoundError, "check the path and job.output (--output); each stage reads what the ones before it "
                            "wrote (hmc or import -> train -> evaluate -> measure -> analyze)"),
    )
    for typ, hint in generic:
        if isinstance(exc, typ):
            return hint
    if isinstance(exc, OSError):
        no = getattr(exc, "errno", None)
        if no == errno.ENOSPC or "No space left" in str(exc):
            return "no space left on the device: free space or choose another job.output (--output); " \
                   "committed records are kept and a rerun resumes"
        if no == errno.EROFS or "Read-only file system" in str(exc):
            return "the file system is read-only: choose a writable job.output (--output)"
        if no in (errno.EACCES, errno.EPERM):
            return "no permission: choose a writable job.output (--output) or fix the permissions"
        if no == errno.EISDIR:
            return "a directory was given where a file is expected"
        if no == errno.ENOTDIR:
            return "a file was given where a directory is expected"
    return ""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _report(exc, args, comm) -> None:
    """Print the one-line message (stderr) and log the traceback (gaugeflow.log, if open)."""
    import traceback
    from .parallel import log_to_file
    if isinstance(exc, ConfigError):
        line = f"gaugeflow: configuration error: {_one_line(exc)}"
    else:
        name = type(exc).__name__
        msg = _one_line(exc)
        if isinstance(exc, OSError) and getattr(exc, "filename", None) and str(exc.filename) not in msg:
            msg += f" ({exc.filename})"
        hint = _hint(exc)
        line = f"gaugeflow: error: {name}: {msg}" + (f" -- {hint}" if hint else "")
    if comm is not None:
        line = f"[rank {comm.Get_rank()}] " + line
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    from lattice.io._parallel import raised_on_all_ranks
    if comm is None or comm.Get_rank() == 0 or not raised_on_all_ranks(exc):
        log_to_file(f"{line}\n{tb}")      # once per job, or from the rank that failed alone
    try:
        sys.stdout.flush()
    except Exception:  # pragma: no cover
        pass
    if args is not None and getattr(args, "debug", False):
        sys.stderr.write(tb + "\n")
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def main(argv=None) -> int:
    import time
    from .parallel import interrupts_end_the_job
    started = time.monotonic()
    argv = sys.argv[1:] if argv is None else argv
    ap = _parser()
    args = ap.parse_args(_options_first(list(argv)))
    if not args.command:
        ap.print_help()
        return 2
    overrides = list(args.overrides)
    if args.output:
        overrides.append(f'job.output="{args.output}"')
    from .parallel import world, install_abort_on_error
    comm = world()
    install_abort_on_error(comm)
    _close_log()
    with interrupts_end_the_job():
        try:
            return _run(args, overrides, comm)
        except KeyboardInterrupt as exc:       # Ctrl-C or SIGTERM, after the job's cleanup
            return _interrupted(exc, args, comm, time.monotonic() - started)


def _run(args, overrides, comm) -> int:
    files = None
    try:
        from lattice.io._parallel import mark_all_ranks
        try:
            if args.command == "import":
                args.config, files = split_import_arguments(args.inputs)
            cfg = load_config(args.config, overrides, command=args.command)
        except _user_errors() as exc:  # read identically by every rank: reported by each
            raise mark_all_ranks(exc)
        from importlib import import_module
        mod = import_module(f"run.jobs.{'import_ildg' if args.command == 'import' else args.command}")
        from .context import make_context, job_layout
        check = getattr(mod, "check_inputs", None)
        if check is not None:          # the job's input files, before anything is written (run.inputs)
            from .inputs import run_checks
            job_layout(cfg, args.command, comm=comm)      # (the configuration's own checks come first)
            run_checks(comm, check, cfg, *(() if files is None else (files,)))
        ctx = make_context(cfg, args.command, comm=comm)
        try:
            if args.command == "import":
                mod.run(ctx, files)
            else:
                mod.run(ctx)
        finally:
            ctx.release()
    except _user_errors() as exc:
        _report(exc, args, comm)
        from lattice.io._parallel import raised_on_all_ranks
        if comm is not None and comm.Get_size() > 1 and not raised_on_all_ranks(exc):
            # raised on this rank alone: the others may wait for it in a collective call
            sys.stderr.write(f"[rank {comm.Get_rank()}] aborting all {comm.Get_size()} ranks\n")
            from .parallel import abort
            abort(comm, 2)
        return 2
    else:
        _close_log()
    return 0


INTERRUPT_GRACE = 5.0   # seconds a rank other than 0 waits for rank 0 to end an interrupted MPI job


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if seconds < 60:
        return f"{seconds:.1f} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _interrupted(exc, args, comm, elapsed: float) -> int:
    """End a job stopped by SIGINT/SIGTERM (its cleanup has run): one line on stderr and in
    gaugeflow.log; exit status 128 + the signal number (130, 143). Under MPI rank 0 reports and
    ends every rank; another rank does so itself only if rank 0 has not within
    INTERRUPT_GRACE seconds (rank 0 may be blocked in a collective call)."""
    import signal
    import time
    from .parallel import log_to_file, abort
    signum = int(getattr(exc, "signum", signal.SIGINT))
    line = (f"gaugeflow: {args.command} interrupted by {signal.Signals(signum).name} after {_duration(elapsed)}; "
            f"rerun the same command to resume")
    code = 128 + signum
    rank = 0 if comm is None else comm.Get_rank()
    many = comm is not None and comm.Get_size() > 1
    if rank != 0:
        time.sleep(INTERRUPT_GRACE)    # normally rank 0 ends the job meanwhile
        line = f"[rank {rank}] {line} (rank 0 did not end the job)"
    log_to_file(line, level="WARNING")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # pragma: no cover
            pass
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
    if many:
        abort(comm, code)
    return code


def _close_log():
    """Forget the job log of an earlier main() in this process (tests call main repeatedly)."""
    import logging
    log = logging.getLogger("gaugeflow")
    for h in list(log.handlers):
        try:
            h.close()
        except Exception:  # pragma: no cover
            pass
    log.handlers.clear()
    log.gaugeflow_logfile = None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
