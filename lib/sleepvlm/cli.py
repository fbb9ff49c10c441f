"""The ``sleepvlm`` command: build the book, write the simulated cohort, run the benchmarks."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from .models.server import add_serve_arguments, cmd_serve
from .stage_cli import add_stage_parser


def _parameters(pairs: list[list[str]] | None) -> dict:
    """``-p NAME VALUE`` pairs, values parsed as YAML like papermill's own ``-y``."""
    return {name: yaml.safe_load(value) for name, value in pairs or []}


def cmd_book(args: argparse.Namespace) -> int:
    from .book import BookError, run_book
    from .models import USER_REGISTRY_ENV, load_registry
    from .models.errors import RegistryError

    if args.registry:
        try:
            load_registry(args.registry)  # a broken file stops here, not in a chapter
        except RegistryError as err:
            print(f"error: --registry: {err}", file=sys.stderr)
            return 1
        # the chapters' kernels inherit the environment
        os.environ[USER_REGISTRY_ENV] = str(args.registry.resolve())
    try:
        run_book(
            smoke=args.smoke,
            only=args.only,
            parameters=_parameters(args.p),
            build=args.build_dir,
            force=args.force,
            html=not args.no_html,
            jobs=args.jobs,
        )
    except BookError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_check_notebooks(args: argparse.Namespace) -> int:
    from .book import dirty_notebooks

    problems = dirty_notebooks(Path(args.folder))
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


def cmd_check_lock(args: argparse.Namespace) -> int:
    from .environment import LockError, installed_drift, lock_disagreements

    try:
        problems = lock_disagreements() + installed_drift()
    except LockError as err:
        problems = [str(err)]
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


def cmd_teach(args: argparse.Namespace) -> int:
    from .teach import TeachError, write_teaching_versions

    try:
        paths = write_teaching_versions(args.chapter, out=args.out)
    except TeachError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .data.cohort import build_cohort

    root = build_cohort(args.size, root=args.out)
    print(root)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench

    if args.what == "preprocess":
        bench.print_preprocess_bench(hours=args.hours)
    elif args.what == "render":
        bench.print_render_bench(n=args.n)
    elif args.what == "requests":
        bench.print_requests_bench(n_requests=args.n, concurrency=args.concurrency)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sleepvlm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    book = sub.add_parser("book", help="execute the chapters with papermill and build the book")
    book.add_argument("--smoke", action="store_true", help="tiny parameters: a quick build")
    book.add_argument("--only", nargs="+", metavar="CHAPTER", help="chapter numbers or names")
    book.add_argument(
        "-p",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="parameter passed to every selected chapter (value parsed as YAML)",
    )
    book.add_argument("--build-dir", type=Path, help="build somewhere else than the project")
    book.add_argument("--force", action="store_true", help="rerun chapters even if unchanged")
    book.add_argument(
        "--registry",
        type=Path,
        help="a registry file of your own models, read over the packaged one in every chapter",
    )
    book.add_argument("--no-html", action="store_true", help="execute only; skip Jupyter Book")
    book.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="chapters executed at once (each waits for the chapters it needs)",
    )
    book.set_defaults(func=cmd_book)

    check = sub.add_parser("check-notebooks", help="fail if notebook sources carry outputs")
    check.add_argument("folder", nargs="?", default="notebooks")
    check.set_defaults(func=cmd_check_notebooks)

    lock = sub.add_parser(
        "check-lock",
        help="fail unless requirements.lock agrees with pyproject.toml and the installed packages",
    )
    lock.set_defaults(func=cmd_check_lock)

    teach = sub.add_parser(
        "teach", help="write a chapter's student (no solutions) and instructor versions"
    )
    teach.add_argument("chapter", metavar="CHAPTER", help="chapter number (03) or name")
    teach.add_argument("--out", type=Path, help="folder (default: _build/teach)")
    teach.set_defaults(func=cmd_teach)

    sim = sub.add_parser(
        "simulate", help="write the simulated cohort in the real datasets' formats"
    )
    sim.add_argument("--size", default="small", choices=["small", "full"])
    sim.add_argument("--out", type=Path, help="folder (default: the cache)")
    sim.set_defaults(func=cmd_simulate)

    bench = sub.add_parser("bench", help="measure ours against a reference in one run")
    bench.add_argument("what", choices=["preprocess", "render", "requests"])
    bench.add_argument("--hours", type=float, default=8.0, help="preprocess: night length (h)")
    bench.add_argument("-n", type=int, default=300, help="render: images; requests: requests")
    bench.add_argument("--concurrency", type=int, default=32, help="requests: in flight at once")
    bench.set_defaults(func=cmd_bench)

    add_stage_parser(sub)

    serve = sub.add_parser("serve", help="serve the embedded models over the chat-completions API")
    add_serve_arguments(serve)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
