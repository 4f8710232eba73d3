"""harness.plots: every figure function runs on the synthetic multi-model frame (dense + MoE,
several strategies, K 1..6, three windows, a failed and a missing cell) and returns a Figure whose
axes are labelled, with the baseline drawn; empty inputs give a labelled placeholder, not a crash."""
import matplotlib
import pytest
from matplotlib.figure import Figure

from harness import plots, report
from tests.harness.test_report import make_frames


@pytest.fixture(scope="module")
def tables():
    res, smp = make_frames(n_docs=40)
    return {t.name: t for t in report.build_tables(res, smp, n_boot=100)}


def _check(fig):
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.has_data()]
    assert axes, "no axes with data"
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel(), f"unlabelled axes: {ax.get_title()!r}"
        assert ax.get_legend() is not None
    return axes


@pytest.mark.parametrize("name", list(plots.FIGURES))
def test_every_figure_on_the_synthetic_frame(tables, name, tmp_path):
    table_name, fn = plots.FIGURES[name]
    fig = fn(tables[table_name].frame)
    axes = _check(fig)
    labels = [t.get_text() for ax in axes for t in ax.get_legend().get_texts()]
    assert any("baseline" in lab or "plain model" in lab for lab in labels), labels
    fig.savefig(tmp_path / f"{name}.png")
    assert (tmp_path / f"{name}.png").stat().st_size > 1000


def test_collapse_units_strategies_and_failed_marker(tables):
    fig = plots.plot_collapse(tables["collapse"].frame)
    ax = fig.axes[0]
    assert "K" in ax.get_xlabel() and "%" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    for strategy in ("naive", "euler", "anchored"):
        assert any(lab.startswith(strategy) for lab in labels)
    assert "failed / missing" in labels and "not ok" in ax.get_title()


def test_depth_band_and_moe_models(tables):
    fig = plots.plot_depth(tables["depth"].frame)
    assert "depth fraction" in fig.axes[0].get_xlabel()
    assert any("0.43-0.71" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    fig = plots.plot_moe(tables["moe"].frame)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["moe-b"]


def test_cost_has_time_and_passes_panels(tables):
    fig = plots.plot_cost(tables["cost"].frame)
    ylabels = {ax.get_ylabel() for ax in fig.axes}
    assert "wall time (s)" in ylabels and "window passes (per forward)" in ylabels


def test_empty_inputs_and_backend(tables):
    assert matplotlib.get_backend().lower() == "agg"
    for name, (table_name, fn) in plots.FIGURES.items():
        fig = fn(tables[table_name].frame.iloc[:0])
        assert isinstance(fig, Figure) and fig.axes[0].get_xlabel()
    with pytest.raises(ValueError):
        plots.plot_strategy(tables["strategy_k"].frame, by="wall")
