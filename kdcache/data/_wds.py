"""``wds:PATTERN``: webdataset tar shards, read at random through an index of member offsets.

``PATTERN`` names the shards: a brace range as webdataset writes them (``data/train-{000000..000009}.tar``),
a glob (``data/train-*.tar``) or one file; ``{split}`` in it is replaced by the split
(``wds:data/{split}-{0000..0003}.tar``), otherwise the shards are the ``train`` split. Shards are
uncompressed tar files in webdataset's layout: each sample is the consecutive members ``KEY.EXT`` sharing
a ``KEY`` (webdataset's ``__key__``: the member path up to the first dot of its file name), here an image
(``jpg``, ``jpeg``, ``png``, ``webp``) and a ``cls`` member holding the integer label as text.

Opening scans every shard's tar headers once (seeking past the data; only ``cls`` members are read) and
keeps, per sample, the shard and the byte range of its image: the index. Each shard's index is saved beside
it as ``SHARD.kdcache-index.json`` (when the folder is writable), stamped with the shard's size and
modification time, so later opens read it instead of rescanning; a changed shard is scanned again. Reading an image is then one
seek and one read in its shard, in any order and in any DataLoader worker (the index travels with the
dataset; file handles are opened per read). Keys are the ``__key__`` values, unique over all shards;
classes are ``"0"``..``"C-1"`` (a stray label far past the others is refused, as for ``hdf5:``). Images
decode like ``folder:`` images (:mod:`kdcache.data._decode`).
"""

from __future__ import annotations

import glob
import io
import json
import os
import tarfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcache.data._dataset import ImageDataset
from kdcache.data._decode import DECODER, decode_image_bytes, image_header_size
from kdcache.errors import DataError, DataNotFoundError

__all__ = ["IMAGE_MEMBER_EXTENSIONS", "INDEX_SUFFIX", "WebDataset", "expand_shards"]

IMAGE_MEMBER_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
INDEX_SUFFIX = ".kdcache-index.json"  # a shard's saved index: SHARD + INDEX_SUFFIX


def expand_shards(pattern: str, split: str, source: str) -> list[Path]:
    """The shard files ``pattern`` names for ``split``, in order."""
    if "{split}" in pattern:
        pattern = pattern.replace("{split}", split)
    elif split != "train":
        raise DataError(f"{source} has no split {split!r}: without '{{split}}' in the pattern its shards are the "
                        "'train' split only; available splits: train")
    try:
        from braceexpand import braceexpand

        names = list(braceexpand(pattern))
    except ImportError:  # webdataset depends on braceexpand; without it only globs and single files
        names = [pattern]
    except Exception as e:  # noqa: BLE001 - braceexpand raises on unbalanced braces
        raise DataError(f"{source}: cannot expand the shard pattern {pattern!r}: {e}") from e
    files: list[Path] = []
    for name in names:
        name = os.path.expanduser(name)
        matched = sorted(m for m in glob.glob(name) if not m.endswith(INDEX_SUFFIX)) if glob.has_magic(name) \
            else [name]
        if not matched or not all(os.path.isfile(m) for m in matched):
            missing = next((m for m in matched if not os.path.isfile(m)), name)
            raise DataNotFoundError(f"webdataset shard not found: {missing}; check the pattern in {source!r}")
        files.extend(Path(m) for m in matched)
    if len(set(files)) != len(files):
        raise DataError(f"{source}: the pattern names a shard more than once")
    return files


def _split_member(name: str) -> tuple[str, str] | None:
    """webdataset's rule: ``dir/abc.seg.jpg`` -> (``dir/abc``, ``seg.jpg``); None for a name without a dot."""
    d, base = os.path.split(name)
    if "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return (f"{d}/{stem}" if d else stem), ext


def _scan_shard(shard: Path, source: str) -> list[tuple[str, int, int, int]]:
    """(key, label, image offset, image size) per sample of one shard, in shard order."""
    out: list[tuple[str, int, int, int]] = []
    current: dict[str, Any] | None = None

    def finish(sample: dict[str, Any] | None) -> None:
        if sample is None:
            return
        where = f"{shard}: sample {sample['key']!r}"
        if "image" not in sample:
            raise DataError(f"{where} has no image member ({', '.join('.' + e for e in IMAGE_MEMBER_EXTENSIONS)}; "
                            f"it has {', '.join('.' + e for e in sample['exts'])}); every sample needs one")
        if "label" not in sample:
            raise DataError(f"{where} has no .cls member; every sample needs its integer label in KEY.cls")
        out.append((sample["key"], sample["label"], *sample["image"]))

    try:
        tf = tarfile.open(shard, "r:")  # uncompressed: members are byte ranges of the file
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{shard} is not an uncompressed tar file ({e}); webdataset shards are plain .tar "
                        "files") from e
    with tf:
        try:
            for m in tf:
                if not m.isfile():
                    continue
                parts = _split_member(m.name)
                if parts is None:
                    raise DataError(f"{shard}: member {m.name!r} has no extension, so no sample key; webdataset "
                                    "names members KEY.EXT (e.g. 000123.jpg, 000123.cls)")
                key, ext = parts
                if key.startswith("__") or key.startswith("."):
                    continue  # webdataset's own metadata members
                if current is None or current["key"] != key:
                    finish(current)
                    current = {"key": key, "exts": []}
                current["exts"].append(ext)
                ext_l = ext.lower()
                if ext_l in IMAGE_MEMBER_EXTENSIONS and "image" not in current:
                    current["image"] = (int(m.offset_data), int(m.size))
                elif ext_l == "cls":
                    raw = tf.extractfile(m).read().decode("utf-8", "replace").strip()
                    try:
                        current["label"] = int(raw)
                    except ValueError:
                        raise DataError(f"{shard}: {m.name} holds {raw[:40]!r}, not an integer label") from None
        except tarfile.TarError as e:
            raise DataError(f"{shard} is truncated or damaged ({e}); rewrite the shard") from e
    finish(current)
    if not out:
        raise DataError(f"{shard} holds no samples; remove it from the pattern in {source!r}")
    return out


_INDEX_VERSION = 1


def _shard_index(shard: Path, source: str) -> list[tuple[str, int, int, int]]:
    """:func:`_scan_shard`, through the index file beside the shard when it is current."""
    index = shard.with_name(shard.name + INDEX_SUFFIX)
    st = shard.stat()
    stamp = [int(st.st_size), int(st.st_mtime_ns)]
    try:
        d = json.loads(index.read_text())
        if d.get("version") == _INDEX_VERSION and d.get("stamp") == stamp:
            return [(str(k), int(y), int(o), int(n)) for k, y, o, n in d["samples"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent, unreadable or stale: scan
    rows = _scan_shard(shard, source)
    tmp = index.with_name(f"{index.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"version": _INDEX_VERSION, "stamp": stamp, "samples": rows}))
        os.replace(tmp, index)  # atomic: concurrent openers read the old file or the new one
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only folder: keep the index in memory only
    return rows


class WebDataset(ImageDataset):
    """One split of a set of webdataset tar shards (see the module docstring)."""

    def __init__(self, *, pattern: str, split: str = "train", source: str | None = None) -> None:
        source = source if source is not None else f"wds:{pattern}"
        shards = expand_shards(pattern, split, source)
        keys: list[str] = []
        labels: list[int] = []
        shard_of: list[int] = []
        ranges: list[tuple[int, int]] = []
        for s, shard in enumerate(shards):
            for key, label, offset, size in _shard_index(shard, source):
                keys.append(key)
                labels.append(label)
                shard_of.append(s)
                ranges.append((offset, size))
        labels_arr = np.asarray(labels, dtype=np.int64)
        from kdcache.data._hdf5 import _classes_from_labels

        class_names = _classes_from_labels(labels_arr, keys, Path(pattern), split)
        if len(set(keys)) != len(keys):
            dup = next(k for k, n in Counter(keys).items() if n > 1)
            where = [str(shards[shard_of[i]]) for i, k in enumerate(keys) if k == dup]
            raise DataError(f"{source} [{split}]: sample key {dup!r} occurs more than once ({', '.join(where[:2])}); "
                            "__key__ values must be unique over all shards")
        super().__init__(source=source, split=split, keys=keys, labels=labels_arr, class_names=class_names)
        self._src_keys = list(self.keys)  # keys by source position; subsets narrow self.keys only
        self.shards = [str(p) for p in shards]
        self._shard_of = np.asarray(shard_of, dtype=np.int32)
        self._ranges = np.asarray(ranges, dtype=np.int64).reshape(-1, 2)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(decoder=DECODER, num_shards=len(self.shards))
        return d

    def _bytes(self, j: int) -> bytes:
        shard = self.shards[int(self._shard_of[j])]
        offset, size = (int(v) for v in self._ranges[j])
        try:
            with open(shard, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except FileNotFoundError as e:
            raise DataNotFoundError(f"webdataset shard disappeared: {shard}; rebuild the dataset") from e
        if len(data) != size:
            raise DataError(f"{shard} changed since it was indexed (sample {self._src_keys[j]!r} is cut short); "
                            "reopen the dataset")
        return data

    def _where(self, j: int) -> str:
        return f"{self.shards[int(self._shard_of[j])]}:{self._src_keys[j]}"

    def _read(self, src: np.ndarray) -> list[torch.Tensor]:
        return [decode_image_bytes(self._bytes(int(j)), self._where(int(j))) for j in src]

    def _size(self, src_index: int) -> tuple[int, int]:
        return image_header_size(io.BytesIO(self._bytes(src_index)), self._where(src_index))
