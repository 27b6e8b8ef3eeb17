"""The `gaugeflow` command line (also `python -m run`).

    gaugeflow <command> [CONFIG] [--set section.key=value ...] [--output DIR]

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
        if name == "import":
            p.add_argument("files", nargs="+", help="ILDG/LIME files in Monte Carlo order")
    return ap


def _input_errors() -> tuple:
    """Errors that mean "these input files are wrong or do not belong together": reported in
    one line (exit status 2) instead of a traceback. Raised identically on every MPI rank."""
    from lattice.io import CorruptFileError, MismatchError
    from flows import ParamFileError
    return (MismatchError, CorruptFileError, ParamFileError, FileNotFoundError)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = _parser()
    args = ap.parse_args(argv)
    if not args.command:
        ap.print_help()
        return 2
    overrides = list(args.overrides)
    if args.output:
        overrides.append(f'job.output="{args.output}"')
    try:
        cfg = load_config(args.config, overrides)
        from importlib import import_module
        mod = import_module(f"run.jobs.{'import_ildg' if args.command == 'import' else args.command}")
        from .context import make_context
        ctx = make_context(cfg, args.command)
        if args.command == "import":
            mod.run(ctx, args.files)
        else:
            mod.run(ctx)
    except ConfigError as exc:
        print(f"gaugeflow: configuration error: {exc}", file=sys.stderr)
        return 2
    except _input_errors() as exc:
        print(f"gaugeflow: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("run.jobs."):
            print(f"gaugeflow: command {args.command!r} is not available in this version", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
