"""kdcache dump-teacher."""

from __future__ import annotations

import click
from kdcache.cli.options import (
    SectionedCommand,
    config_option,
    data_options,
    echo_json,
    library_errors,
    random_init_options,
    runtime_options,
    section,
    view_options,
    view_overrides,
)

from kdcache._utils import human_bytes, parse_key_values, parse_model_args
from kdcache.data import DataConfig
from kdcache.engine import DumpConfig, TeacherSpec, dump_teacher


@click.command("dump-teacher", cls=SectionedCommand)
@config_option
@data_options()
@section(
    "Teacher",
    click.option("--teacher", default=None,
                 help="Teacher model name (registered, torchvision, timm:NAME, hf:DIR_OR_HUB_ID, python:mod:fn)."),
    click.option("--teacher-weights", type=click.Path(exists=True), default=None,
                 help="Teacher weights: a kdcache or torch checkpoint, a state dict, a .safetensors file, or a "
                      "timm/Hugging Face checkpoint directory (torch files load with weights_only=True)."),
    click.option("--teacher-arg", "teacher_args", multiple=True,
                 help="KEY=VALUE passed to the teacher's constructor (repeatable), e.g. pretrained=true."),
    *random_init_options,
    click.option("--amp/--no-amp", default=False, show_default=True, help="Mixed precision on CUDA."),
    click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True),
)
@section(
    "Cache",
    click.option("--out", required=True, help="Cache path (a directory ending in .zarr, or an fsspec URL)."),
    click.option("--views", type=click.IntRange(min=1), default=None,
                 help="Augmented views per sample [4 for a new cache]."),
    click.option("--add-views", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Compute this many more views for an existing cache."),
    click.option("--seed", type=int, default=0, show_default=True, help="Base seed of every view's parameters."),
    click.option("--targets", default="full", show_default=True,
                 help="The teacher's logits: full | topk:K (the top K, quantised) | none (with --embed only)."),
    click.option("--embed", type=click.Choice(["pooled"]), default=None,
                 help="Also store the teacher's pooled embedding of every view: its pre-logits features, as timm's "
                      "forward_head(pre_logits=True) gives them (the input of a torchvision or Hugging Face "
                      "classifier; a python: model's forward_embedding(x))."),
    click.option("--embed-dtype", type=click.Choice(["float16", "int8"]), default="float16", show_default=True,
                 help="How the embedding is stored: 2 bytes a value, or 1 plus a 4-byte scale per vector."),
    click.option("--block-size", type=click.IntRange(min=1), default=1024, show_default=True,
                 help="Samples per chunk (the unit of writing, resuming and reading)."),
    click.option("--storage-option", "storage_options", multiple=True,
                 help="KEY=VALUE for fsspec URLs (repeatable)."),
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
    if embed and "+" in targets:
        raise click.UsageError(f"--targets {targets} names an embedding already; drop --embed")
    if embed:
        targets = f"{targets}+{embed}:{embed_dtype}"
    cfg = DumpConfig(
        data=DataConfig(source=data, split=split, limit=limit, subset_seed=subset_seed, val_fraction=val_fraction),
        out=out, teacher=TeacherSpec(name=teacher, weights=teacher_weights, kwargs=parse_model_args(teacher_args),
                                     random_init=random_init, init_seed=init_seed),
        views=views, add_views=add_views,
        seed=seed, targets=targets, view=view_overrides(view_kw), batch_size=batch_size, workers=workers,
        block_size=block_size, device=device, amp=amp, storage_options=parse_key_values(storage_options) or None,
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
