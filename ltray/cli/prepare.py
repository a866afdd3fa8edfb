"""``ltray prepare ...``: write a data set (Parquet shards + manifest.json) from five sources.

Mounted by the main CLI as ``app.add_typer(prepare_app, name="prepare")``. Every command shows
a progress bar on stderr, prints a summary on stdout, and on bad input prints one line
``error: ...`` to stderr and exits 1 (see :func:`ltray.cli.console.exit_on_error`). The options
every command shares are declared once (:func:`prepare_command`).
"""

from __future__ import annotations

import functools
import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
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

from ltray.cli.console import exit_on_error
from ltray.data.prepare import list_sources, sources
from ltray.data.prepare.orchestrator import REPORT_NAME, PrepareOptions, PrepareResult, prepare_from
from ltray.data.prepare.resize import DEFAULT_JPEG_QUALITY, resize_option
from ltray.data.prepare.sources import SourcePlan
from ltray.data.prepare.val_split import check_val_per_class
from ltray.data.profiles import GROUPS, check_imbalance
from ltray.data.shards import ShardLayout
from ltray.errors import LtrayError
from ltray.secrets import redact_url, scrub

app = typer.Typer(
    help="Write a data set: OUT/manifest.json + OUT/<split>/part-NNNNN.parquet (OUT: path or URL).",
    no_args_is_help=True,
    add_completion=False,
)
STORAGE_ENV = "LTRAY_STORAGE_OPTIONS"
_MiB = 1 << 20
PlanMaker = Callable[..., Callable[[str], SourcePlan]]


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
ResizeShorter = Annotated[
    int | None,
    typer.Option(
        help="Re-encode every image whose shorter side exceeds N px as a JPEG with that side N "
        "(aspect kept), as long-tail recipes train iNat/ImageNet-LT; smaller images keep their "
        "bytes. Default: every image's original bytes, never re-encoded.",
        show_default=False,
    ),
]
JpegQuality = Annotated[
    int | None,
    typer.Option(
        help=f"JPEG quality of the resized images, 1-100 (default {DEFAULT_JPEG_QUALITY}; "
        "only with --resize-shorter).",
        show_default=False,
    ),
]
ScratchOpt = Annotated[
    Path | None, typer.Option(help="Where a .tar.gz is decompressed (default: the system temp).")
]
Seed = Annotated[int, typer.Option(min=0, help="Seeds sampling, val carving and the row order.")]
ValPerClass = Annotated[
    int,
    typer.Option(
        min=0,
        help="Hold out N train images per class as a balanced val split (seeded), taken first "
        "from the images the long-tail profile leaves out, then from the kept ones; 0: none.",
    ),
]


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


@dataclass(frozen=True)
class _Shared:
    """An option every prepare command takes: its name, type and typer declaration."""

    name: str
    annotation: Any
    default: Any


_SHARED = (
    _Shared("overwrite", Overwrite, False),
    _Shared("workers", Workers, 0),
    _Shared("shard_rows", ShardRows, 1_000_000),
    _Shared("shard_mb", ShardMb, 128.0),
    _Shared("row_group_rows", GroupRows, 1024),
    _Shared("row_group_mb", GroupMb, 32.0),
    _Shared("max_bad_fraction", MaxBad, 0.01),
    _Shared("validate", ValidateOpt, Validate.decode),
    _Shared("storage_options", StorageOpt, None),
    _Shared("scratch_dir", ScratchOpt, None),
    _Shared("resize_shorter", ResizeShorter, None),
    _Shared("jpeg_quality", JpegQuality, None),
)


def _prepare_options(shared: dict[str, Any]) -> PrepareOptions:
    layout = ShardLayout(
        shard_rows=shared["shard_rows"],
        shard_bytes=max(1, int(shared["shard_mb"] * _MiB)),
        row_group_rows=shared["row_group_rows"],
        row_group_bytes=max(1, int(shared["row_group_mb"] * _MiB)),
    )
    scratch = shared["scratch_dir"]
    return PrepareOptions(
        layout=layout,
        workers=shared["workers"],
        max_bad_fraction=shared["max_bad_fraction"],
        validate=shared["validate"].value,
        overwrite=shared["overwrite"],
        storage_options=parse_storage_options(shared["storage_options"]),
        scratch_dir=str(scratch) if scratch else None,
        resize=resize_option(shared["resize_shorter"], shared["jpeg_quality"]),
    )


def prepare_command(name: str) -> Callable[[PlanMaker], PlanMaker]:
    """Register ``ltray prepare NAME``. The decorated function takes its own options plus
    ``storage`` (the parsed storage options) and returns the plan maker; the options every
    command shares (OUT's layout, workers, validation, storage options) are added here, once."""

    def register(func: PlanMaker) -> PlanMaker:
        hints = typing.get_type_hints(func, include_extras=True)
        own = [
            p.replace(annotation=hints[p.name])
            for p in inspect.signature(func).parameters.values()
            if p.name != "storage"
        ]
        shared = [
            inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=s.default,
                              annotation=s.annotation)
            for s in _SHARED
        ]  # fmt: skip

        @functools.wraps(func)
        def command(**kwargs: Any) -> None:
            values = {s.name: kwargs.pop(s.name) for s in _SHARED}
            with exit_on_error():
                options = _prepare_options(values)
                make_plan = func(**kwargs, storage=options.storage_options)
            _run(make_plan, kwargs["out"], options)

        command.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in own + shared}
        app.command(name)(command)
        return func

    return register


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
        done = f"{shown} already holds this data set (manifest.json); nothing to do"
        return f"{done}\n{result.note}" if result.note else done
    splits = ", ".join(
        f"{split} {m.num_rows(split):,} rows in {len(m.shards(split))} shard(s)"
        for split in m.split_names
    )
    groups = m.groups()
    group_text = ", ".join(f"{groups.count(g)} {g}" for g in GROUPS)
    prof = m.profile
    imbalance = f"{prof.get('imbalance_actual'):.4g}"
    requested = prof.get("imbalance_requested")
    if requested is not None and f"{requested:.4g}" != imbalance:
        why = "" if m.warnings else "; counts are whole images"
        imbalance += f" (requested {requested:g}{why})"
    lines = [
        f"wrote {shown}: {splits}",
        f"{m.num_classes} classes ({group_text}); profile {prof.get('name')}, "
        f"n_max {prof.get('n_max')}, imbalance {imbalance}, seed {prof.get('seed')}",
    ]
    carve = prof.get("val_split")
    if carve:
        lines.append(
            f"val: {carve['per_class']} per class held out from the training images "
            f"({carve['from_left_out']:,} the profile left out, {carve['from_kept']:,} it kept)"
        )
    if m.resize:
        lines.append(_resize_line(m.resize))
    if result.reused:
        lines.append(f"resumed: kept {result.reused} finished shard(s), wrote {result.written}")
    lines.extend(_bad_lines(result.report, out))
    lines.extend(f"warning: {w} (recorded in manifest.json)" for w in m.warnings)
    return "\n".join(lines)


def _bytes_text(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB")
    power = 0
    while n >= 1024 and power < len(units) - 1:
        n, power = n / 1024, power + 1
    return f"{n:.0f} B" if power == 0 else f"{n:.1f} {units[power]}"


def _resize_line(resize: dict[str, Any]) -> str:
    """Bytes before and after --resize-shorter, as the manifest's ``resize`` records them."""
    images = max(1, resize["images"])
    before, after = resize["source_bytes"], resize["bytes"]
    return (
        f"resized {resize['resized']:,} of {resize['images']:,} images to a shorter side of "
        f"{resize['shorter']} px (JPEG quality {resize['jpeg_quality']}): image bytes "
        f"{_bytes_text(before)} -> {_bytes_text(after)} "
        f"({_bytes_text(before / images)} -> {_bytes_text(after / images)} per image)"
    )


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


@prepare_command("cifar-lt")
def cifar_lt(
    src: Annotated[
        str, typer.Argument(help="cifar10-jpeg.tar.gz, an extracted image folder, or the pickles")
    ],
    out: Annotated[str, typer.Argument(help="Output folder or URL.")],
    imbalance: Annotated[float, typer.Option(help="Imbalance factor n_max / n_min (>= 1).")],
    dataset: Annotated[CifarDataset, typer.Option(help="Which CIFAR.")] = CifarDataset.cifar10,
    profile: Annotated[Profile, typer.Option(help="Long-tail profile.")] = Profile.exp,
    val_per_class: ValPerClass = 0,
    seed: Seed = 0,
    *,
    storage: dict[str, Any],
) -> PlanMaker:
    """CIFAR-10/100-LT: the first n_c images of class c, n_c = int(n_max * IF^(-c/(C-1))).

    Splits: train (the long tail), test (CIFAR's test set) and, with --val-per-class N, val
    (N per class from CIFAR's training images; the default 0 keeps the published protocol)."""
    check_imbalance(imbalance)
    check_val_per_class(val_per_class)

    def make_plan(scratch: str) -> SourcePlan:
        return sources.cifar_lt(
            src, scratch, imbalance=imbalance, dataset=dataset.value, profile=profile.value,
            seed=seed, val_per_class=val_per_class, storage_options=storage,
        )  # fmt: skip

    return make_plan


@prepare_command("imagefolder")
def imagefolder(
    src: Annotated[str, typer.Argument(help="A class-per-folder tree, or a .tar/.tar.gz of one.")],
    out: Annotated[str, typer.Argument(help="Output folder or URL.")],
    imbalance: Annotated[
        float | None, typer.Option(help="Make train long-tailed with this IF (>= 1).")
    ] = None,
    profile: Annotated[Profile, typer.Option(help="Long-tail profile.")] = Profile.exp,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Carve a seeded fraction of every class from train as val, before the long "
            "tail is taken (not with --val-per-class).",
        ),
    ] = None,
    val_per_class: ValPerClass = 0,
    seed: Seed = 0,
    *,
    storage: dict[str, Any],
) -> PlanMaker:
    """Any image-folder tree: SRC/<class>/**/<image>, or SRC/train/<class>/... (val/, test/).

    With --imbalance, class c keeps its first n_c images; a source that cannot give the
    profile (a class with fewer images than n_c) is refused, naming the IF it can give.
    val is the tree's val/, or carved from train by --val-fraction or --val-per-class (one
    of them, and neither when the tree has val/)."""
    if imbalance is not None:
        check_imbalance(imbalance)
    check_val_per_class(val_per_class)
    if val_per_class and val_fraction is not None:
        raise LtrayError("--val-per-class and --val-fraction both carve val: pass one of them")

    def make_plan(scratch: str) -> SourcePlan:
        return sources.imagefolder(
            src, scratch, imbalance=imbalance, profile=profile.value, val_fraction=val_fraction,
            val_per_class=val_per_class, seed=seed, storage_options=storage,
        )  # fmt: skip

    return make_plan


@prepare_command("imagenet-lt")
def imagenet_lt(
    images: Annotated[str, typer.Option(help="Root the list files' paths are relative to.")],
    lists: Annotated[str, typer.Option(help="Folder of ImageNet_LT_{train,val,test}.txt.")],
    out: Annotated[str, typer.Argument(help="Output folder or URL.")],
    classes: Annotated[
        str | None,
        typer.Option(
            help="Class names in label order (one a line, or JSON list); default: the WordNet "
            "ids in the image paths (n01440764), else class_N."
        ),
    ] = None,
    num_classes: Annotated[
        int | None, typer.Option(min=1, help="Number of classes (default: from the lists).")
    ] = None,
    seed: Seed = 0,
    *,
    storage: dict[str, Any],
) -> PlanMaker:
    """ImageNet-LT (Liu et al. 2019) from its list files: 'relative/path.JPEG label' lines."""

    def make_plan(scratch: str) -> SourcePlan:
        return list_sources.imagenet_lt(
            images, lists, classes_file=classes, num_classes=num_classes, seed=seed,
            storage_options=storage,
        )  # fmt: skip

    return make_plan


@prepare_command("inat18")
def inat18(
    images: Annotated[str, typer.Option(help="Root the annotations' file_name are relative to.")],
    annotations: Annotated[str, typer.Option(help="Folder of train2018.json and val2018.json.")],
    out: Annotated[str, typer.Argument(help="Output folder or URL.")],
    val_per_class: ValPerClass = 0,
    seed: Seed = 0,
    *,
    storage: dict[str, Any],
) -> PlanMaker:
    """iNaturalist 2018 from its COCO-style annotations (labels: category ids, sorted).

    Splits: train (train2018) and val (val2018). With --val-per-class N, val2018 becomes test
    (as long-tail papers report it) and val is N images per class held out from train2018."""
    check_val_per_class(val_per_class)

    def make_plan(scratch: str) -> SourcePlan:
        return list_sources.inat18(
            images, annotations, seed=seed, val_per_class=val_per_class, storage_options=storage
        )

    return make_plan


@prepare_command("synthetic")
def synthetic(
    out: Annotated[str, typer.Argument(help="Output folder or URL.")],
    classes: Annotated[int, typer.Option(min=2, help="Number of classes.")] = 10,
    n_max: Annotated[int, typer.Option(min=1, help="Train images of the largest class.")] = 200,
    imbalance: Annotated[float, typer.Option(help="Imbalance factor (>= 1).")] = 20.0,
    profile: Annotated[Profile, typer.Option(help="Long-tail profile.")] = Profile.exp,
    image_size: Annotated[int, typer.Option(min=8, max=1024, help="Image side in pixels.")] = 32,
    test_per_class: Annotated[int, typer.Option(min=0, help="Balanced test images.")] = 50,
    val_per_class: Annotated[
        int, typer.Option(min=0, help="Balanced val images per class, generated (0: no val).")
    ] = 0,
    image_format: Annotated[
        ImageFormat, typer.Option("--format", help="Encoding of the images.")
    ] = ImageFormat.jpeg,
    seed: Seed = 0,
    *,
    storage: dict[str, Any],
) -> PlanMaker:
    """A generated long-tailed image set with learnable classes (no download)."""

    def make_plan(scratch: str) -> SourcePlan:
        return sources.synthetic(
            classes=classes, n_max=n_max, imbalance=imbalance, profile=profile.value,
            image_size=image_size, test_per_class=test_per_class, seed=seed,
            fmt=image_format.value, val_per_class=val_per_class,
        )  # fmt: skip

    make_plan("")  # validate the options before touching OUT
    return make_plan
