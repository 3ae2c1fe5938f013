"""kdcache plot."""

from __future__ import annotations

import click
from kdcache.cli.options import config_option, echo_json, library_errors

from kdcache._report import plot_runs, read_metrics, summarize_run, summary_table


@click.command("plot")
@config_option
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", default="curves.png", show_default=True, type=click.Path(dir_okay=False),
              help="PNG file to draw the curves into.")
@click.option("--metric", default="val/top1", show_default=True,
              help="Metric of the right-hand panel (a metrics.jsonl key, e.g. val/loss, train/teacher_agreement; "
                   "fractions such as the agreement in %).")
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON instead of a table.")
@library_errors
def plot_cmd(run_dirs, out, metric, as_json):
    """Draw the curves of one or more runs (their metrics.jsonl) into a PNG and print their final and best
    figures side by side.

    The left panel is the training loss on the labels (cross-entropy), which distilled and labels-only runs
    share; a distilled run's total loss adds its KD term (x T^2) and is not comparable. The right panel is
    --metric. A run keeps one colour in both panels and the legend names every run.

    \b
    Example:
      kdcache plot runs/scratch runs/cached runs/online --out curves.png
    """
    runs = {d: read_metrics(d) for d in run_dirs}
    summaries = [summarize_run(d, rows) for d, rows in runs.items()]
    path = plot_runs(run_dirs, out, metric=metric, runs=runs)
    if as_json:
        echo_json({"plot": str(path), "runs": summaries})
        return
    click.echo(summary_table(summaries))
    click.echo(f"curves: {path}")
