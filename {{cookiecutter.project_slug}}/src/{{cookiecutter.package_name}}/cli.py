"""Command-line interface: thin shells over the study's functions.

Each subcommand loads study.toml (or --config) and calls one function of the
package, so the notebook, the tests and the CLI run the same code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from labzarr.errors import StudyError

from . import __version__
from .config import Config, load_config, reference_markdown


def _synth(cfg: Config, args: argparse.Namespace) -> int:
    from .synthetic import SIZES, SyntheticSize, describe, training_steps, write_synthetic

    preset = SIZES[args.size]
    size = SyntheticSize(
        ny=args.ny or preset.ny,
        nx=args.nx or preset.nx,
        years=args.years or preset.years,
        time_step=preset.time_step,
    )
    out = Path(args.out) if args.out else cfg.path(cfg.data.raw_dir)
    etl = cfg.etl
    if size.time_step != etl.time_step:
        raise StudyError(
            f"--size {args.size} writes {size.time_step} data, but etl.time_step = {etl.time_step!r} in "
            f"{cfg.source}; use a {etl.time_step} size ("
            + ", ".join(name for name, s in SIZES.items() if s.time_step == etl.time_step)
            + f") or set etl.time_step = {size.time_step!r} (with a lookback and gap in those steps)"
        )
    try:  # the labels are ranked on the ETL's training block, as the features will be
        train_steps = training_steps(
            size,
            args.calendar,
            lookback=etl.time_lookback,
            gap=etl.split_gap,
            fractions=etl.split_fractions,
        )
    except ValueError as exc:
        raise StudyError(f"synthetic record too short for this study.toml: {exc}; use more --years") from None
    print(f"writing synthetic inputs to {out}: {describe(size, cfg.data.variables, args.calendar)}")
    for path in write_synthetic(
        out, cfg.data.variables, size, seed=args.seed, calendar=args.calendar, train_steps=train_steps,
        lookback=etl.time_lookback, overwrite=args.overwrite,
    ):  # fmt: skip
        print(f"  {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def _etl(cfg: Config, args: argparse.Namespace) -> int:
    from .etl.pipeline import run_etl

    run_etl(cfg, overwrite=args.overwrite)
    return 0


def _serve(cfg: Config, args: argparse.Namespace) -> int:
    from labzarr.serve import serve

    data = Path(args.data) if args.data else cfg.store_path.parent  # refuses an s3:// zarr_dir, saying why
    return serve(
        cfg.serve_settings(), host=args.host, port=args.port, data_dir=data, limit_rate=args.limit_rate
    )


def _train(cfg: Config, args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else None
    _check_results_folder(
        out or cfg.path(cfg.train.out_dir), "--out" if out else f"train.out_dir ({cfg.source})"
    )
    from labzarr.train.threads import prepare_threads

    prepare_threads()  # before torch loads its OpenMP runtime: waiting threads sleep, not spin
    from .train.loop import train  # torch: seconds to import

    # Progress bars only on a terminal: in a log file every redraw would be a line of its own.
    # The one line per epoch is printed either way.
    progress = sys.stderr.isatty()
    train(cfg, url=args.url, epochs=args.epochs, out_dir=out, resume=not args.fresh, progress=progress)
    return 0


def _check_results_folder(out: Path, origin: str) -> None:
    """Refuse a results folder that cannot be one before an epoch is spent, not when the first
    checkpoint is written: the path or a folder above it is a file."""
    blocking = next((p for p in (out, *out.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise StudyError(
            f"{origin} = {out}: {blocking} is a file, not a folder; name a folder (made if missing)"
        )


def _lock(cfg: Config, args: argparse.Namespace) -> int:
    from labzarr.lock import write_lock

    out = Path(args.out) if args.out else cfg.root / "requirements.lock"
    pins = write_lock(out, cfg.root, __package__)
    print(f"pinned {len(pins)} packages in {out}")
    return 0


def _config(cfg: Config, args: argparse.Namespace) -> int:
    if args.reference:
        print(reference_markdown(), end="")
    else:
        print(f"config: {cfg.source}")
        for section, values in cfg.to_dict().items():
            print(f"[{section}]")
            for name, value in values.items():
                print(f"  {name} = {value!r}")
    return 0


# Every subcommand and its one-line summary: the command list of --help, the head of each
# command's own --help and the README's command table (written when the study is generated).
COMMANDS = {
    "synth": "write deterministic synthetic inputs (NetCDF) to data/raw",
    "etl": "raw inputs -> quantiles -> categories -> the series store (zarr)",
    "serve": "serve the zarr folder with the study's nginx config (no Docker)",
    "train": "train the model of study.toml (train.model) on the served store over HTTP",
    "lock": "record the exact installed dependency versions (requirements.lock)",
    "config": "show the configuration, or --reference for every key",
}


def _command(sub: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=COMMANDS[name], description=COMMANDS[name])


def commands_markdown() -> str:
    """The README's table of commands."""
    rows = "".join(f"| `{name}` | {summary} |\n" for name, summary in COMMANDS.items())
    return f"| command | what it does |\n|---|---|\n{rows}"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog=__package__, description="Drought-category study: synth -> etl -> serve -> train."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--config", help="path to study.toml (default: found from the current folder)")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", dest="log_level", action="store_const", const=logging.DEBUG,
                           default=logging.INFO, help="log more detail (DEBUG)")  # fmt: skip
    verbosity.add_argument("-q", "--quiet", dest="log_level", action="store_const", const=logging.WARNING,
                           help="log only warnings and errors")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "synth")
    p.add_argument(
        "--size",
        choices=("tiny", "small", "large", "monthly"),
        default="small",
        help="preset size: tiny (tests), small (default, demo/CI), large (benchmarks), monthly (40 years "
        "of monthly means, for etl.time_step = 'monthly')",
    )
    p.add_argument("--ny", type=int, help="grid rows (overrides the preset)")
    p.add_argument("--nx", type=int, help="grid columns (overrides the preset)")
    p.add_argument("--years", type=int, help="years of data (overrides the preset)")
    p.add_argument("--calendar", default="standard", choices=("standard", "noleap", "360_day"))
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument("--out", help="output folder (default: data.raw_dir)")
    p.add_argument("--overwrite", action="store_true", help="replace existing synthetic files")
    p.set_defaults(func=_synth)

    p = _command(sub, "etl")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.set_defaults(func=_etl)

    p = _command(sub, "serve")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: server.port of study.toml; 0 = a free port)")
    p.add_argument("--data", help="folder to serve (default: data.zarr_dir)")
    p.add_argument("--limit-rate", default=None, help="per-connection bandwidth cap, e.g. 2m")
    p.set_defaults(func=_serve)

    p = _command(sub, "train")
    p.add_argument("--url", help="base URL of the data server (default: $DATA_URL, then study.toml)")
    p.add_argument("--epochs", type=int, help="number of epochs (default: train.epochs)")
    p.add_argument("--out", help="results folder (default: train.out_dir)")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="start over: do not resume from the checkpoints in the results folder; this run's replace them",
    )
    p.set_defaults(func=_train)

    p = _command(sub, "lock")
    p.add_argument("--out", help="output file (default: requirements.lock next to study.toml)")
    p.set_defaults(func=_lock)

    p = _command(sub, "config")
    p.add_argument("--reference", action="store_true", help="print the key reference (Markdown)")
    p.set_defaults(func=_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(message)s")
    logging.getLogger().setLevel(args.log_level)  # also when a handler exists already (basicConfig skips)
    try:
        cfg = load_config(args.config)
        return args.func(cfg, args)
    except (StudyError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        # Sibling reads that the failure abandoned may still be pending in zarr's event loop
        # when the interpreter exits, and asyncio would log each as "Task was destroyed but it
        # is pending!" after the error line (1 run in about 6 under load): not news after it.
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
