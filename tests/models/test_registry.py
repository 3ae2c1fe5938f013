"""The registry: names, tags, close-match hints, argument checks, python: factories, import layering.

Real timm models are tested in test_timm.py; only timm being absent is simulated here."""

from __future__ import annotations

import ast
import importlib.util
import sys
import textwrap

import pytest
import torch
from torch import nn

import kdcache.models
from kdcache.errors import ModelError
from kdcache.models import (
    ModelCfg,
    create_model,
    is_registered,
    list_models,
    model_cfg,
    model_description,
    model_tags,
    register_model,
    set_model_cfg,
)
from kdcache.models import _registry as registry


def test_builtin_models_are_registered_with_tags():
    names = list_models()
    assert names == sorted(names)
    for name in ("cnn_small", "cnn_tiny", "cifar_resnet20", "cifar_resnet110", "bit_resnet50x1", "bit_resnet_test"):
        assert is_registered(name)
    assert "bit_resnet50x1" in list_models("teacher") and "bit_resnet50x1" not in list_models("student")
    assert model_tags("cnn_small") == ("student", "teacher") and model_tags("resnet18") == ()
    assert model_description("cifar_resnet56").startswith("CIFAR ResNet-56")


@pytest.mark.parametrize(("typo", "suggestion"), [
    ("cnn_smal", "cnn_small"), ("cifar_resnet57", "cifar_resnet56"), ("resnet_18", "resnet18"),
])
def test_unknown_names_suggest_close_matches(typo, suggestion):
    with pytest.raises(ModelError, match=f"unknown model '{typo}'; did you mean .*{suggestion}"):
        create_model(typo, num_classes=10)


def test_unknown_name_without_close_match_points_to_the_listing():
    with pytest.raises(ModelError, match="kdcache models"):
        create_model("zzzzqqqq", num_classes=10)


@pytest.mark.parametrize("num_classes", [0, -3, 2.0, None])
def test_num_classes_must_be_a_positive_int(num_classes):
    with pytest.raises(ModelError, match="num_classes"):
        create_model("cnn_tiny", num_classes=num_classes)


def test_none_overrides_are_dropped_and_recorded_kwargs_are_real():
    model = create_model("cnn_small", num_classes=3, width=None, dropout=0.2)
    assert model_cfg(model).kwargs == {"num_classes": 3, "dropout": 0.2}
    assert model_cfg(model).name == "cnn_small"


def test_model_cfg_round_trips_and_refuses_foreign_modules():
    cfg = model_cfg(create_model("cifar_resnet20", num_classes=10))
    assert ModelCfg.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ModelError, match="not built by kdcache"):
        model_cfg(nn.Linear(2, 2))


def test_double_registration_is_an_error(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def my_net(*, num_classes: int) -> nn.Module:
        """A test network."""
        return set_model_cfg(nn.Linear(4, num_classes), input_size=8)

    register_model(my_net, tags=("test",))
    assert "my_net" in list_models("test") and model_description("my_net") == "A test network."
    assert create_model("my_net", num_classes=2).out_features == 2
    with pytest.raises(ModelError, match="registered twice"):
        register_model(name="my_net")(my_net)


def test_unknown_argument_is_named_with_the_valid_ones():
    with pytest.raises(ModelError, match=r"model 'cnn_small': unknown argument widht; it takes dropout, width"):
        create_model("cnn_small", num_classes=3, widht=8)


def test_a_type_error_inside_a_builder_is_not_reported_as_a_bad_argument(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model
    def broken_net(*, num_classes: int, width: int = 4) -> nn.Module:
        return nn.Linear(width, num_classes) + 1  # a bug in the builder, not in the caller's arguments

    with pytest.raises(ModelError) as info:
        create_model("broken_net", num_classes=2, width=3)
    message = str(info.value)
    assert "building it raised TypeError" in message and "unsupported operand" in message
    assert "unknown argument" not in message and "bad argument" not in message
    assert isinstance(info.value.__cause__, TypeError)


def _imported_modules(path) -> set[str]:
    """``kdcache.models.*`` modules a file imports anywhere (top level or inside functions)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdcache.models."):
            out.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[2] for a in node.names if a.name.startswith("kdcache.models."))
    return out


def test_models_modules_import_each_other_without_cycles():
    from pathlib import Path

    files = {p.stem: p for p in Path(kdcache.models.__file__).parent.glob("*.py") if p.stem != "__init__"}
    graph = {name: _imported_modules(path) & set(files) for name, path in files.items()}
    assert "_cfg" in graph and graph["_cfg"] == set() and "_registry" not in graph["_tv"] | graph["_timm_models"]

    def visit(name: str, stack: tuple[str, ...]) -> None:
        assert name not in stack, f"import cycle: {' -> '.join((*stack, name))}"
        for dep in graph[name]:
            visit(dep, (*stack, name))

    for name in graph:
        visit(name, ())


def test_model_cfg_names_are_re_exported():
    from kdcache.models import _cfg

    assert (ModelCfg, set_model_cfg, kdcache.models.IMAGENET_MEAN) == (_cfg.ModelCfg, _cfg.set_model_cfg,
                                                                       _cfg.IMAGENET_MEAN)
    assert registry.ModelCfg is _cfg.ModelCfg  # the registry module shares the one definition


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_models.py").write_text(textwrap.dedent("""
        import torch

        def tiny(*, num_classes, hidden=4):
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, hidden),
                                       torch.nn.Linear(hidden, num_classes))

        def not_a_model(*, num_classes):
            return "oops"

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_user_models"
    sys.modules.pop("my_user_models", None)


def test_python_factory(user_module):
    model = create_model(f"python:{user_module}:tiny", num_classes=5, hidden=6)
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 5)
    cfg = model_cfg(model)
    assert cfg.name == f"python:{user_module}:tiny" and cfg.kwargs == {"num_classes": 5, "hidden": 6}
    assert cfg.input_size == 224  # a factory that does not call set_model_cfg gets the defaults


@pytest.mark.parametrize(("spec", "message"), [
    ("python:my_user_models", "expected 'python:package.module:function'"),
    ("python::tiny", "expected 'python:package.module:function'"),
    ("python:no_such_module_xyz:tiny", "cannot import"),
    ("python:my_user_models:missing", "no callable 'missing'"),
    ("python:my_user_models:NOT_CALLABLE", "no callable 'NOT_CALLABLE'"),
    ("python:my_user_models:not_a_model", "returned str, not an nn.Module"),
])
def test_python_factory_errors(user_module, spec, message):
    with pytest.raises(ModelError, match=message):
        create_model(spec, num_classes=2)


# --- timm: the optional extra -------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("timm") is not None, reason="timm is installed here")
def test_timm_really_absent_says_how_to_install():
    with pytest.raises(ModelError, match=r"pip install 'kdcache\[timm\]'"):
        create_model("timm:resnet18", num_classes=10)


def test_timm_not_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # an import of timm now fails, installed or not
    with pytest.raises(ModelError, match=r"pip install 'kdcache\[timm\]'"):
        create_model("timm:resnet18", num_classes=10)
