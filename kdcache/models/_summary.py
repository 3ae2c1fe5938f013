"""The model listing: parameters and forward FLOPs of each model, as rows and as a text table.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one image (it counts a
multiply-add as two FLOPs, so numbers are twice the "MACs" some papers quote). Models are built
on the ``meta`` device where possible: shapes propagate without allocating or computing, so even a
ResNet-50x3 is listed in milliseconds. A model whose constructor needs real data is built on the
CPU and moved to ``meta`` for counting; one whose forward needs real data is run on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from kdcache.errors import ModelError
from kdcache.models._registry import create_model, list_models, model_cfg, model_description, model_tags

__all__ = ["model_table", "format_table", "count_params", "count_flops"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, *, input_size: int, device: torch.device | str = "cpu") -> int:
    """Forward FLOPs of ``model`` in eval mode on one ``3×input_size×input_size`` image."""
    x = torch.zeros(1, 3, input_size, input_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _build(name: str, num_classes: int, device: str) -> nn.Module:
    with torch.device(device):
        return create_model(name, num_classes=num_classes)


def _flops_or_error(model: nn.Module, size: int, device: str) -> tuple[float | None, str | None]:
    try:
        return count_flops(model, input_size=size, device=device) / 1e9, None
    except Exception as e:  # reported in the table, e.g. a ViT rejecting another input size
        return None, f"{type(e).__name__}: {e}"


def _row(name: str, num_classes: int, input_size: int | None) -> dict[str, Any]:
    try:
        model = _build(name, num_classes, "meta")
    except (RuntimeError, NotImplementedError):
        model = _build(name, num_classes, "cpu")  # the builder needs real data (e.g. copies a numpy array)
    size = input_size or model_cfg(model).input_size
    params = count_params(model)
    gflops, error = _flops_or_error(model.to("meta"), size, "meta")
    if error is not None:
        # Data-dependent code fails on meta too: only a real forward tells it apart from a real error.
        gflops, error = _flops_or_error(_build(name, num_classes, "cpu"), size, "cpu")
    return {"name": name, "params": params, "gflops": gflops, "input_size": size,
            "tags": list(model_tags(name)), "description": model_description(name), "error": error}


def model_table(names: Sequence[str] | None = None, *, input_size: int | None = None,
                num_classes: int = 1000, flops: bool = True) -> list[dict[str, Any]]:
    """One row per model: ``name, params, gflops, input_size, tags, description, error``.

    With ``flops=False`` nothing is built: rows carry only name, tags and description (instant),
    and ``params``, ``gflops``, ``input_size`` are None.

    ``names`` defaults to every registered model; any name ``create_model`` accepts works
    (torchvision, ``timm:``, ``python:``). ``input_size`` overrides each model's own input size;
    a model that rejects it gets ``gflops=None`` and the error text instead of failing the listing.
    """
    if input_size is not None and (not isinstance(input_size, int) or input_size < 1):
        raise ModelError(f"input_size must be a positive integer, got {input_size!r}")
    names = list_models() if names is None else list(names)
    if not flops:
        return [{"name": n, "params": None, "gflops": None, "input_size": None, "tags": list(model_tags(n)),
                 "description": model_description(n), "error": None} for n in names]
    return [_row(n, num_classes, input_size) for n in names]


def _fmt_params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text, column-aligned table of :func:`model_table` rows."""
    header = ("model", "params", "GFLOPs", "input", "tags", "description")
    body = []
    for r in rows:
        gflops = f"{r['gflops']:.3f}" if r.get("gflops") is not None else ("n/a" if r.get("params") else "-")
        desc = r.get("description") or ""
        if r.get("error"):
            desc = f"{desc} [FLOPs: {r['error'].splitlines()[0]}]".strip()
        body.append((r["name"], _fmt_params(r["params"]), gflops, str(r["input_size"] or "-"),
                     ",".join(r.get("tags") or []), desc))
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    right = {1, 2, 3}  # numbers align right

    def line(cells: Sequence[str]) -> str:
        out = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(b) for b in body)])
