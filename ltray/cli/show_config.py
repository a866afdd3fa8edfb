"""``ltray config JOB [--set ...]``: the resolved job, every key with its value, its default and
what it means, as YAML a user can copy into a job file."""

from __future__ import annotations

import json
from typing import Any

import typer
import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ltray.cli.console import JobFile, Overrides, exit_on_error
from ltray.secrets import MASK, is_secret_key, redact_url


def config(
    job_file: JobFile,
    overrides: Overrides = None,
) -> None:
    """Print the resolved job: every key, its value, its default and a one-line description."""
    from ltray.config import load_job

    with exit_on_error():
        job = load_job(job_file, overrides or [])
    typer.echo(f"# {job_file} with its overrides; auto values are resolved where it runs")
    typer.echo("\n".join(describe(job)))


def _scalar(value: Any) -> str:
    """One value as YAML flow text (lists and dicts on one line)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(json.loads(json.dumps(value)), default_flow_style=True, width=1 << 16)
    return text.strip().removesuffix("\n...").strip()


def _default(field: Any) -> Any:
    if field.default_factory is not None:
        return field.default_factory()
    return field.default


def describe(model: BaseModel, indent: int = 0) -> list[str]:
    """Lines of YAML for ``model``: sections as mappings, each key with its description, its
    default where the value differs from it, and secrets masked."""
    lines: list[str] = []
    pad = "  " * indent
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            note = f"  # {field.description}" if field.description else ""
            lines.append(f"{pad}{name}:{note}")
            lines.extend(describe(value, indent + 1))
            continue
        shown = MASK if is_secret_key(name) and value else redact_url(_scalar(value))
        notes = [field.description] if field.description else []
        default = _default(field)
        if default is PydanticUndefined:
            notes.append("required")
        elif default != value and not (is_secret_key(name) and value):
            notes.append(f"default: {_scalar(default)}")
        elif default != value:
            notes.append("set")
        comment = f"  # {'; '.join(notes)}" if notes else ""
        lines.append(f"{pad}{name}: {shown}{comment}")
    return lines
