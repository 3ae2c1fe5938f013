"""The README's two opening commands are the ones CI runs (install, quickstart, tests)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_readme_opens_with_install_plus_quickstart_and_the_test_command():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", readme, flags=re.S).group(1).strip().splitlines()
    assert len(block) == 2, block
    install, tests = block
    assert install.endswith("&& kdcache quickstart")
    ci = (REPO / ".ci" / "run").read_text()
    install_steps = install.split(" && ")
    pip_steps = " && ".join(s for s in install_steps if s.startswith("pip install"))
    assert pip_steps and pip_steps in ci, "the README's pip install must be .ci/run's"
    assert tests.split()[:3] == ["python", "-m", "pytest"]
    ci_tests = [line for line in ci.splitlines() if line.startswith("python -m pytest")]
    assert [line.replace(" -p no:cacheprovider", "") for line in ci_tests] == [tests], "CI must run the README's tests"


def readme_block(marker: str) -> str:
    """The fenced code block that follows ``<!-- test: MARKER -->`` in the README."""
    readme = (REPO / "README.md").read_text()
    found = re.search(rf"<!-- test: {re.escape(marker)} -->\n```\w*\n(.*?)```", readme, flags=re.S)
    assert found, f"README has no code block marked {marker!r}"
    return found.group(1)


def test_readme_training_loop_runs(tmp_path, monkeypatch, capsys, tiny_h5, tiny_teacher):
    """The README's plain-PyTorch loop, run as written on a tiny cache at the path it names."""
    import math

    from kdcache import DataConfig, DumpConfig, TeacherSpec, dump_teacher

    code = readme_block("readme-loop")
    path = re.search(r'open_cache\("([^"]+)"\)', code).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    dump_teacher(DumpConfig(data=DataConfig(source=tiny_h5), out=path,
                            teacher=TeacherSpec(weights=tiny_teacher),
                            views=2, seed=1, view={"size": 16, "mix": "mixup"}, batch_size=16, workers=0,
                            block_size=16), progress=False, log=lambda _m: None)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, "README.md:readme-loop", "exec"), namespace)
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 5, lines
    assert all(math.isfinite(float(x.strip(","))) for ln in lines for x in ln.split()[3::2])
    assert namespace["train"].epoch == 4  # the loop really moved through the epochs' views


def test_readme_feature_distillation_loop_runs(tmp_path, monkeypatch, capsys, tiny_h5, tiny_teacher):
    """The README's feature-distillation loop, run as written on a tiny embedding cache at the path it names."""
    import math

    import torch

    from kdcache import DataConfig, DumpConfig, TeacherSpec, dump_teacher

    code = readme_block("readme-feature")
    path = re.search(r'open_cache\("([^"]+)"\)', code).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    dump_teacher(DumpConfig(data=DataConfig(source=tiny_h5), out=path, teacher=TeacherSpec(weights=tiny_teacher),
                            views=2, view={"size": 32}, workers=0, block_size=16, targets="full+pooled:int8"),
                 progress=False, log=lambda _m: None)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, "README.md:readme-feature", "exec"), namespace)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("feature loss ") and math.isfinite(float(line.split()[-1]))
    assert namespace["parts"]["feature_loss"] > 0
    saved = torch.load(tmp_path / "student.pt", weights_only=True)
    assert set(saved) == set(namespace["net"].student.state_dict())


def test_readme_several_teachers_loop_runs(tmp_path, monkeypatch, capsys, tiny_h5, tiny_teacher):
    """The README's loop over two teachers of one cache, run as written at the path it names."""
    import math

    import torch

    from kdcache import AddTeacherConfig, DataConfig, DumpConfig, TeacherSpec, add_teacher, dump_teacher
    from kdcache.models import create_model
    from kdcache.models._checkpoint import save_checkpoint

    code = readme_block("readme-teachers")
    path = re.search(r'CacheDataset\("([^"]+)"', code).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    dump_teacher(DumpConfig(data=DataConfig(source=tiny_h5), out=path, teacher=TeacherSpec(weights=tiny_teacher),
                            views=2, view={"size": 16}, workers=0, block_size=16), progress=False, log=lambda _m: None)
    torch.manual_seed(7)
    save_checkpoint(str(tmp_path / "r20.pt"), create_model("cnn_tiny", num_classes=3))
    add_teacher(AddTeacherConfig(cache=path, name="r20", teacher=TeacherSpec(weights=str(tmp_path / "r20.pt")),
                                 workers=0, device="cpu"), progress=False, log=lambda _m: None)
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, "README.md:readme-teachers", "exec"), namespace)
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("kd loss ") and math.isfinite(float(line.split()[-1]))
    assert set(namespace["t"]) == {"main", "r20"} and namespace["parts"]["kd_loss"] > 0
