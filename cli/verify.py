"""kdcache verify."""

from __future__ import annotations

import click
from kdcache.cli.options import (
    config_option,
    data_options,
    echo_json,
    library_errors,
    random_init_options,
    storage_option,
)

from kdcache._utils import parse_model_args


@click.command("verify")
@config_option
@click.argument("cache")
@click.option("--teacher", default=None, help="Teacher model name [the cache's].")
@click.option("--teacher-weights", type=click.Path(exists=True), default=None,
              help="Teacher weights (file or timm/Hugging Face checkpoint directory) [the file the cache records].")
@click.option("--teacher-arg", "teacher_args", multiple=True,
              help="KEY=VALUE passed to the teacher's constructor (repeatable) [the cache's].")
@random_init_options[0]
@random_init_options[1]
@data_options(from_cache=True)
@click.option("--name", default="main", show_default=True,
              help="Which of the cache's teachers to check: 'main' (the dump's) or one added with add-teacher.")
@click.option("--samples", type=click.IntRange(min=1), default=64, show_default=True,
              help="Completed (sample, view) pairs to replay through the teacher.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the choice of pairs.")
@click.option("--atol", type=click.FloatRange(min=0), default=None,
              help="Largest allowed |teacher - cached| logit difference [max(1e-2, 2^-10 max|logit|)].")
@click.option("--allow-incomplete", is_flag=True, help="Do not fail on a cache with views not yet done.")
@click.option("--integrity-only", is_flag=True,
              help="Only check that every chunk of every done unit exists, passes its checksum and is finite "
                   "(fast; no teacher or data needed).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N.")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@library_errors
def verify_cmd(cache, teacher, teacher_weights, teacher_args, random_init, init_seed, data, split, limit, subset_seed,
               val_fraction, name, samples, seed, atol, allow_incomplete, integrity_only, batch_size, device,
               storage_options, as_json):
    """Check a cache against its teacher: replay sampled views from their recorded parameters.

    Rebuilds each sampled view from the parameters stored in the cache, runs the teacher on it and
    compares with the cached targets. First, an integrity pass checks every chunk of every done unit
    (exists, checksum, no NaN/Inf) and names damaged units (array, block, view); it also checks
    coverage. Exits with status 1 when anything fails. --integrity-only runs just the integrity pass.

    \b
    Example:
      kdcache verify cifar-r56.zarr --samples 256
      kdcache verify cifar-r56.zarr --name r20     # a teacher added with add-teacher

    The teacher and the data are the ones recorded in the cache (its weights file where the dump found it);
    --teacher, --teacher-weights, --teacher-arg and --data, --split, --limit, --subset-seed override them.
    """
    from kdcache.engine._verify import verify_cache, verify_integrity

    if integrity_only:
        r = verify_integrity(cache, storage_options=storage_options)
        if as_json:
            echo_json(r)
        else:
            sums = "yes" if r["checksums"] else "no (an older cache: only chunks that fail to decode are found)"
            click.echo(f"cache      {r['path']} (fingerprint {r['fingerprint'][:16]})\n"
                       f"checksums  {sums}\n"
                       f"checked    {r['chunks_checked']} chunks, {r['units_done']} done units")
            _echo_damage(r)
        if not r["ok"]:
            raise click.ClickException("integrity check failed: " + "; ".join(r["failures"]))
        if not as_json:
            click.echo("ok")
        return
    given = dict(name=teacher, weights=teacher_weights, kwargs=parse_model_args(teacher_args) or None,
                 random_init=random_init or None, init_seed=init_seed if random_init or init_seed else None)
    r = verify_cache(cache, given,
                     dict(source=data, split=split, limit=limit, subset_seed=subset_seed, val_fraction=val_fraction),
                     samples=samples, seed=seed, batch_size=batch_size, device=device, atol=atol,
                     allow_incomplete=allow_incomplete, storage_options=storage_options, name=name)
    if as_json:
        echo_json(r)
    else:
        diff = "n/a" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.4g} (atol {r['atol']:.4g})"
        agree = "n/a" if r["argmax_agreement"] is None else f"{100 * r['argmax_agreement']:.1f}%"
        click.echo(f"cache      {r['path']} (fingerprint {r['fingerprint'][:16]})\n"
                   f"teacher    {r['teacher']}, targets {r['targets']}\n"
                   f"checked    {r['samples_checked']} views replayed from recorded parameters\n"
                   f"max diff   {diff}\nargmax     {agree} agree\n"
                   + (f"embedding  {e['dim']} values ({e['dtype']}): min cosine {e['min_cosine']:.6f}, max diff "
                      f"{e['max_abs_diff']:.4g}, {e['over_tolerance']} views beyond tolerance\n"
                      if (e := r.get("embedding")) else "") +
                   f"NaN/Inf    {r['nonfinite_targets']} in cached targets\n"
                   f"coverage   {100 * r['coverage']:.2f}% done")
        sw = r["software"]
        if sw["differs"]:
            click.echo("software   replayed with " + ", ".join(f"{k} {sw['replay'][k]} (cache made with "
                                                               f"{sw['dump'][k]})" for k in sw["differs"])
                       + f": replay drifts by up to {diff}")
        _echo_damage(r)
    if not r["ok"]:
        raise click.ClickException("verification failed: " + "; ".join(r["failures"]))
    if not as_json:
        click.echo("ok")


def _echo_damage(r: dict) -> None:
    click.echo(f"damaged    {len(r['damaged_units'])} units, {len(r['damage'])} chunks")
    for d in r["damage"]:
        click.echo(f"  {d['message']}")
