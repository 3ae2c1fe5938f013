"""kdcache evaluate."""

from __future__ import annotations

import click
from kdcache.cli.options import (
    SectionedCommand,
    config_option,
    data_options,
    echo_json,
    eval_view_options,
    library_errors,
    runtime_options,
    section,
    view_overrides,
)

from kdcache._utils import parse_model_args
from kdcache.data import DataConfig


@click.command("evaluate", cls=SectionedCommand)
@config_option
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False), required=False)
@section(
    "Model (instead of a kdcache CHECKPOINT)",
    click.option("--model", "model_name", default=None,
                 help="Evaluate this model (any name 'kdcache models' accepts)."),
    click.option("--weights", type=click.Path(exists=True), default=None,
                 help="Its weights: a bare or foreign state dict, a training or kdcache checkpoint, a .safetensors "
                      "file, or a timm/Hugging Face checkpoint directory."),
    click.option("--model-arg", "model_args", multiple=True, help="KEY=VALUE for its constructor (repeatable)."),
    click.option("--random-init", is_flag=True, help="Evaluate it as initialised (seeded), without weights."),
)
@eval_view_options
@data_options(from_cache=True, recorded_by="checkpoint")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--ema", is_flag=True, help="Evaluate the model EMA the CHECKPOINT carries (train-student --ema-decay).")
@click.option("--knn", type=click.IntRange(min=0), default=0, show_default=True, metavar="K",
              help="Also score the model's pooled embeddings by weighted k-nearest-neighbour vote (cosine, K "
                   "neighbours; 20 is usual), with the data's train split as the memory bank: compares encoders "
                   "without a class head, or a student distilled from one.")
@runtime_options
@library_errors
def evaluate_cmd(checkpoint, model_name, weights, model_args, random_init, data, split, limit, subset_seed,
                 val_fraction, batch_size, as_json, ema, knn, device, workers, progress, **view_kw):
    """Top-1 / top-5 accuracy of a kdcache CHECKPOINT (on its own eval views), or of any --model with
    --weights from any file (on the model's default eval view; the eval view options override it).
    A DeiT student averages its two heads.

    A CHECKPOINT is evaluated on the data its run recorded, on the run's test split (as its test.json),
    unless the data options say otherwise; data whose class names differ from the run's is refused.
    --model needs --data.

    \b
    Examples:
      kdcache evaluate runs/deit/best.pt
      kdcache evaluate --model cifar_resnet56 --weights resnet56-4bfd9763.th --data hdf5:cifar10.h5
    """
    from kdcache._teacher_spec import TeacherSpec
    from kdcache.train import evaluate_checkpoint, evaluate_model

    view = view_overrides(view_kw)
    model_opts = [o for o, v in (("--weights", weights), ("--model-arg", model_args), ("--random-init", random_init))
                  if v] + ["--" + k.replace("_", "-") for k in view]
    if checkpoint and model_name:
        raise click.UsageError("give a kdcache CHECKPOINT or --model NAME --weights FILE, not both")
    if not checkpoint and not model_name:
        raise click.UsageError("give a kdcache CHECKPOINT, or --model NAME --weights FILE")
    if ema and not checkpoint:
        raise click.UsageError("--ema evaluates a kdcache CHECKPOINT's model EMA")
    if checkpoint and model_opts:
        raise click.UsageError(f"{', '.join(model_opts)} only apply with --model (a checkpoint brings its own)")
    if model_name and not weights and not random_init:
        raise click.UsageError("--model needs --weights FILE (or --random-init to evaluate it untrained)")
    if weights and random_init:
        raise click.UsageError("--weights and --random-init exclude each other")
    given = dict(source=data, split=split, limit=limit, subset_seed=subset_seed, val_fraction=val_fraction)
    if checkpoint:
        what = checkpoint
        stats = evaluate_checkpoint(checkpoint, given, batch_size=batch_size, workers=workers, device=device, ema=ema,
                                    knn=knn)
    else:
        if data is None:
            raise click.UsageError("--model needs --data (the dataset to score it on)")
        dc = DataConfig(**{k: v for k, v in given.items() if v is not None} | {"split": split or "test"})
        what = f"{model_name} ({weights or 'random init'})"
        stats = evaluate_model(TeacherSpec(name=model_name, weights=weights, kwargs=parse_model_args(model_args),
                                           random_init=random_init),
                               dc, view=view, batch_size=batch_size, workers=workers, device=device, knn=knn)
    if as_json:
        echo_json(stats)
    else:
        click.echo(f"{what} on {stats['data']} [{stats['split']}]: top-1 {stats['top1']:.2f}%  top-5 {stats['top5']:.2f}%  "
                   f"({stats['images']} images)")
        if knn:
            click.echo(f"k-NN top-1 {stats['knn_top1']:.2f}% (k = {knn}, cosine, weighted vote; memory bank: the train "
                       f"split, {stats['knn_bank_images']} images; embedding dim {stats['knn_dim']})")
