"""kdcache check-data."""

from __future__ import annotations

import click
from kdcache.cli.options import (
    SectionedCommand,
    config_option,
    data_options,
    echo_json,
    library_errors,
    progress_option,
)

from kdcache.data import DataConfig


@click.command("check-data", cls=SectionedCommand)
@config_option
@data_options()
@click.option("--decode", is_flag=True, help="Decode every image fully, as the dump does (slower than headers).")
@click.option("--workers", type=click.IntRange(min=1), default=4, show_default=True, help="Threads scanning files.")
@progress_option("Show a progress bar")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@library_errors
def check_data_cmd(data, split, limit, subset_seed, val_fraction, decode, workers, progress, as_json):
    """List every unreadable or suspicious image of a dataset before a long dump.

    Reads every file's header (zero-byte, unreadable header, unsupported pixel mode, missing JPEG/PNG end
    marker); --decode also decodes each image exactly as dump-teacher does. Exits with status 1 when any
    file has a problem, after listing them all.

    \b
    Example:
      kdcache check-data --data folder:photos --decode
    """
    from kdcache.data._check import check_data

    ds = DataConfig(source=data, split=split, limit=limit, subset_seed=subset_seed, val_fraction=val_fraction).open()
    r = check_data(ds, decode=decode, workers=workers, progress=progress)
    if as_json:
        echo_json(r.to_dict())
    else:
        click.echo(f"checked    {r.checked} images of {r.source} [{r.split}] "
                   f"({'decoded' if r.decoded else 'headers'})")
        for p in r.problems:
            click.echo(f"  {p.describe()}")
    if not r.ok:
        raise click.ClickException(f"{len(r.problems)} of {r.checked} images are unreadable or suspicious "
                                   f"(first: {r.problems[0].describe()})")
    if not as_json:
        click.echo("ok")
