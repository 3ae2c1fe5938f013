"""kdcache add-teacher."""

from __future__ import annotations

import click
from kdcache.cli.options import (
    SectionedCommand,
    config_option,
    echo_json,
    library_errors,
    runtime_options,
    section,
    storage_option,
    target_options,
    targets_of,
    teacher_options,
    teacher_spec,
)

from kdcache._utils import human_bytes
from kdcache.data import DataConfig


@click.command("add-teacher", cls=SectionedCommand)
@config_option
@click.argument("cache")
@click.option("--name", required=True,
              help="The teacher's name in the cache (letters, digits, _ . -); 'main' is the cache's own teacher.")
@section("Teacher", *teacher_options)
@section("Targets", *target_options)
@section(
    "Data",
    click.option("--data", default=None, help="The cache's data, if not where the cache records it."),
    storage_option,
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@runtime_options
@library_errors
def add_teacher_cmd(cache, name, teacher, teacher_weights, teacher_args, random_init, init_seed, amp, batch_size,
                    targets, embed, embed_dtype, data, storage_options, as_json, device, workers, progress):
    """Add a teacher's targets to CACHE over the views it already recorded.

    No view is drawn anew: every cached view is replayed from its recorded parameters, so all of a
    cache's teachers saw the same pixels. The targets go to CACHE/teachers/NAME, with their own
    resume, damage checks and repair; the cache itself is not rewritten, so students may read it
    meanwhile. Rerun the same command to resume, or after `dump-teacher --add-views` to cover new views.

    \b
    Example:
      kdcache add-teacher c.zarr --name r20 --teacher cifar_resnet20 --teacher-weights r20.th
      kdcache add-teacher c.zarr --name dino --teacher timm:vit_small_patch16_224.dino \\
          --targets none --embed pooled --embed-dtype int8
      kdcache train-student --cache c.zarr --teachers main,r20 --student resnet8 --out runs/ens
    """
    from kdcache.engine import AddTeacherConfig, add_teacher

    cfg = AddTeacherConfig(
        cache=cache, name=name, teacher=teacher_spec(teacher, teacher_weights, teacher_args, random_init, init_seed),
        targets=targets_of(targets, embed, embed_dtype),
        data=DataConfig(source=data) if data else None, batch_size=batch_size, workers=workers, device=device,
        amp=amp, storage_options=storage_options)
    s = add_teacher(cfg, progress=progress, log=lambda m: click.echo(m, err=as_json))
    if s.rank != 0:
        return  # under torchrun, rank 0 reports
    if as_json:
        echo_json(s.to_dict())
        return
    agree = f"{100 * s.label_agreement:.2f}%" if s.label_agreement is not None else "n/a"
    click.echo(f"teacher    {name} ({s.out})\nviews      {s.num_views} per sample (computed now: {s.views_computed})\n"
               f"targets    {s.targets}\non disk    {human_bytes(s.bytes_on_disk)}\n"
               f"coverage   {100 * s.done_fraction:.1f}% done\nagreement  {agree} (teacher argmax == label)\n"
               + (f"speed      {s.images_per_second:.1f} views/s ({s.seconds:.1f} s)" if s.views_computed else
                  "nothing to do: this teacher covers every done view of the cache"))
