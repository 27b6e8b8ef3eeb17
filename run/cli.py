"""The `gaugeflow` command line (also `python -m run`).

    gaugeflow <command> [CONFIG] [--set section.key=value ...] [--output DIR] [--debug]

CONFIG is a TOML file or the name of a bundled config in run/configs/ (default: demo).
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
<output>/gaugeflow.log (and on the screen with --debug).
"""
from __future__ import annotations

import argparse
import sys

from .config import load_config, ConfigError

__all__ = ["main"]

COMMANDS = ("hmc", "import", "train", "evaluate", "measure", "analyze", "demo")


def _parser():
    ap = argparse.ArgumentParser(prog="gaugeflow", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", metavar="command")
    for name in COMMANDS:
        p = sub.add_parser(name, help=f"run the {name} stage")
        p.add_argument("config", nargs="?", default="demo", help="TOML file or bundled config name")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set hmc.n_traj=50 (repeatable)")
        p.add_argument("--output", help="output directory (overrides job.output)")
        p.add_argument("--debug", action="store_true",
                       help="show the full traceback of an error on the screen (it is always in gaugeflow.log)")
        if name == "import":
            p.add_argument("files", nargs="+", help="ILDG/LIME files in Monte Carlo order")
    return ap


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
    from .lock import LockedError
    return (ConfigError, LockedError, InvalidGaugeField, LayoutError, CGNotConverged, OSError) + _input_errors()


def _hint(exc) -> str:
    """What to do about a user error (appended to its one-line message)."""
    import errno
    from lattice import InvalidGaugeField, LayoutError
    from fermions import CGNotConverged, EvenOddError
    from lattice.io import MismatchError, CorruptFileError
    if isinstance(exc, CGNotConverged):
        return "raise fermions.cg_maxiter or loosen fermions.cg_tol (or check kappa and mu)"
    if isinstance(exc, InvalidGaugeField):
        return "the gauge field is not in SU(N) (or not finite): check the input file, or lower hmc.tau / raise " \
               "hmc.n_steps if HMC diverged"
    if isinstance(exc, EvenOddError):
        return "use even extents with L_0 >= 4 and a rank count that keeps the local L_0 even"
    if isinstance(exc, LayoutError):
        return "check lattice.shape (and train.shape) against the number of MPI ranks"
    if isinstance(exc, MismatchError):
        return "use the settings the file was made with, or another job.output"
    if isinstance(exc, CorruptFileError):
        return "restore the file from a copy, or move it away and rerun"
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
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
    ctx = None
    try:
        try:
            cfg = load_config(args.config, overrides, command=args.command)
        except _user_errors() as exc:  # read identically by every rank: reported by each
            from lattice.io._parallel import mark_all_ranks
            raise mark_all_ranks(exc)
        from importlib import import_module
        mod = import_module(f"run.jobs.{'import_ildg' if args.command == 'import' else args.command}")
        from .context import make_context
        ctx = make_context(cfg, args.command, comm=comm)
        try:
            if args.command == "import":
                mod.run(ctx, args.files)
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
