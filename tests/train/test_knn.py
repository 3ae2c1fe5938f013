"""k-NN accuracy of pooled embeddings (DINO's weighted vote): the vote by hand, a brute-force reference, and the
`evaluate --knn` command with the train split as the memory bank (an image never its own neighbour)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from kdcache.cli.main import cli

from kdcache.errors import ConfigError
from kdcache.train._knn import KNN_TEMPERATURE, knn_predict


def _reference(bank, bank_labels, query, k, num_classes, exclude_self=False):
    """Brute force, one query at a time, in float64."""
    b, q = np.asarray(bank, np.float64), np.asarray(query, np.float64)
    out = []
    for i, v in enumerate(q):
        sim = b @ v
        if exclude_self:
            sim[i] = -np.inf
        nn = np.argsort(-sim, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in nn:
            votes[bank_labels[j]] += np.exp(sim[j] / KNN_TEMPERATURE)
        out.append(int(np.argmax(votes)))
    return np.asarray(out)


def test_the_weighted_vote_by_hand_and_ties_go_to_the_lower_class():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]])
    labels = np.array([0, 1, 1, 2])
    query = torch.tensor([[1.0, 0.0]])
    # k = 1: the identical vector (class 0); k = 3: class 0 with exp(1/T) against class 2's exp(0.8/T) + class
    # 1's exp(0.6/T): class 0 still wins; k = 4 adds class 1's exp(0/T), not enough to pass class 0
    assert knn_predict(bank, labels, query, k=1, num_classes=3).tolist() == [0]
    assert knn_predict(bank, labels, query, k=4, num_classes=3).tolist() == [0]
    # the nearest excluded (query 0 is bank 0): class 2 (0.8) beats class 1 (0.6 and 0.0)
    assert knn_predict(bank, labels, bank[:1], k=3, num_classes=3, exclude_self=True).tolist() == [2]
    # equal votes: the lower class
    tie = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert knn_predict(tie, np.array([1, 0]), torch.tensor([[0.0, 1.0]]), k=2, num_classes=2).tolist() == [0]
    with pytest.raises(ConfigError, match="k must be"):
        knn_predict(bank, labels, query, k=0, num_classes=3)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_knn_predict_equals_brute_force(exclude_self):
    g = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(300, 16, generator=g), dim=1)
    labels = torch.randint(0, 7, (300,), generator=g).numpy()
    query = bank if exclude_self else torch.nn.functional.normalize(torch.randn(90, 16, generator=g), dim=1)
    got = knn_predict(bank, labels, query, k=20, num_classes=7, exclude_self=exclude_self, chunk=32)
    assert got.tolist() == _reference(bank, labels, query, 20, 7, exclude_self).tolist()


def test_evaluate_knn_uses_the_train_split_as_memory_bank_and_never_an_image_as_its_own_neighbour(
        tmp_path, tiny_h5, monkeypatch):
    (tmp_path / "pixels_model.py").write_text(textwrap.dedent("""
        import torch

        class Pixels(torch.nn.Module):
            def __init__(self, num_classes):
                super().__init__()
                self.fc = torch.nn.Linear(3 * 16 * 16, num_classes)

            def forward(self, x):
                return self.fc(x.flatten(1))

            def forward_embedding(self, x):
                return self(x), x[:, 1, -1, :8]  # 8 pixels of noise: no class band reaches them

        def pixels(*, num_classes):
            return Pixels(num_classes)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    runner = CliRunner()
    base = ["evaluate", "--model", "python:pixels_model:pixels", "--random-init", "--data", tiny_h5, "--size", "16",
            "--device", "cpu", "--workers", "0", "--json"]
    test = json.loads(runner.invoke(cli, base + ["--knn", "3"]).output)
    train = json.loads(runner.invoke(cli, base + ["--split", "train", "--knn", "1"]).output)
    assert test["knn_bank_images"] == 48 and test["images"] == 24 and test["knn_dim"] == 8
    # the reference: the same embeddings, brute force
    from kdcache._views import resolve_view_spec
    from kdcache.data import DataConfig
    from kdcache.models import create_model, model_cfg
    from kdcache.train._knn import embed_views

    spec = resolve_view_spec(model_cfg(model := create_model("python:pixels_model:pixels", num_classes=3)),
                             {"size": 16})
    bank, bank_labels = embed_views(model, spec, DataConfig(source=tiny_h5).open(), workers=0, device="cpu")
    query, labels = embed_views(model, spec, DataConfig(source=tiny_h5, split="test").open(), workers=0,
                                device="cpu")
    want_test = 100 * (_reference(bank, bank_labels, query, 3, 3) == labels).mean()
    want_train = 100 * (_reference(bank, bank_labels, bank, 1, 3, exclude_self=True) == bank_labels).mean()
    assert test["knn_top1"] == pytest.approx(want_test) and train["knn_top1"] == pytest.approx(want_train)
    assert train["knn_top1"] < 100.0  # with itself as a neighbour every image would be found (k = 1): 100%
    r = runner.invoke(cli, base[:-1] + ["--knn", "3"])
    assert "k-NN top-1" in r.output and "memory bank: the train split, 48 images" in r.output, r.output
