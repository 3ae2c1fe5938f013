"""``check_data``: find every unreadable or suspicious image of a dataset before a long dump starts.

A dump stops at the first bad file, so a folder with several needs one run per file. This scan visits
every sample, in parallel threads (PIL and torchvision's decoders release the GIL), and lists them all:

* every source: the image's size is read (headers only for files); with ``decode`` the image is decoded
  exactly as the dump decodes it, and any error it would raise is recorded;
* one-file-per-image sources also get cheap file checks: a zero-byte file, a header PIL cannot read, a
  pixel mode the decoder does not take (e.g. 32-bit float TIFF data in a ``.png``), and a JPEG or PNG whose
  end marker is missing (truncated: it decodes to a grey band, or not at all).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm import tqdm

from kdcache.errors import KdcacheError

__all__ = ["DataProblem", "DataCheck", "check_data"]

# Modes the decoder turns into RGB (grey, palette, alpha, CMYK, 16-bit grey all decode and replay).
_DECODABLE_MODES = {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "I;16", "I;16B", "I;16L"}
_END_MARKERS = {b"\xff\xd8": (b"\xff\xd9", "JPEG"), b"\x89P": (b"IEND\xaeB`\x82", "PNG")}


@dataclass(frozen=True)
class DataProblem:
    index: int
    key: str
    file: str | None
    problem: str

    def describe(self) -> str:
        return f"{self.file or f'sample {self.index} ({self.key!r})'}: {self.problem}"


@dataclass
class DataCheck:
    source: str
    split: str
    checked: int
    decoded: bool
    problems: list[DataProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["problems"] = [{**asdict(p), "message": p.describe()} for p in self.problems]
        return d


def _file_problem(path: str) -> str | None:
    """What is wrong with an image file, from its size, header and last bytes (no decode)."""
    from PIL import Image, UnidentifiedImageError

    try:
        size = os.path.getsize(path)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if size == 0:
        return "is empty (zero bytes)"
    try:
        with Image.open(path) as im:
            mode, fmt = im.mode, im.format
    except UnidentifiedImageError:
        return "is not an image (no JPEG or PNG header PIL can read)"
    except OSError as e:
        return f"has an unreadable header ({e})"
    if mode not in _DECODABLE_MODES:
        return f"has pixel mode {mode!r} ({fmt}), which the decoder does not take"
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(max(0, size - 16))
        tail = f.read()
    marker = _END_MARKERS.get(head)
    if marker is not None and marker[0] not in tail:
        return f"is truncated ({size} bytes; its {marker[1]} end marker is missing)"
    return None


def _check_one(ds, i: int, decode: bool) -> DataProblem | None:
    file = ds.sample_file(i)
    problem = _file_problem(file) if file is not None else None
    if problem is None:
        try:
            ds.image_size(i)
            if decode:
                ds.get_image(i)
        except KdcacheError as e:
            problem = str(e)
            if file and problem.startswith(("cannot decode image", "cannot read image")):
                problem = problem.split(f"{file}: ", 1)[-1].removesuffix("; replace or delete the file")
    return None if problem is None else DataProblem(index=i, key=str(ds.keys[i]), file=file, problem=problem)


def check_data(ds, *, decode: bool = False, workers: int = 4, progress: bool = True) -> DataCheck:
    """Scan every sample of ``ds`` (an :class:`~kdcache.data.ImageDataset`); ``decode`` decodes each fully.

    Returns every problem found, in sample order; nothing is raised for bad images."""
    n = len(ds)
    bar = tqdm(total=n, desc="check-data", unit="image", disable=not progress)
    found: list[DataProblem] = []
    with ThreadPoolExecutor(max_workers=max(1, int(workers))) as pool:
        for p in pool.map(lambda i: _check_one(ds, i, decode), range(n)):
            bar.update(1)
            if p is not None:
                found.append(p)
    bar.close()
    return DataCheck(source=ds.source, split=ds.split, checked=n, decoded=bool(decode), problems=found)
