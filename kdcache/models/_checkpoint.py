"""Saving and loading model checkpoints without ever unpickling arbitrary objects.

A kdcache checkpoint is a plain dict ``{"kdcache_checkpoint": 1, "model": ModelCfg dict,
"state_dict": ..., **extra}`` written by ``torch.save`` and read back with
``torch.load(weights_only=True)``: the stored :class:`ModelCfg` rebuilds the model, so
``load_checkpoint(path)`` needs nothing else. Extras must be plain data (numbers, strings, lists,
dicts, tensors: configs, optimizer and scheduler states, epoch, metrics); anything else is refused
at save time, because ``weights_only`` loading would refuse it later. A path ending in
``.safetensors`` stores the weights with safetensors and the config and extras as JSON metadata.

Weights are read from torch files (always ``weights_only=True``), safetensors files (recognised by
their header, whatever the suffix) and timm / Hugging Face checkpoint directories (``model.safetensors``
or ``pytorch_model.bin``). Anything else, such as a text file, is refused before torch's unpickler
sees it. A state dict that does not fit says which keys are missing or unexpected and why.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcache._utils import optional_import, temp_file
from kdcache.errors import CheckpointError, ModelError
from kdcache.models._cfg import ModelCfg
from kdcache.models._registry import create_model, model_cfg

__all__ = ["CHECKPOINT_VERSION", "is_kdcache_checkpoint", "save_checkpoint", "load_checkpoint", "load_weights",
           "read_state_dict"]

CHECKPOINT_VERSION = 1
_RESERVED = ("kdcache_checkpoint", "model", "state_dict")
_STATE_KEYS = ("state_dict", "model", "model_state")
_MAX_LISTED = 5
# The weights file of a timm or Hugging Face checkpoint directory, in order of preference.
_DIR_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_PREFIXES = ("module.", "model.", "_orig_mod.", "student.", "teacher.", "backbone.", "encoder.")


def _is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def _sniff(path: Path) -> str:
    """``"zip"`` (torch >= 1.6), ``"pickle"`` (legacy torch.save), ``"safetensors"`` or ``"unknown"``."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80":  # pickle's PROTO opcode: every protocol >= 2 pickle starts with it
        return "pickle"
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    if len(head) >= 10 and head[8:10] in (b'{"', b"{}"):
        return "safetensors"
    return "unknown"


def _weights_file(path: Path) -> Path:
    """``path`` itself, or the weights file of the checkpoint directory ``path``."""
    if not path.is_dir():
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        return path
    for name in _DIR_WEIGHTS:
        if (path / name).is_file():
            return path / name
    sharded = sorted(p.name for p in path.glob("*.index.json"))
    more = f" (sharded checkpoints such as {sharded[0]} are not supported)" if sharded else ""
    raise CheckpointError(f"{path} is a directory without {' or '.join(_DIR_WEIGHTS)}{more}")


def _safetensors_torch():
    return optional_import("safetensors.torch", extra="safetensors", what="'.safetensors' checkpoints",
                           error=ModelError)


def _check_plain(value: Any, where: str) -> None:
    """Refuse objects that ``torch.load(weights_only=True)`` would refuse to read back."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise CheckpointError(f"checkpoint extra {where}: key {k!r} is not a string or integer")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    raise CheckpointError(f"checkpoint extra {where} is a {type(value).__name__}; only plain data "
                          "(numbers, strings, lists, dicts, tensors) can be stored - convert it first")


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same directory, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path.parent, path.name)  # the umask's mode (mkstemp's 0o600 would hide it from teammates)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra: Any) -> Path:
    """Save ``model`` (built by ``create_model``) with plain-data ``extra`` entries; returns the path."""
    path = Path(path)
    cfg = model_cfg(model).to_dict()
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise CheckpointError(f"checkpoint extras may not use the reserved keys {clash}")
    for k, v in extra.items():
        _check_plain(v, repr(k))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if _is_safetensors(path):
        st = _safetensors_torch()
        try:
            meta = {"kdcache_checkpoint": str(CHECKPOINT_VERSION), "model": json.dumps(cfg),
                    "extra": json.dumps(extra)}
        except TypeError as e:
            raise CheckpointError(f"a .safetensors checkpoint stores extras as JSON metadata ({e}); "
                                  "save tensors-bearing extras such as optimizer state to a .pt file") from e
        # safetensors refuses tensors sharing storage (tied weights): give each its own copy.
        tensors = {k: v.clone().contiguous() for k, v in state.items()}
        _atomic_write(path, lambda tmp: st.save_file(tensors, tmp, metadata=meta))
    else:
        ckpt = {"kdcache_checkpoint": CHECKPOINT_VERSION, "model": cfg, "state_dict": state, **extra}
        _atomic_write(path, lambda tmp: torch.save(ckpt, tmp))
    return path


def _unpickling_reason(e: Exception) -> str:
    """The informative line of torch's long weights-only error (e.g. ``Unsupported global: GLOBAL x.Y``)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    marker = "WeightsUnpickler error:"
    for i, ln in enumerate(lines):
        if marker in ln:
            rest = ln.split(marker, 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            if rest:
                return rest.split(". ")[0]  # drop torch's advice to allow-list the class
    return lines[0].split(". ")[0] if lines else type(e).__name__


def _read(path: Path, map_location: Any) -> dict[str, Any]:
    """The raw checkpoint as a dict; safetensors files become ``{"state_dict", "model"?, **extra}``."""
    path = _weights_file(path)
    kind = _sniff(path)
    if _is_safetensors(path) or kind == "safetensors":
        return _read_safetensors(path, map_location)
    if kind == "unknown":
        raise CheckpointError(f"{path} is not a weights file (neither a torch checkpoint nor safetensors)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"cannot read {path} as weights only ({_unpickling_reason(e)}): it is not a torch "
                              "checkpoint, or it holds objects other than tensors and plain data, which kdcache "
                              "never unpickles; re-save the state_dict alone") from e
    except (OSError, RuntimeError, EOFError, ValueError, KeyError, IndexError) as e:
        # A damaged file makes the unpickler fail with whatever it tripped on (KeyError: 101, ...).
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict or state dict")
    return obj


def _read_safetensors(path: Path, map_location: Any) -> dict[str, Any]:
    _safetensors_torch()  # a clear error when the optional package is missing
    from safetensors import SafetensorError, safe_open

    device = str(map_location) if isinstance(map_location, (str, torch.device)) else "cpu"
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e
    out: dict[str, Any] = {"state_dict": state}
    if "kdcache_checkpoint" in meta:
        try:
            out["kdcache_checkpoint"] = int(meta["kdcache_checkpoint"])
            out["model"] = json.loads(meta["model"])
            out.update(json.loads(meta.get("extra", "{}")))
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{path}: malformed kdcache metadata: {e}") from e
    return out


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _extract_state_dict(obj: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    for key in _STATE_KEYS:
        if _is_state_dict(obj.get(key)):
            state = obj[key]
            break
    else:
        if not _is_state_dict(obj):
            raise CheckpointError(f"{path}: no state dict found (expected a bare state dict or a dict with "
                                  f"one of the keys {list(_STATE_KEYS)}); top-level keys: {sorted(obj)[:10]}")
        state = obj
    # Checkpoints saved from DataParallel/DistributedDataParallel prefix every key with 'module.'.
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def is_kdcache_checkpoint(path: str | os.PathLike) -> bool:
    """True for a checkpoint written by :func:`save_checkpoint` (it names its model), False for other
    weights files and directories; raises :class:`CheckpointError` for a missing or unreadable file."""
    obj = _read(Path(path), "cpu")
    return obj.get("kdcache_checkpoint") is not None and isinstance(obj.get("model"), Mapping)


def read_state_dict(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The state dict stored in any supported weights file, with a leading ``module.`` stripped."""
    path = Path(path)
    return _extract_state_dict(_read(path, map_location), path)


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _prefix_hint(own: set[str], theirs: set[str]) -> str:
    """A key prefix that would make the file's keys fit the model's, said as what to do about it."""
    best, best_fit = "", len(own & theirs)
    for prefix in _PREFIXES:
        stripped = {k[len(prefix):] for k in theirs if k.startswith(prefix)}
        if len(own & stripped) > best_fit:
            best, best_fit = f"the file's keys carry a {prefix!r} prefix the model's lack: strip it", len(own & stripped)
        added = {prefix + k for k in theirs}
        if len(own & added) > best_fit:
            best, best_fit = f"the model's keys start with {prefix!r} and the file's do not: add it", len(own & added)
    return best


def _head_hint(shapes: list[tuple[str, tuple, tuple]]) -> str:
    """The shape mismatches look like a classifier head for another number of classes."""
    firsts = {(a[0], b[0]) for _, a, b in shapes if a and b and a[1:] == b[1:] and a[0] != b[0]}
    if len(shapes) <= 2 and len(firsts) == 1:
        (got, want), = firsts
        names = ", ".join(k for k, _, _ in shapes)
        return (f"{names}: a head for {got} outputs but the model's has {want}; these weights were trained "
                f"for {got} classes (rebuild the model with num_classes={got}, or load a checkpoint trained on "
                f"this data)")
    return ""


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    # BatchNorm's batch counter only matters with momentum=None; many public checkpoints omit it.
    missing = sorted(k for k in own.keys() - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - own.keys())
    shapes = sorted((k, tuple(state[k].shape), tuple(own[k].shape))
                    for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = [f"missing keys: {_listed(missing)}" if missing else "",
                 f"unexpected keys: {_listed(unexpected)}" if unexpected else "",
                 "shape mismatches: " + _listed([f"{k} {a} vs model {b}" for k, a, b in shapes]) if shapes else ""]
        hints = [_prefix_hint(set(own), set(state)) if missing and unexpected else "", _head_hint(shapes)]
        hint = "; ".join(h for h in hints if h)
        raise CheckpointError(f"weights in {source} do not fit {type(model).__name__}: "
                              + "; ".join(p for p in parts if p) + (f" (likely cause: {hint})" if hint else ""))
    full = {**{k: v for k, v in own.items() if k not in state}, **state}
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"cannot load weights from {source}: {e}") from e


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load weights into ``model`` strictly from a kdcache checkpoint, a training checkpoint with a
    ``state_dict``/``model``/``model_state`` entry, a bare state dict, a safetensors file, or a timm /
    Hugging Face checkpoint directory (``model.safetensors`` or ``pytorch_model.bin``)."""
    _load_strict(model, read_state_dict(path), str(path))


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in a kdcache checkpoint, load its weights; returns ``(model, extra)``."""
    path = Path(path)
    obj = _read(path, "cpu")
    version = obj.get("kdcache_checkpoint")
    if version is None or not isinstance(obj.get("model"), Mapping):
        raise CheckpointError(f"{path} is not a kdcache checkpoint (no model config); build the model with "
                              "create_model(...) and load the file with load_weights(model, path)")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} is checkpoint format {version!r}; this kdcache reads up to "
                              f"{CHECKPOINT_VERSION}: upgrade kdcache")
    try:
        cfg = ModelCfg.from_dict(obj["model"])
    except (TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: malformed model config {obj['model']!r}: {e}") from e
    kwargs = dict(cfg.kwargs)
    num_classes = kwargs.pop("num_classes", None)
    if not isinstance(num_classes, int):
        raise CheckpointError(f"{path}: the stored model config has no integer num_classes")
    # The weights come from this file: never download pretrained weights again just to overwrite them.
    if "pretrained" in kwargs:
        kwargs["pretrained"] = False
    model = create_model(cfg.name, num_classes=num_classes, **kwargs)
    _load_strict(model, _extract_state_dict(obj, path), str(path))
    model.kdcache_cfg = cfg
    extra = {k: v for k, v in obj.items() if k not in _RESERVED}
    return model.to(map_location), extra
