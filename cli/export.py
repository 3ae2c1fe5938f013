"""kdcache export."""

from __future__ import annotations

import click
from kdcache.cli.options import config_option, echo_json, library_errors, progress_option, storage_option

from kdcache._utils import human_bytes
from kdcache.cache._hdf5_options import COMPRESSIONS


@click.command("export")
@config_option
@click.argument("cache")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="gzip", show_default=True,
              help="HDF5 filter: gzip (smaller, with byte shuffle) or lzf (faster).")
@storage_option
@progress_option("Show a progress bar")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@library_errors
def export_cmd(cache, out, overwrite, compression, storage_options, progress, as_json):
    """Write a cache to one HDF5 file (same arrays, shapes, dtypes and chunks; attributes as JSON).

    The file is written under a temporary name and renamed at the end, so OUT is never half-written.

    \b
    Example:
      kdcache export cifar-r56.zarr cifar-r56.h5
    """
    from kdcache.cache._export import export_hdf5

    s = export_hdf5(cache, out, storage_options=storage_options, overwrite=overwrite,
                    compression=compression, progress=progress)
    if as_json:
        echo_json(s)
    else:
        click.echo(f"wrote {s['out']} ({len(s['arrays'])} arrays, {human_bytes(s['bytes'])}, "
                   f"{s['seconds']:.1f} s)")
