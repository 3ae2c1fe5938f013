"""kdcache quickstart."""

from __future__ import annotations

import json
import os

import click
from kdcache.cli.options import config_option, library_errors, progress_option


@click.command("quickstart")
@config_option
@click.option("--out", default="kdcache-quickstart", show_default=True, type=click.Path(file_okay=False),
              help="Directory for the teacher, cache and student runs.")
@click.option("--teacher-epochs", type=click.IntRange(min=1), default=15, show_default=True)
@click.option("--student-epochs", type=click.IntRange(min=1), default=15, show_default=True)
@click.option("--views", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use a subset of the training split.")
@click.option("--workers", type=click.IntRange(min=0), default=1, show_default=True,
              help="DataLoader workers building views (1 overlaps them with training on 2 cores).")
@click.option("--device", default="auto", show_default=True)
@progress_option()
@library_errors
def quickstart_cmd(out, teacher_epochs, student_epochs, views, limit, workers, device, progress):
    """Offline demo on scikit-learn's digits: teacher, cache, scratch vs distilled student.

    Trains a small CNN teacher, dumps it over several augmented views, trains a smaller student
    from labels only and the same student from the cache, and prints their test accuracy.
    """
    from kdcache._quickstart import QuickstartConfig, format_table, run_quickstart

    cfg = QuickstartConfig(out=out, teacher_epochs=teacher_epochs, student_epochs=student_epochs, views=views,
                           limit=limit, workers=workers, device=device)
    result = run_quickstart(cfg, progress=progress, log=click.echo)
    table = format_table(result)
    with open(os.path.join(out, "quickstart.json"), "w") as f:
        json.dump(result, f, indent=2, default=str)
    click.echo("\n" + table + f"\n\nartefacts in {os.path.abspath(out)} (results: quickstart.json)")
