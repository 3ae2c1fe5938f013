"""``hfds:PATH_OR_NAME[,key=value...]``: a Hugging Face ``datasets`` dataset as an image source.

``PATH_OR_NAME`` is, in this order: a ``save_to_disk`` directory (``state.json`` or
``dataset_dict.json`` inside; read with ``load_from_disk``), a local directory or file of data
files that ``load_dataset`` reads (an imagefolder tree, Parquet or Arrow files), or a Hub name
(``beans``, ``user/name``; ``load_dataset`` downloads it into its cache when the network is
reachable). Options after commas: ``config=NAME`` and ``revision=REV`` (``load_dataset``'s
configuration and Hub revision), ``image=COL``, ``label=COL`` and ``id=COL`` (``id=none``: key by
row index). The options are part of the source string, so a cache records them and a command that
takes its data from the cache opens the same dataset.

Columns: the image column is the one ``datasets.Image`` feature (or ``image=``), the label column
the one ``ClassLabel`` feature (or ``label=``, else an integer column named ``label`` or
``labels``); class names come from the ``ClassLabel`` (else ``"0"``..``"C-1"``). Sample keys are
the ``id`` column's values when there is one (``id=`` or a column named ``id``), else
``"{fingerprint}/{row}"``: the row index bound to the dataset's ``datasets`` fingerprint, so a
changed dataset (rows added, removed or rewritten; for local files, files touched) changes the
keys and a cache made on the old one refuses it, as it refuses a changed folder.

Images are read without ``datasets``' own decoding (the column is cast to ``Image(decode=False)``)
and decoded by :mod:`kdcache.data._decode`, as ``folder:`` images are. ``datasets`` memory-maps
its Arrow files and pickles by file name, so DataLoader workers read rows at random without copies.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdcache._utils import optional_import
from kdcache.data._dataset import ImageDataset
from kdcache.data._decode import DECODER, decode_image_bytes, decode_image_file, image_header_size
from kdcache.errors import DataError, DataNotFoundError, DownloadUnavailableError

__all__ = ["HFDataset", "parse_hfds"]

_OPTIONS = ("config", "revision", "image", "label", "id")
_OPTION_RE = re.compile(rf"^({'|'.join(_OPTIONS)})=(.*)$")


def parse_hfds(arg: str) -> tuple[str, dict[str, str]]:
    """``"beans,revision=main,label=labels"`` -> ``("beans", {"revision": "main", "label": "labels"})``."""
    parts = arg.split(",")
    opts: dict[str, str] = {}
    while len(parts) > 1 and "=" in parts[-1]:
        m = _OPTION_RE.match(parts[-1])
        if not m:
            raise DataError(f"hfds:{arg}: unknown option {parts[-1]!r}; options are "
                            f"{', '.join(o + '=...' for o in _OPTIONS)}")
        if m.group(1) in opts:
            raise DataError(f"hfds:{arg}: option {m.group(1)!r} given twice")
        opts[m.group(1)] = m.group(2)
        parts.pop()
    name = ",".join(parts)
    if not name:
        raise DataError(f"hfds:{arg}: needs a save_to_disk directory, data files or a Hub name before the options")
    return name, dict(reversed(list(opts.items())))


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1


def _first_line(e: Exception) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _load(name: str, split: str, opts: dict[str, str], source: str) -> Any:
    hfd = optional_import("datasets", extra="hfds", what="hfds: data", error=DataError)
    local = Path(name).expanduser()
    hub_opts = {k: opts[k] for k in ("config", "revision") if k in opts}
    if local.is_dir() and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file()):
        if hub_opts:
            raise DataError(f"{source}: {', '.join(hub_opts)} apply to load_dataset, not to a save_to_disk "
                            "directory; drop them")
        try:
            loaded = hfd.load_from_disk(str(local))
        except Exception as e:  # noqa: BLE001 - datasets raises many types for a damaged directory
            raise DataError(f"{source}: cannot load the save_to_disk directory {local}: {_first_line(e)}") from e
    elif local.exists() or _looks_like_path(name):
        if not local.exists():
            raise DataNotFoundError(f"hfds data not found: {local}; check the path in {source!r}")
        if local.is_file():
            kind = {".parquet": "parquet", ".arrow": "arrow"}.get(local.suffix.lower())
            if kind is None:
                raise DataError(f"{source}: {local} is neither a .parquet nor an .arrow file (or a directory)")
            args: tuple = (kind,)
            kw: dict[str, Any] = {"data_files": str(local)}
        else:
            args, kw = (str(local),), {}
        try:
            loaded = hfd.load_dataset(*args, *([hub_opts["config"]] if "config" in hub_opts else []),
                                      revision=hub_opts.get("revision"), **kw)
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{source}: load_dataset cannot read {local}: {_first_line(e)}") from e
    else:
        try:
            loaded = hfd.load_dataset(name, hub_opts.get("config"), revision=hub_opts.get("revision"))
        except (ConnectionError, OSError) as e:
            raise DownloadUnavailableError(
                f"cannot load Hugging Face dataset {name!r} ({_first_line(e)}); when offline, load it elsewhere, "
                f"save it with save_to_disk and pass its directory as hfds:DIR") from e
        except Exception as e:  # noqa: BLE001 - unknown config, unknown dataset, ...
            raise DataError(f"{source}: {_first_line(e)}") from e
    if isinstance(loaded, hfd.DatasetDict):
        if split not in loaded:
            raise DataError(f"{source} has no split {split!r}; available splits: {', '.join(sorted(loaded))}")
        return loaded[split]
    if not isinstance(loaded, hfd.Dataset):
        raise DataError(f"{source}: expected a datasets Dataset, got {type(loaded).__name__}")
    own = str(loaded.split) if loaded.split is not None else "train"
    if split != own:
        raise DataError(f"{source} is one split ({own!r}), not {split!r}; available splits: {own}")
    return loaded


def _pick(features: dict, named: str | None, kind: type, what: str, source: str, hint: str) -> str | None:
    if named is not None:
        if named not in features:
            raise DataError(f"{source}: no column {named!r} for the {what}; columns: {', '.join(features)}")
        return named
    found = [c for c, f in features.items() if isinstance(f, kind)]
    if len(found) > 1:
        raise DataError(f"{source}: {len(found)} {kind.__name__} columns ({', '.join(found)}); "
                        f"name the {what} with {hint}=COL")
    return found[0] if found else None


class HFDataset(ImageDataset):
    """One split of a Hugging Face ``datasets`` dataset (see the module docstring)."""

    def __init__(self, *, arg: str, split: str = "train", source: str | None = None) -> None:
        hfd = optional_import("datasets", extra="hfds", what="hfds: data", error=DataError)
        source = source if source is not None else f"hfds:{arg}"
        name, opts = parse_hfds(arg)
        ds = _load(name, split, opts, source)
        features = dict(ds.features)
        image_col = _pick(features, opts.get("image"), hfd.Image, "images", source, "image")
        if image_col is None:
            raise DataError(f"{source}: no Image column (columns: {', '.join(features)}); "
                            "name the image column with image=COL")
        if not isinstance(features[image_col], hfd.Image):
            raise DataError(f"{source}: column {image_col!r} is {type(features[image_col]).__name__}, not an "
                            "Image feature; cast it with datasets.Image() or name another with image=COL")
        label_col = _pick(features, opts.get("label"), hfd.ClassLabel, "labels", source, "label")
        if label_col is None:
            label_col = next((c for c in ("label", "labels") if c in features), None)
            if label_col is None:
                raise DataError(f"{source}: no ClassLabel column and no 'label' column (columns: "
                                f"{', '.join(features)}); name the label column with label=COL")
        labels = np.asarray(ds.data.column(label_col).to_numpy(zero_copy_only=False)) if ds._indices is None \
            else np.asarray(ds[label_col])
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{source}: label column {label_col!r} holds {labels.dtype}, not integer class indices; "
                            "name the label column with label=COL")
        if labels.size and labels.min() < 0:
            i = int(np.argmin(labels))
            raise DataError(f"{source} [{split}]: row {i} has label {int(labels[i])}, outside the classes "
                            f"(datasets writes -1 for 'no label', as in unlabelled test splits); "
                            "use a labelled split or drop those rows")
        if isinstance(features[label_col], hfd.ClassLabel):
            class_names = list(features[label_col].names)
        else:
            from kdcache.data._hdf5 import _classes_from_labels

            class_names = _classes_from_labels(labels, [str(i) for i in range(len(labels))], Path(source), split)
        id_col = opts.get("id", "id" if "id" in features and "id" not in (image_col, label_col) else None)
        if id_col == "none":
            id_col = None
        fingerprint = str(ds._fingerprint)
        if id_col is not None:
            if id_col not in features:
                raise DataError(f"{source}: no column {id_col!r} for the keys; columns: {', '.join(features)}")
            keys = [str(v) for v in ds[id_col]]
            if len(set(keys)) != len(keys):
                raise DataError(f"{source}: id column {id_col!r} repeats values, so it cannot key the samples; "
                                "name a unique column with id=COL, or key by row index with id=none")
        else:
            keys = [f"{fingerprint}/{i}" for i in range(len(ds))]
        super().__init__(source=source, split=split, keys=keys, labels=labels, class_names=class_names)
        self.columns = {"image": image_col, "label": label_col, "id": id_col}
        self.fingerprint = fingerprint
        self._rows = ds.select_columns([image_col]).cast_column(image_col, hfd.Image(decode=False))

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d.update(decoder=DECODER, hf_fingerprint=self.fingerprint, columns=dict(self.columns))
        return d

    def _encoded(self, src: np.ndarray) -> list[dict]:
        col = self.columns["image"]
        return self._rows[[int(j) for j in src]][col] if len(src) else []

    def _where(self, j: int, cell: dict) -> str:
        return f"{self.source} row {j}" + (f" ({cell['path']})" if cell.get("path") else "")

    def _read(self, src: np.ndarray) -> list[torch.Tensor]:
        out = []
        for j, cell in zip(src.tolist(), self._encoded(src)):
            if cell is None:
                raise DataError(f"{self.source} row {j}: the image is missing (None); drop the row or fill it")
            if cell.get("bytes") is not None:
                out.append(decode_image_bytes(cell["bytes"], self._where(j, cell)))
            elif cell.get("path"):
                if not Path(cell["path"]).is_file():
                    raise DataNotFoundError(f"{self._where(j, cell)}: image file disappeared; rebuild the dataset")
                out.append(decode_image_file(cell["path"]))
            else:
                raise DataError(f"{self.source} row {j}: the image has neither bytes nor a path")
        return out

    def _size(self, src_index: int) -> tuple[int, int]:
        (cell,) = self._encoded(np.asarray([src_index]))
        if cell is None:
            raise DataError(f"{self.source} row {src_index}: the image is missing (None); drop the row or fill it")
        fp = io.BytesIO(cell["bytes"]) if cell.get("bytes") is not None else cell.get("path")
        return image_header_size(fp, self._where(src_index, cell))
