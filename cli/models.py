"""kdcache models."""

from __future__ import annotations

import click
from kdcache.cli.options import config_option, echo_json, library_errors


@click.command("models")
@config_option
@click.option("--flops", is_flag=True, help="Build every model to count parameters and GFLOPs (slow).")
@click.option("--input-size", type=click.IntRange(min=8), default=None,
              help="Count FLOPs at this input size instead of each model's own.")
@click.option("--num-classes", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--tag", default=None, help="Only models with this tag (student, teacher, test).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@library_errors
def models_cmd(flops, input_size, num_classes, tag, as_json):
    """List every registered model; with --flops also its parameters and forward GFLOPs.

    FLOPs come from torch.utils.flop_counter on one image; counting them builds every model.

    Any torchvision classification model (resnet18, mobilenet_v2, vit_b_16, ...), timm:NAME (timm extra)
    and hf:DIR_OR_HUB_ID (a transformers image classifier, hf extra) also work wherever a model name
    is accepted.
    """
    from kdcache.models import list_models
    from kdcache.models._summary import format_table, model_table

    if input_size is not None and not flops:
        raise click.UsageError("--input-size needs --flops")
    rows = model_table(list_models(tag), input_size=input_size, num_classes=num_classes, flops=flops)
    if as_json:
        echo_json(rows)
    else:
        click.echo(format_table(rows))
