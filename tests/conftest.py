"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CIFAR_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    """The real CIFAR-10 JPEG archive in ../shared/data; tests using it skip where it is absent."""
    if not CIFAR_ARCHIVE.is_file():
        pytest.skip(f"needs the real CIFAR-10 archive at {CIFAR_ARCHIVE} (../shared/data)")
    return CIFAR_ARCHIVE


@pytest.fixture(scope="session")
def cifar_lt_100(cifar_archive, tmp_path_factory) -> str:
    """CIFAR-10-LT at IF 100 prepared from the real archive with ``ltray prepare cifar-lt``."""
    from typer.testing import CliRunner

    from ltray.cli import app

    out = tmp_path_factory.mktemp("cifar") / "cifar10-lt-100"
    result = CliRunner().invoke(
        app, ["prepare", "cifar-lt", str(cifar_archive), str(out), "--imbalance", "100"]
    )
    assert result.exit_code == 0, result.output
    return str(out)


@pytest.fixture(scope="session")
def cifar_lt_100_val50(cifar_archive, tmp_path_factory) -> str:
    """CIFAR-10-LT at IF 100 with a balanced val split of 50 images per class."""
    from typer.testing import CliRunner

    from ltray.cli import app

    out = tmp_path_factory.mktemp("cifar") / "cifar10-lt-100-val50"
    args = ["prepare", "cifar-lt", str(cifar_archive), str(out), "--imbalance", "100"]
    result = CliRunner().invoke(app, [*args, "--val-per-class", "50"])
    assert result.exit_code == 0, result.output
    return str(out)


S3_KEY = "LTRAYTESTKEYAKIA7Q3Z"
S3_SECRET = "ltray-test-secret-9f8e7d6c5b4a"


@pytest.fixture(scope="session")
def s3_options():
    """fsspec options for a real S3-compatible server (moto's) on 127.0.0.1."""
    s3fs = pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {
        "key": S3_KEY,
        "secret": S3_SECRET,
        "client_kwargs": {"endpoint_url": f"http://{host}:{port}"},
    }
    yield options
    s3fs.S3FileSystem.clear_instance_cache()
    server.stop()
