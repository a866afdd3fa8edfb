"""``ltray prepare ...``: write a data set (Parquet shards + manifest.json) from five sources.

Mounted by the main CLI as ``app.add_typer(prepare_app, name="prepare")``. Every command shows
a progress bar on stderr, prints a summary on stdout, and on bad input prints one line
``error: ...`` to stderr and exits 1 (see :func:`exit_on_error`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ltray.data import listed, sources
from ltray.data.fs import redact_url, scrub
from ltray.data.prepare import REPORT_NAME, PrepareOptions, PrepareResult, prepare_from
from ltray.data.profiles import GROUPS
from ltray.data.sources import SourcePlan
from ltray.data.writer import ShardLayout
from ltray.errors import LtrayError

app = typer.Typer(
    help="Write a data set: OUT/manifest.json + OUT/<split>/part-NNNNN.parquet (OUT: path or URL).",
    no_args_is_help=True,
    add_completion=False,
)
STORAGE_ENV = "LTRAY_STORAGE_OPTIONS"
_MiB = 1 << 20


@contextlib.contextmanager
def exit_on_error(storage_options: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Turn an LtrayError into ``error: <one line>`` on stderr and exit code 1.

    Secrets in ``storage_options`` are scrubbed from the message; Ctrl-C exits 130.
    """
    try:
        yield
    except LtrayError as exc:
        line = " ".join(scrub(str(exc), storage_options).split()) or "failed"
        typer.echo(f"error: {line}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("error: interrupted; run the same command again to resume", err=True)
        raise typer.Exit(130) from None


class Profile(str, Enum):
    exp = "exp"
    pareto = "pareto"


class CifarDataset(str, Enum):
    cifar10 = "cifar10"
    cifar100 = "cifar100"


class Validate(str, Enum):
    decode = "decode"
    header = "header"


class ImageFormat(str, Enum):
    jpeg = "jpeg"
    png = "png"


# options every command shares
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace a different data set already in OUT.")
]
Workers = Annotated[int, typer.Option(min=0, help="Worker processes (0: one per core).")]
ShardRows = Annotated[int, typer.Option(min=1, help="At most this many rows per shard.")]
ShardMb = Annotated[float, typer.Option(min=0.001, help="Target shard size in MiB.")]
GroupRows = Annotated[
    int, typer.Option(min=1, help="At most this many rows per row group (the streaming unit).")
]
GroupMb = Annotated[float, typer.Option(min=0.001, help="Target row-group size in MiB.")]
MaxBad = Annotated[
    float,
    typer.Option(min=0.0, max=1.0, help="Fail if more than this fraction of images are bad."),
]
ValidateOpt = Annotated[
    Validate, typer.Option(help="decode: decode every image; header: check the container only.")
]
StorageOpt = Annotated[
    str | None,
    typer.Option(
        envvar=STORAGE_ENV,
        help="fsspec storage options for SRC and OUT: a JSON object or @file.json "
        "(credentials, endpoint_url). Never printed or stored.",
        show_default=False,
    ),
]
ScratchOpt = Annotated[
    Path | None, typer.Option(help="Where a .tar.gz is decompressed (default: the system temp).")
]
Seed = Annotated[int, typer.Option(min=0, help="Seeds sampling, val carving and the row order.")]


def parse_storage_options(text: str | None) -> dict[str, Any]:
    """``--storage-options``: a JSON object, or ``@path`` to a file holding one."""
    if not text:
        return {}
    source = "--storage-options"
    if text.startswith("@"):
        path = Path(text[1:])
        source = str(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise LtrayError(f"--storage-options {path}: cannot read ({exc.strerror})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise LtrayError(f"{source}: not valid JSON (expected an object)") from None
    if not isinstance(value, dict):
        raise LtrayError(f"{source}: expected a JSON object, got {type(value).__name__}")
    return value


def _options(
    storage: dict[str, Any],
    overwrite: bool,
    workers: int,
    shard_rows: int,
    shard_mb: float,
    row_group_rows: int,
    row_group_mb: float,
    max_bad_fraction: float,
    validate: Validate,
    scratch_dir: Path | None,
) -> PrepareOptions:
    layout = ShardLayout(
        shard_rows=shard_rows,
        shard_bytes=max(1, int(shard_mb * _MiB)),
        row_group_rows=row_group_rows,
        row_group_bytes=max(1, int(row_group_mb * _MiB)),
    )
    return PrepareOptions(
        layout=layout,
        workers=workers,
        max_bad_fraction=max_bad_fraction,
        validate=validate.value,
        overwrite=overwrite,
        storage_options=storage,
        scratch_dir=str(scratch_dir) if scratch_dir else None,
    )


def _progress_bar() -> Progress:
    """A bar on stderr when it is a terminal (logs and pipes get only the summary)."""
    console = Console(stderr=True)
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )


_PHASES = {"check": "checking finished shards", "write": "reading, validating, writing"}


def _summary(result: PrepareResult, out: str) -> str:
    m = result.manifest
    shown = redact_url(out)
    if result.already_done:
        return f"{shown} already holds this data set (manifest.json); nothing to do"
    splits = ", ".join(
        f"{split} {m.num_rows(split):,} rows in {len(m.shards(split))} shard(s)"
        for split in m.split_names
    )
    groups = m.groups()
    group_text = ", ".join(f"{groups.count(g)} {g}" for g in GROUPS)
    prof = m.profile
    imbalance = prof.get("imbalance_actual")
    lines = [
        f"wrote {shown}: {splits}",
        f"{m.num_classes} classes ({group_text}); profile {prof.get('name')}, "
        f"n_max {prof.get('n_max')}, imbalance {imbalance:.4g}, seed {prof.get('seed')}",
    ]
    if result.reused:
        lines.append(f"resumed: kept {result.reused} finished shard(s), wrote {result.written}")
    lines.extend(_bad_lines(result.report, out))
    return "\n".join(lines)


def _bad_lines(report: dict[str, Any], out: str, limit: int = 10) -> list[str]:
    bad = report.get("bad_items") or []
    if not bad:
        return []
    lines = [
        f"skipped {len(bad)} bad image(s) of {report.get('total', 0):,} "
        f"({100 * report.get('bad_fraction', 0):.3g}%), all listed in "
        f"{redact_url(out).rstrip('/')}/{REPORT_NAME}:"
    ]
    lines += [f"  {b['split']}: {b['id']}: {b['reason']}" for b in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more")
    return lines


def _run(make_plan: Callable[[str], SourcePlan], out: str, options: PrepareOptions) -> None:
    with exit_on_error(options.storage_options):
        with _progress_bar() as bar:
            task = bar.add_task("listing the source", total=None)

            def on_progress(phase: str, done: int, total: int) -> None:
                bar.update(task, description=_PHASES.get(phase, phase), completed=done, total=total)

            try:
                result = prepare_from(make_plan, out, options, on_progress)
            except LtrayError as exc:
                report = getattr(exc, "report", None)
                if report:
                    bar.stop()
                    typer.echo(scrub("\n".join(_bad_lines(report, out)), options.storage_options))
                raise
        typer.echo(scrub(_summary(result, out), options.storage_options))


@app.command("cifar-lt")
def cifar_lt(
    src: Annotated[
        str, typer.Argument(help="cifar10-jpeg.tar.gz, an extracted image folder, or the pickles")
    ],
    out: Annotated[str, typer.Argument(help="Output folder or URL.")],
    imbalance: Annotated[float, typer.Option(min=1.0, help="Imbalance factor n_max / n_min.")],
    dataset: Annotated[CifarDataset, typer.Option(help="Which CIFAR.")] = CifarDataset.cifar10,
    profile: Annotated[Profile, typer.Option(help="Long-tail profile.")] = Profile.exp,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    workers: Workers = 0,
    shard_rows: ShardRows = 1_000_000,
    shard_mb: ShardMb = 128.0,
    row_group_rows: GroupRows = 1024,
    row_group_mb: GroupMb = 32.0,
    max_bad_fraction: MaxBad = 0.01,
    validate: ValidateOpt = Validate.decode,
    storage_options: StorageOpt = None,
    scratch_dir: ScratchOpt = None,
) -> None:
    """CIFAR-10/100-LT: the first n_c images of class c, n_c = int(n_max * IF^(-c/(C-1)))."""
    with exit_on_error():
        storage = parse_storage_options(storage_options)
    options = _options(
        storage, overwrite, workers, shard_rows, shard_mb, row_group_rows, row_group_mb,
        max_bad_fraction, validate, scratch_dir,
    )  # fmt: skip

    def make_plan(scratch: str) -> SourcePlan:
        return sources.cifar_lt(
            src, scratch, imbalance=imbalance, dataset=dataset.value, profile=profile.value,
            seed=seed, storage_options=storage,
        )  # fmt: skip

    _run(make_plan, out, options)


@app.command("imagefolder")
def imagefolder(
    src: Annotated[str, typer.Argument(help="A class-per-folder tree, or a .tar/.tar.gz of one.")],
    out: Annotated[str, typer.Argument(help="Output folder or URL.")],
    imbalance: Annotated[
        float | None, typer.Option(min=1.0, help="Make train long-tailed with this IF.")
    ] = None,
    profile: Annotated[Profile, typer.Option(help="Long-tail profile.")] = Profile.exp,
    val_fraction: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Carve a seeded per-class val split from train."),
    ] = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    workers: Workers = 0,
    shard_rows: ShardRows = 1_000_000,
    shard_mb: ShardMb = 128.0,
    row_group_rows: GroupRows = 1024,
    row_group_mb: GroupMb = 32.0,
    max_bad_fraction: MaxBad = 0.01,
    validate: ValidateOpt = Validate.decode,
    storage_options: StorageOpt = None,
    scratch_dir: ScratchOpt = None,
) -> None:
    """Any image-folder tree: SRC/<class>/**/<image>, or SRC/train/<class>/... (val/, test/)."""
    with exit_on_error():
        storage = parse_storage_options(storage_options)
    options = _options(
        storage, overwrite, workers, shard_rows, shard_mb, row_group_rows, row_group_mb,
        max_bad_fraction, validate, scratch_dir,
    )  # fmt: skip

    def make_plan(scratch: str) -> SourcePlan:
        return sources.imagefolder(
            src, scratch, imbalance=imbalance, profile=profile.value, val_fraction=val_fraction,
            seed=seed, storage_options=storage,
        )  # fmt: skip

    _run(make_plan, out, options)


@app.command("imagenet-lt")
def imagenet_lt(
    images: Annotated[str, typer.Option(help="Root the list files' paths are relative to.")],
    lists: Annotated[str, typer.Option(help="Folder of ImageNet_LT_{train,val,test}.txt.")],
    out: Annotated[str, typer.Argument(help="Output folder or URL.")],
    classes: Annotated[
        str | None, typer.Option(help="Class names in label order (one a line, or JSON list).")
    ] = None,
    num_classes: Annotated[
        int | None, typer.Option(min=1, help="Number of classes (default: from the lists).")
    ] = None,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    workers: Workers = 0,
    shard_rows: ShardRows = 1_000_000,
    shard_mb: ShardMb = 128.0,
    row_group_rows: GroupRows = 1024,
    row_group_mb: GroupMb = 32.0,
    max_bad_fraction: MaxBad = 0.01,
    validate: ValidateOpt = Validate.decode,
    storage_options: StorageOpt = None,
    scratch_dir: ScratchOpt = None,
) -> None:
    """ImageNet-LT (Liu et al. 2019) from its list files: 'relative/path.JPEG label' lines."""
    with exit_on_error():
        storage = parse_storage_options(storage_options)
    options = _options(
        storage, overwrite, workers, shard_rows, shard_mb, row_group_rows, row_group_mb,
        max_bad_fraction, validate, scratch_dir,
    )  # fmt: skip

    def make_plan(scratch: str) -> SourcePlan:
        return listed.imagenet_lt(
            images, lists, classes_file=classes, num_classes=num_classes, seed=seed,
            storage_options=storage,
        )  # fmt: skip

    _run(make_plan, out, options)


@app.command("inat18")
def inat18(
    images: Annotated[str, typer.Option(help="Root the annotations' file_name are relative to.")],
    annotations: Annotated[str, typer.Option(help="Folder of train2018.json and val2018.json.")],
    out: Annotated[str, typer.Argument(help="Output folder or URL.")],
    seed: Seed = 0,
    overwrite: Overwrite = False,
    workers: Workers = 0,
    shard_rows: ShardRows = 1_000_000,
    shard_mb: ShardMb = 128.0,
    row_group_rows: GroupRows = 1024,
    row_group_mb: GroupMb = 32.0,
    max_bad_fraction: MaxBad = 0.01,
    validate: ValidateOpt = Validate.decode,
    storage_options: StorageOpt = None,
    scratch_dir: ScratchOpt = None,
) -> None:
    """iNaturalist 2018 from its COCO-style annotations (labels: category ids, sorted)."""
    with exit_on_error():
        storage = parse_storage_options(storage_options)
    options = _options(
        storage, overwrite, workers, shard_rows, shard_mb, row_group_rows, row_group_mb,
        max_bad_fraction, validate, scratch_dir,
    )  # fmt: skip

    def make_plan(scratch: str) -> SourcePlan:
        return listed.inat18(images, annotations, seed=seed, storage_options=storage)

    _run(make_plan, out, options)


@app.command("synthetic")
def synthetic(
    out: Annotated[str, typer.Argument(help="Output folder or URL.")],
    classes: Annotated[int, typer.Option(min=2, help="Number of classes.")] = 10,
    n_max: Annotated[int, typer.Option(min=1, help="Train images of the largest class.")] = 200,
    imbalance: Annotated[float, typer.Option(min=1.0, help="Imbalance factor.")] = 10.0,
    profile: Annotated[Profile, typer.Option(help="Long-tail profile.")] = Profile.exp,
    image_size: Annotated[int, typer.Option(min=8, max=1024, help="Image side in pixels.")] = 32,
    test_per_class: Annotated[int, typer.Option(min=0, help="Balanced test images.")] = 50,
    image_format: Annotated[
        ImageFormat, typer.Option("--format", help="Encoding of the images.")
    ] = ImageFormat.jpeg,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    workers: Workers = 0,
    shard_rows: ShardRows = 1_000_000,
    shard_mb: ShardMb = 128.0,
    row_group_rows: GroupRows = 1024,
    row_group_mb: GroupMb = 32.0,
    max_bad_fraction: MaxBad = 0.01,
    validate: ValidateOpt = Validate.decode,
    storage_options: StorageOpt = None,
    scratch_dir: ScratchOpt = None,
) -> None:
    """A generated long-tailed image set with learnable classes (no download)."""
    with exit_on_error():
        storage = parse_storage_options(storage_options)
    options = _options(
        storage, overwrite, workers, shard_rows, shard_mb, row_group_rows, row_group_mb,
        max_bad_fraction, validate, scratch_dir,
    )  # fmt: skip

    def make_plan(scratch: str) -> SourcePlan:
        return sources.synthetic(
            classes=classes, n_max=n_max, imbalance=imbalance, profile=profile.value,
            image_size=image_size, test_per_class=test_per_class, seed=seed,
            fmt=image_format.value,
        )  # fmt: skip

    with exit_on_error():
        make_plan("")  # validate the options before touching OUT
    _run(make_plan, out, options)
