"""`hessfree data ...`: dataset management commands (registered by cli/main.py)."""

from __future__ import annotations

import click

from hessfree.cli.errors import reported
from hessfree.data.fetch import CATALOG, FetchedFile, fetch_dataset


def _describe(item: FetchedFile) -> str:
    if item.source == "local copy":
        return f"{item.path}: {item.action.value} ({item.verified_by} verified, {item.n_bytes} bytes)"
    return (
        f"{item.path}: {item.action.value} from {item.source} "
        f"({item.verified_by} verified, {item.n_bytes} bytes)"
    )


@click.group("data")
def data_group() -> None:
    """Manage datasets."""


@data_group.command("fetch")
@click.argument("name", type=click.Choice([d.value for d in CATALOG]))
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, writable=True),
    help="Directory to put the four IDX .gz files in (created if missing).",
)
@click.option(
    "--mirror",
    "mirrors",
    multiple=True,
    metavar="URL",
    help="Base URL to download from instead of the usual mirrors (repeatable, tried in order).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.0, min_open=True, max=3600.0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for each connection.",
)
def fetch_command(name: str, data_dir: str, mirrors: tuple[str, ...], timeout: float) -> None:
    """Download and verify the MNIST or Fashion-MNIST IDX files into DATA_DIR.

    Files already present with the right checksum are left alone; others are
    downloaded to a temporary file, checked against the published MD5 and renamed
    into place.
    """
    with reported():
        fetch_dataset(
            name,
            data_dir,
            base_urls=mirrors or None,
            timeout=timeout,
            progress=lambda item: click.echo(_describe(item)),
        )
