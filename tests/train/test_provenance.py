"""A run records ltray's own commit, never that of the folder the user runs in."""

import shutil
import subprocess
from pathlib import Path

import ltray
from ltray.train.provenance import NOT_A_CHECKOUT, ltray_commit

PACKAGE = Path(ltray.__file__).resolve().parent


def git(folder, *args):
    return subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_a_checkout_reports_its_commit_and_whether_it_is_dirty(tmp_path):
    repo = tmp_path / "checkout"
    shutil.copytree(PACKAGE, repo / "ltray", ignore=shutil.ignore_patterns("__pycache__"))
    git(tmp_path, "init", "-q", str(repo))
    git(repo, "add", "-A")
    git(repo, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "x")
    head = git(repo, "rev-parse", "HEAD")
    assert ltray_commit.__wrapped__(repo / "ltray") == head
    (repo / "ltray" / "config.py").write_text("# edited\n")
    assert ltray_commit.__wrapped__(repo / "ltray") == f"{head}-dirty"


def test_an_installed_copy_inside_someone_elses_repository_is_not_a_checkout(tmp_path):
    project = tmp_path / "their-project"
    site = project / "venv" / "site-packages"
    shutil.copytree(PACKAGE, site / "ltray", ignore=shutil.ignore_patterns("__pycache__"))
    git(tmp_path, "init", "-q", str(project))
    (project / "train.py").write_text("")
    git(project, "add", "train.py")
    git(project, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "theirs")
    assert ltray_commit.__wrapped__(site / "ltray") == NOT_A_CHECKOUT
    assert ltray_commit.__wrapped__(tmp_path / "nowhere" / "ltray") == NOT_A_CHECKOUT
