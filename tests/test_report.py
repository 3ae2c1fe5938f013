"""kdcache plot / kdcache._report: curves and a side-by-side table from real run directories."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from kdcache.cli.main import cli

from kdcache._report import read_metrics, summarize_run
from kdcache.errors import RunError, RunNotFoundError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(*args, ok: bool = True):
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


@pytest.fixture
def two_runs(tmp_path, tiny_h5):
    common = ["--data", tiny_h5, "--teacher", "cnn_tiny", "--size", "16", "--batch-size", "16", "--workers", "0",
              "--no-progress"]
    run("train-teacher", *common, "--epochs", "2", "--val-fraction", "0.25", "--out", tmp_path / "a")
    run("train-teacher", *common, "--epochs", "1", "--val-split", "none", "--out", tmp_path / "b")
    return tmp_path / "a", tmp_path / "b"


def test_plot_draws_a_png_and_tabulates_both_runs(tmp_path, two_runs):
    a, b = two_runs
    out = tmp_path / "curves.png"
    res = run("plot", a, b, "--out", out)
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000
    from matplotlib.image import imread

    assert imread(str(out)).shape[:2] == (462, 1210)  # 11 x 4.2 inches at 110 dpi
    lines = res.output.splitlines()
    assert lines[0].split()[:3] == ["run", "epochs", "val"]
    row_a = next(line for line in lines if line.startswith(str(a)))
    row_b = next(line for line in lines if line.startswith(str(b)))
    sa = summarize_run(a)
    assert f"{sa['best_top1']:.2f}" in row_a and row_a.split()[1] == "2"
    assert row_b.split()[1] == "1" and " - " in row_b  # no validation: no top-1
    assert sa["wall_seconds"] > 0 and sa["final_train_loss"] > 0
    summary = json.loads(run("plot", a, b, "--out", out, "--metric", "train/lr", "--json").output)
    assert [s["epochs"] for s in summary["runs"]] == [2, 1]


@pytest.mark.parametrize("setup,args,needle", [
    (lambda d: d.mkdir(), [], "has no metrics.jsonl"),
    (lambda d: None, [], "does not exist"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("")), [], "records no epoch"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text("{oops\n")), [], "line 1"),
    (lambda d: (d.mkdir(), (d / "metrics.jsonl").write_text('{"epoch": 0, "train/loss": 1.0}\n')),
     ["--metric", "val/top1"], "recorded metrics: train/loss"),
])
def test_plot_bad_input_gives_one_line_error(tmp_path, setup, args, needle):
    d = tmp_path / "run"
    setup(d)
    res = run("plot", d, "--out", tmp_path / "c.png", *args, ok=False)
    assert res.exit_code == 1 and needle in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "c.png").exists()


def test_a_resumed_run_keeps_the_last_row_of_each_epoch(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    rows = [{"epoch": 0, "train/loss": 2.0, "val/top1": 10.0}, {"epoch": 1, "train/loss": 1.5, "val/top1": 30.0},
            {"epoch": 1, "train/loss": 1.4, "val/top1": 20.0}, {"epoch": 2, "train/loss": 1.0, "val/top1": 25.0}]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["train/loss"] for r in read_metrics(d)] == [2.0, 1.4, 1.0]
    s = summarize_run(d)
    assert (s["epochs"], s["final_top1"], s["best_top1"], s["best_epoch"]) == (3, 25.0, 25.0, 3)
    assert s["wall_seconds"] is None
    with pytest.raises(RunNotFoundError):
        read_metrics(tmp_path / "nope")
    assert issubclass(RunNotFoundError, (RunError, FileNotFoundError))


def _write_run(d, rows):
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, **r}) + "\n" for e, r in enumerate(rows)))
    return d


@pytest.fixture
def kd_and_labels_only(tmp_path):
    """A distilled run (total loss ~9: its KD term is x T^2) and a labels-only run (loss ~1.6), as recorded."""
    kd = _write_run(tmp_path / "kd", [{"train/loss": 9.5, "train/task_loss": 1.7, "train/kd_loss": 17.0,
                                       "train/teacher_agreement": 0.75, "val/top1": 40.0},
                                      {"train/loss": 8.5, "train/task_loss": 1.4, "train/kd_loss": 15.0,
                                       "train/teacher_agreement": 0.8125, "val/top1": 50.0}])
    plain = _write_run(tmp_path / "plain", [{"train/loss": 1.8, "train/task_loss": 1.8, "train/kd_loss": 0.0,
                                             "val/top1": 35.0},
                                            {"train/loss": 1.6, "train/task_loss": 1.6, "train/kd_loss": 0.0,
                                             "val/top1": 45.0}])
    return kd, plain


def test_the_loss_panel_compares_the_loss_every_run_shares(kd_and_labels_only):
    from kdcache._report import curves_figure

    kd, plain = kd_and_labels_only
    fig = curves_figure({str(kd): read_metrics(kd), str(plain): read_metrics(plain)})
    loss_panel = fig.axes[0]
    assert [list(line.get_ydata()) for line in loss_panel.lines] == [[1.7, 1.4], [1.8, 1.6]]  # not 9.5 beside 1.8
    assert "labels" in loss_panel.get_ylabel() and "cross-entropy" in loss_panel.get_title()


def test_every_line_has_a_legend_entry_and_agreement_is_in_percent(kd_and_labels_only):
    from kdcache._report import curves_figure

    kd, plain = kd_and_labels_only
    fig = curves_figure({str(kd): read_metrics(kd), str(plain): read_metrics(plain)},
                        metric="train/teacher_agreement")
    legend = fig.axes[1].get_legend()
    entries = {t.get_text(): h.get_color() for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert entries.keys() == {str(kd), f"{plain} (no train/teacher_agreement)"}
    for ax in fig.axes:  # each line drawn has an entry of its colour: the same run, the same colour in both panels
        for line in ax.lines:
            name = line.get_label().split(" (no ")[0]
            assert entries[next(k for k in entries if k.startswith(name))] == line.get_color()
    (agree,) = fig.axes[1].lines
    assert list(agree.get_ydata()) == [75.0, 81.25] and fig.axes[1].get_ylabel() == "train/teacher_agreement (%)"


def test_the_table_shows_agreement_in_percent_beside_top1(kd_and_labels_only):
    kd, plain = kd_and_labels_only
    res = run("plot", kd, plain, "--out", kd.parent / "c.png")
    header, _, row_kd, row_plain = res.output.splitlines()[:4]
    assert "agree %" in header and "label CE" in header
    assert row_kd.split()[-2] == "81.25"  # agree %, before wall s
    assert "0.812" not in row_kd and "1.4000" in row_kd and "1.6000" in row_plain
