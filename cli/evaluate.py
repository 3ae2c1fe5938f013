"""kdcache evaluate."""

from __future__ import annotations

import click

from cli.options import config_option, data_options, echo_json, library_errors, runtime_options
from kdcache.data import DataConfig
from kdcache.train import evaluate_checkpoint


@click.command("evaluate")
@config_option
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@data_options(split_default="test")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@runtime_options
@library_errors
def evaluate_cmd(checkpoint, data, split, limit, subset_seed, batch_size, as_json, device, workers, progress):
    """Top-1 / top-5 accuracy of a checkpoint (a DeiT student averages its two heads)."""
    stats = evaluate_checkpoint(checkpoint, DataConfig(source=data, split=split, limit=limit,
                                                       subset_seed=subset_seed),
                                batch_size=batch_size, workers=workers, device=device)
    if as_json:
        echo_json(stats)
    else:
        click.echo(f"{checkpoint} on {data} [{split}]: top-1 {stats['top1']:.2f}%  top-5 {stats['top5']:.2f}%  "
                   f"({stats['images']} images)")
