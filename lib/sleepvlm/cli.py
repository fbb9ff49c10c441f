"""The ``sleepvlm`` command: build the book, write the simulated cohort, run the benchmarks."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

from .data.cohort import DOWNLOAD_SOURCE_CENTER
from .models.server import add_serve_arguments, cmd_serve
from .stage_cli import add_stage_parser

#: Folder (in the project) of the books built on a lab's own dataset, one sub-folder each.
LAB_BUILDS = "_lab"


def _parameters(pairs: list[list[str]] | None) -> dict:
    """``-p NAME VALUE`` pairs, values parsed as YAML like papermill's own ``-y``."""
    return {name: yaml.safe_load(value) for name, value in pairs or []}


def _yaml_parameters(texts: list[str] | None) -> dict:
    """``-y "NAME: VALUE"`` mappings, as papermill's own ``-y`` reads them."""
    merged = {}
    for text in texts or []:
        mapping = yaml.safe_load(text)
        if not isinstance(mapping, dict):
            raise ValueError(f'-y {text!r}: not a YAML mapping; write -y "NAME: VALUE"')
        merged.update(mapping)
    return merged


def book_parameters(args: argparse.Namespace) -> dict:
    """Every chapter parameter the command line sets: the lab options (``--data-dir``,
    ``--dataset``, ``--models``, ``--base-url``, ``--api-key-env``), then ``-y`` and ``-p``
    (which win)."""
    if args.data_dir and not args.dataset:
        raise ValueError("--data-dir is the folder of one dataset: name it with --dataset")
    if args.data_dir and not args.data_dir.is_dir():
        raise ValueError(f"--data-dir {args.data_dir}: no such folder")
    lab = {
        # absolute: chapters run in the build folder
        "data_dir": str(args.data_dir.resolve()) if args.data_dir else None,
        "dataset": args.dataset,
        "models": args.models,
        "base_url": args.base_url,
        "api_key_env": args.api_key_env,
    }
    given = {name: value for name, value in lab.items() if value}
    return {**given, **_yaml_parameters(args.y), **_parameters(args.p)}


def lab_build_dir(dataset: str) -> Path:
    """Where the book of one lab's dataset is built when no ``--build-dir`` is given: beside
    the project's own book, never over it."""
    from .cache import project_root

    return project_root() / LAB_BUILDS / dataset


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
        parameters = book_parameters(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    build = args.build_dir
    if build is None and args.data_dir:
        build = lab_build_dir(args.dataset)
    try:
        run_book(
            smoke=args.smoke,
            only=args.only,
            parameters=parameters,
            build=build,
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
    from .data.cohort import build_cohort, write_simulated_download

    if args.as_download:
        if args.out is None:
            print(
                "error: --as-download needs --out FOLDER (where the download goes)", file=sys.stderr
            )
            return 2
        print(write_simulated_download(args.as_download, args.out, args.size))
        return 0
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


def cmd_lever(args: argparse.Namespace) -> int:
    from .explain import levers

    if args.list or not args.names:
        for lever in levers.LEVERS:
            print(f"{lever.name}: {lever.why} {lever.changes or ''}".rstrip())
        return 0
    try:
        chosen = [levers.lever_named(name) for name in args.names]
    except levers.LeverError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for lever in chosen:
        records = levers.run_lever(lever, args.train_dataset, progress=True)
        for path, record in zip(levers.write_lever(records, args.out), records, strict=True):
            scores = ", ".join(
                f"{k} {v:.3f}" for k, v in record["metrics"].items() if v is not None
            )
            print(f"{lever.name} {record['dataset']}: {scores} -> {path}")
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
    book.add_argument(
        "-y",
        action="append",
        metavar="YAML",
        help='parameters as a YAML mapping, e.g. -y "datasets: [dcsm, shhs]"',
    )
    book.add_argument(
        "--data-dir",
        type=Path,
        help="folder of one real dataset as downloaded: every chapter that reads data runs on it",
    )
    book.add_argument("--dataset", help="the dataset --data-dir holds (dcsm, shhs, isruc, ...)")
    book.add_argument("--models", help="models to run, e.g. lab-vlm or lab-vlm,chance")
    book.add_argument("--base-url", help="OpenAI-compatible server the models are sent to")
    book.add_argument(
        "--api-key-env",
        metavar="VARIABLE",
        help="environment variable holding that server's key (never the key itself)",
    )
    book.add_argument(
        "--build-dir",
        type=Path,
        help=f"build somewhere else than the project (with --data-dir: {LAB_BUILDS}/DATASET)",
    )
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
    sim.add_argument(
        "--as-download",
        metavar="DATASET",
        choices=list(DOWNLOAD_SOURCE_CENTER),
        help="write one dataset's nights laid out as its download, without the simulator's "
        "truth (a stand-in for your own data): " + ", ".join(DOWNLOAD_SOURCE_CENTER),
    )
    sim.set_defaults(func=cmd_simulate)

    bench = sub.add_parser("bench", help="measure ours against a reference in one run")
    bench.add_argument("what", choices=["preprocess", "render", "requests"])
    bench.add_argument("--hours", type=float, default=8.0, help="preprocess: night length (h)")
    bench.add_argument("-n", type=int, default=300, help="render: images; requests: requests")
    bench.add_argument("--concurrency", type=int, default=32, help="requests: in flight at once")
    bench.set_defaults(func=cmd_bench)

    lever = sub.add_parser(
        "lever",
        help="train SleepVLM-mini with a lever of issue 19 and write its records",
    )
    lever.add_argument("names", nargs="*", metavar="LEVER", help="levers to run, in turn")
    lever.add_argument("--list", action="store_true", help="list the levers and exit")
    lever.add_argument("--train-dataset", default="dcsm", help="center the mini is trained on")
    lever.add_argument(
        "--out", type=Path, help="folder of the records (default: the project's, in the package)"
    )
    lever.set_defaults(func=cmd_lever)

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
