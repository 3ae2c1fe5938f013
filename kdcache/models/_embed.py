"""Pooled embeddings: a model's features right before its classifier, with its logits, in one forward pass.

"Pooled" is timm's *pre-logits*: what ``model.forward_head(model.forward_features(x), pre_logits=True)``
returns, the globally pooled (or class-token) feature vector the final linear classifier reads. timm's
``FeatureDistillationTask`` distils exactly this vector; ``pooled`` is the name CLI options (``--embed pooled``)
give it.
:func:`pooled_embedder` finds it for every kind of model :func:`~kdcache.models.create_model` builds:

* **a model that defines** ``forward_embedding(x) -> (logits | None, embedding)`` (the hook for
  ``python:module:function`` models, and an override for any other): that method, as it is;
* **timm models and kdcache's own architectures** (anything with ``forward_features`` and a
  ``forward_head`` that takes ``pre_logits``): ``forward_features`` once, then ``forward_head(f,
  pre_logits=True)`` for the embedding and ``forward_head(f)`` for the logits, as timm's
  ``FeatureDistillationTrainableModule`` does; a timm model built with ``num_classes=0`` gives no logits.
  A distilled DeiT's embedding is the mean of its class and distillation tokens, as timm's
  ``VisionTransformerDistilled.forward_head(pre_logits=True)`` defines it: eval logits average the two
  heads over those two tokens, so neither token alone is what the model predicts from;
* **torchvision classifiers**: the input of the classifier (the last ``nn.Linear`` with ``num_classes``
  outputs: ``fc``, ``classifier[-1]``, ``heads.head``, ``head``), captured by a forward pre-hook during
  the normal forward, which gives the logits;
* **Hugging Face models** (``hf:``, or a ``transformers`` model passed directly): the input of
  ``classifier`` (ViT and DeiT: the class token; ConvNeXt, Swin, ResNet: the pooled output; DINOv2: the
  class token beside the mean patch token, as its classifier reads them); DeiT with teacher: the mean of
  the inputs of its two classifiers, as above. A model without a classifier (``ViTModel``,
  ``Dinov2Model``, ``CLIPVisionModel`` saved with ``save_pretrained``) gives ``(None, embedding)``:
  ``image_embeds`` when it has a projection (``CLIPVisionModelWithProjection``), else its
  ``pooler_output``, else the class token of ``last_hidden_state``. (A ``ViTModel`` built with its
  pooling layer returns ``tanh(dense(CLS))`` as ``pooler_output``; checkpoints converted without that
  layer start it random, and transformers warns about it when loading: load with
  ``add_pooling_layer=False`` to take the class token.)

The embedder runs the model as it is (train or eval mode, with or without gradients), so a teacher is
put in eval mode by its caller and a student's embedding can carry gradients for feature distillation.
A model where no embedding can be found is a one-line :class:`~kdcache.errors.ModelError` naming it.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from kdcache.errors import ModelError
from kdcache.models._cfg import ModelCfg
from kdcache.models._hf import HFImageClassifier

__all__ = ["EmbedFn", "PooledEmbedder", "pooled_embedder"]

EmbedFn = Callable[[torch.Tensor], tuple["torch.Tensor | None", torch.Tensor]]

_HOOK = "forward_embedding"


@dataclass(frozen=True)
class PooledEmbedder:
    """``embedder(x) -> (logits | None, embedding)`` for a batch of images ``x``; the embedding is (B, D).

    ``source`` says in words where the embedding comes from (e.g. ``"forward_head(pre_logits=True)"``).
    """

    name: str
    source: str
    fn: EmbedFn

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        out = self.fn(x)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise ModelError(f"model {self.name!r}: {self.source} must return (logits or None, embedding), "
                             f"got {type(out).__name__}")
        logits, emb = out
        if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != x.shape[0]:
            shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise ModelError(f"model {self.name!r}: the embedding from {self.source} must be (batch, dim) "
                             f"= ({x.shape[0]}, D), got {shape}")
        return logits, emb


def _name(model: nn.Module) -> str:
    cfg = getattr(model, "kdcache_cfg", None)
    return cfg.name if isinstance(cfg, ModelCfg) and cfg.name else type(model).__name__


def _takes_pre_logits(model: nn.Module) -> bool:
    head, features = getattr(model, "forward_head", None), getattr(model, "forward_features", None)
    if not (callable(head) and callable(features)):
        return False
    try:
        return "pre_logits" in inspect.signature(head).parameters
    except (TypeError, ValueError):
        return False


def _pre_logits(model: nn.Module) -> EmbedFn:
    headless = getattr(model, "num_classes", None) == 0  # timm's num_classes=0: forward_head is pre-logits

    def embed(x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        f = model.forward_features(x)
        emb = model.forward_head(f, pre_logits=True)
        return (None if headless else model.forward_head(f)), emb

    return embed


def _inputs_of(name: str, heads: Sequence[nn.Module], run: Callable[[torch.Tensor], torch.Tensor | None],
               what: str) -> EmbedFn:
    """The mean of the (flattened) inputs of ``heads`` during one ``run(x)``, and what ``run`` returns."""

    def embed(x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        seen: list[list[torch.Tensor]] = [[] for _ in heads]
        handles = [h.register_forward_pre_hook(lambda _m, args, s=s: s.append(args[0])) for h, s in zip(heads, seen)]
        try:
            logits = run(x)
        finally:
            for handle in handles:
                handle.remove()
        if any(len(s) != 1 for s in seen):
            raise ModelError(f"model {name!r}: {what} ran {[len(s) for s in seen]} times in one forward pass, "
                             f"not once; define {_HOOK}(x) -> (logits, embedding) on the model")
        inputs = [s[0].flatten(1) for s in seen]
        return logits, inputs[0] if len(inputs) == 1 else torch.stack(inputs).mean(dim=0)

    return embed


def _torchvision(model: nn.Module, name: str, cfg: ModelCfg) -> PooledEmbedder:
    from kdcache.models._tv import find_head

    qname, head = find_head(model, num_outputs=int(cfg.kwargs.get("num_classes", 0)))
    if not isinstance(head, nn.Linear):
        raise ModelError(f"model {name!r}: its classifier {qname!r} is a {type(head).__name__}, not a linear "
                         f"layer, so it has no pooled embedding; build it as a 'python:' model with {_HOOK}(x)")
    return PooledEmbedder(name, f"the input of {qname!r}", _inputs_of(name, [head], model, f"{qname!r}"))


def _hf_model(model: nn.Module) -> nn.Module | None:
    """The ``transformers`` model inside ``model`` (an ``hf:`` model, or one passed directly), else None."""
    if isinstance(model, HFImageClassifier):
        return model.model
    tf = sys.modules.get("transformers")  # not imported: the model cannot be a transformers model
    return model if tf is not None and isinstance(model, tf.PreTrainedModel) else None


def _hf(model: nn.Module, inner: nn.Module, name: str) -> PooledEmbedder:
    def logits_of(x: torch.Tensor) -> torch.Tensor:
        return model(x) if isinstance(model, HFImageClassifier) else inner(pixel_values=x).logits

    classifier = getattr(inner, "classifier", None)
    if isinstance(classifier, nn.Identity):  # transformers' head for num_labels=0: no logits
        fn = _inputs_of(name, [classifier], logits_of, "'classifier'")
        return PooledEmbedder(name, "the input of 'classifier' (no class head)", lambda x: (None, fn(x)[1]))
    if isinstance(classifier, nn.Module):
        return PooledEmbedder(name, "the input of 'classifier'",
                              _inputs_of(name, [classifier], logits_of, "'classifier'"))
    pair = [getattr(inner, a, None) for a in ("cls_classifier", "distillation_classifier")]
    if all(isinstance(h, nn.Module) for h in pair):
        return PooledEmbedder(name, "the mean of the inputs of 'cls_classifier' and 'distillation_classifier'",
                              _inputs_of(name, pair, logits_of, "the two classifiers"))

    def pooled(x: torch.Tensor) -> tuple[None, torch.Tensor]:
        out = inner(pixel_values=x)
        if getattr(out, "logits", None) is not None:
            raise ModelError(f"model {name!r} returns logits but has no 'classifier' to take its input from; "
                             f"define {_HOOK}(x) -> (logits, embedding) on it")
        for key in ("image_embeds", "pooler_output"):
            if getattr(out, key, None) is not None:
                return None, getattr(out, key).flatten(1)
        hidden = getattr(out, "last_hidden_state", None)
        if hidden is None or hidden.ndim != 3:
            raise ModelError(f"model {name!r} gives no image_embeds, pooler_output or token sequence to pool")
        return None, hidden[:, 0]

    return PooledEmbedder(name, "image_embeds / pooler_output / class token (no class head)", pooled)


def pooled_embedder(model: nn.Module) -> PooledEmbedder:
    """A callable ``x -> (logits | None, embedding)``: the model's pooled pre-logits features, one forward pass.

    See the module docstring for how each kind of model is handled. Raises
    :class:`~kdcache.errors.ModelError` naming the model when no embedding can be found.
    """
    name = _name(model)
    hook = getattr(model, _HOOK, None)
    if callable(hook):
        return PooledEmbedder(name, f"{_HOOK}(x)", hook)
    if name.startswith("python:"):
        raise ModelError(f"model {name!r} has no embedding hook: define {_HOOK}(self, x) -> (logits or None, "
                         "embedding of shape (batch, dim)) on the module its function returns")
    inner = _hf_model(model)
    if inner is not None:
        return _hf(model, inner, name)
    if _takes_pre_logits(model):
        return PooledEmbedder(name, "forward_head(pre_logits=True)", _pre_logits(model))
    cfg = getattr(model, "kdcache_cfg", None)
    if isinstance(cfg, ModelCfg) and "num_classes" in cfg.kwargs:
        from kdcache.models._tv import classification_model_names

        if name in classification_model_names():
            return _torchvision(model, name, cfg)
    raise ModelError(f"model {name!r}: cannot find a pooled embedding; give it forward_features(x) and "
                     f"forward_head(x, pre_logits=True) as timm models have, or {_HOOK}(x) -> (logits, embedding)")
