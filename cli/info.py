"""kdcache info."""

from __future__ import annotations

import click
from kdcache.cli.options import config_option, echo_json, library_errors, storage_option

from kdcache._utils import human_bytes


@click.command("info")
@config_option
@click.argument("cache")
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@storage_option
@library_errors
def info_cmd(cache, as_json, storage_options):
    """Metadata, coverage (done fraction), size on disk and bytes per view of a cache."""
    from kdcache.cache._info import cache_info

    i = cache_info(cache, storage_options=storage_options)
    if as_json:
        echo_json(i)
        return
    t, d, v = i["teacher"], i["dataset"], i["view_spec"]
    agree = f"{100 * i['label_agreement']:.2f}%" if i["label_agreement"] is not None else "n/a"
    bpv = (f", {i['bytes_per_view']:.1f} B per view" if i["bytes_per_view"] is not None else
           ", unknown per view" if i["views_done"] else " (no view done yet)")
    sub = i.get("subset")
    subset = (f" (a {sub['limit']:,}-image subset, seed {sub['subset_seed']}: train with --limit {sub['limit']} "
              f"--subset-seed {sub['subset_seed']})" if sub else "")
    click.echo(
        f"cache        {i['path']} (format {i['kdcache_format']}, fingerprint {i['fingerprint'][:16]})\n"
        f"teacher      {t.get('name')} (weights sha256 {str(t.get('weights_sha256'))[:16]}, "
        f"input {t.get('input_size')})\n"
        f"dataset      {d.get('source')} [{d.get('split')}], {i['num_samples']} samples{subset}, "
        f"{i['num_classes']} classes\n"
        f"views        {i['num_views']} per sample, seed {i['seed']}, size {v.get('spec', {}).get('size')}\n"
        f"augment      {i['view_ops']}{' (preset ' + i['view_preset'] + ')' if i['view_preset'] else ''}\n"
        f"targets      {i['targets']}\n"
        + (f"embedding    {e['dim']} values a view, {e['dtype']}: {e['bytes_per_view']} B per view before "
           "compression\n" if (e := i.get("embedding")) else "") +
        f"coverage     {100 * i['done_fraction']:.1f}% done ({i['views_done']} views; per view index: "
        f"{i['views_done_per_view']})\n"
        f"on disk      {human_bytes(i['bytes_on_disk'])}{bpv}\n"
        f"agreement    {agree} (teacher argmax == label)"
        + "".join(f"\nadded        teacher {t['name']!r}: {t['teacher']} (weights sha256 "
                  f"{str(t['weights_sha256'])[:16]}), targets {t['targets']}"
                  f"{', embedding ' + str(t['embedding_dim']) if t['embedding_dim'] else ''}, "
                  f"{100 * t['done_fraction']:.1f}% of the views, agreement "
                  f"{'n/a' if t['label_agreement'] is None else format(100 * t['label_agreement'], '.2f') + '%'}, "
                  f"{human_bytes(t['bytes_on_disk'])}" for t in i["teachers"][1:]))
