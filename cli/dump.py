"""kdcache dump-teacher."""

from __future__ import annotations

import click
from kdcache.cli.options import (
    SectionedCommand,
    config_option,
    data_options,
    echo_json,
    library_errors,
    runtime_options,
    section,
    storage_option,
    target_options,
    targets_of,
    teacher_options,
    teacher_spec,
    view_options,
    view_overrides,
)

from kdcache._utils import human_bytes
from kdcache.data import DataConfig


@click.command("dump-teacher", cls=SectionedCommand)
@config_option
@data_options()
@section(
    "Teacher",
    *teacher_options,
)
@section(
    "Cache",
    click.option("--out", required=True, help="Cache path (a directory ending in .zarr, or an fsspec URL)."),
    click.option("--views", type=click.IntRange(min=1), default=None,
                 help="Augmented views per sample [4 for a new cache]."),
    click.option("--add-views", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Compute this many more views for an existing cache."),
    click.option("--seed", type=int, default=0, show_default=True, help="Base seed of every view's parameters."),
    *target_options,
    click.option("--block-size", type=click.IntRange(min=1), default=1024, show_default=True,
                 help="Samples per chunk (the unit of writing, resuming and reading)."),
    storage_option,
    click.option("--shard", default=None, metavar="I/N",
                 help="Compute only blocks b with b % N == I: N independent jobs (started in any order, killed and "
                      "rerun at will) fill the same store as one process."),
)
@view_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@runtime_options
@library_errors
def dump_teacher_cmd(data, split, limit, subset_seed, val_fraction, teacher, teacher_weights, teacher_args,
                     random_init, init_seed, out, views, add_views, seed, targets, embed, embed_dtype, batch_size,
                     block_size, amp, storage_options, shard, as_json, device, workers, progress, **view_kw):
    """Run a teacher once over V augmented views of a dataset and cache its outputs.

    Each view's augmentation parameters are recorded beside the teacher's logits, so
    students replay the exact view. Rerunning the same command resumes an interrupted dump.
    A kdcache teacher checkpoint that records its training views sets the view size,
    normalisation and interpolation (flags override them); the command prints which it used.

    \b
    Example:
      kdcache dump-teacher --data hdf5:cifar10.h5 --teacher cifar_resnet56 \\
          --teacher-weights resnet56.th --views 8 --out cifar-r56.zarr
      # logits and pooled embeddings (int8) of every view
      kdcache dump-teacher ... --embed pooled --embed-dtype int8
    """
    from kdcache.engine import DumpConfig, dump_teacher

    targets = targets_of(targets, embed, embed_dtype)
    cfg = DumpConfig(
        data=DataConfig(source=data, split=split, limit=limit, subset_seed=subset_seed, val_fraction=val_fraction),
        out=out, teacher=teacher_spec(teacher, teacher_weights, teacher_args, random_init, init_seed),
        views=views, add_views=add_views,
        seed=seed, targets=targets, view=view_overrides(view_kw), batch_size=batch_size, workers=workers,
        block_size=block_size, device=device, amp=amp, storage_options=storage_options,
        shard=shard)
    s = dump_teacher(cfg, progress=progress, log=lambda m: click.echo(m, err=as_json))
    if s.rank != 0:
        return
    if as_json:
        echo_json(s.to_dict())
        return
    agree = f"{100 * s.label_agreement:.2f}%" if s.label_agreement is not None else "n/a"
    speed = (f"speed      {s.images_per_second:.1f} views/s ({s.seconds:.1f} s)" if s.views_computed else
             "nothing to do: every view this command covers was already cached (--add-views N computes more)")
    click.echo(f"cache      {s.out}\n"
               f"samples    {s.num_samples}\nviews      {s.num_views} (computed now: {s.views_computed})\n"
               f"classes    {s.num_classes}\ntargets    {s.targets}\n"
               f"on disk    {human_bytes(s.bytes_on_disk)}\ncoverage   {100 * s.done_fraction:.1f}% done\n"
               f"agreement  {agree} (teacher argmax == label, over cached views)\n"
               + speed)
