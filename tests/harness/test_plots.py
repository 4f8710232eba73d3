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
        xlabel = ax.get_xlabel() or fig.get_supxlabel()         # per panel, or shared by all
        ylabel = ax.get_ylabel() or fig.get_supylabel()
        assert xlabel and ylabel, f"unlabelled axes: {ax.get_title()!r}"
        assert ax.get_legend() is not None or fig.legends       # per panel, or one for all
    return axes


def _legend_texts(fig, axes):
    legends = [ax.get_legend() for ax in axes if ax.get_legend()] + list(fig.legends)
    return [t.get_text() for leg in legends for t in leg.get_texts()]


@pytest.mark.parametrize("name", list(plots.FIGURES))
def test_every_figure_on_the_synthetic_frame(tables, name, tmp_path):
    table_name, fn = plots.FIGURES[name]
    fig = fn(tables[table_name].frame)
    axes = _check(fig)
    labels = _legend_texts(fig, axes)
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


def test_collapse_draws_curves_not_single_k_windows(tables):
    """A store that also holds one-K cells at other windows (a depth part, a window scan) adds no
    point per window to the collapse panels: only windows with a curve are drawn."""
    import pandas as pd
    col = tables["collapse"].frame
    panel = col[col["k"].notna() & (col["status"] == "ok")]
    one = panel.iloc[[0]].assign(window="0:1", k=3.0, integrator="naive")
    before = plots.plot_collapse(col)
    after = plots.plot_collapse(pd.concat([col, one], ignore_index=True))
    lines = lambda fig: [len(ax.get_lines()) for ax in fig.axes]         # noqa: E731
    assert lines(after) == lines(before)


def test_depth_band_and_moe_models(tables):
    fig = plots.plot_depth(tables["depth"].frame)
    assert "depth fraction" in fig.get_supxlabel()
    assert any("0.43-0.71" in t for t in _legend_texts(fig, fig.axes))
    # small multiples with shared axes, no K = 1 panel, at most 1600 x 1600 px
    assert all("K=1" not in ax.get_title() for ax in fig.axes)
    assert all(ax.get_shared_y_axes().joined(fig.axes[0], ax) for ax in fig.axes)
    w, h = fig.get_size_inches() * fig.dpi
    assert w <= 1600 and h <= 1600, (w, h)
    # one panel per model x task x K with a line (two windows or more), each titled with its model
    d = tables["depth"].frame
    d = d[(d["k"] > 1) & d["window_centre"].notna()]
    lines = d.groupby(["model_name", "task", "k", "integrator", "window_width", "variant"],
                      dropna=False)["window_centre"].nunique()
    panels = {key[:3] for key, n in lines.items() if n > 1}
    assert len(fig.axes) == len(panels) > 1
    for ax in fig.axes:
        assert any(m in ax.get_title() for m in d["model_name"].unique()), ax.get_title()
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


def _strategy_colours(fig) -> dict:
    """{strategy: colours} of every line / errorbar / bar labelled by a strategy name."""
    from matplotlib.colors import to_hex

    out: dict = {}
    for ax in fig.axes:
        for artist in [*ax.get_lines(), *ax.containers]:
            label = str(artist.get_label()).split(" ")[0]
            if label in ("naive", "euler", "anchored"):
                if hasattr(artist, "get_color"):
                    c = artist.get_color()
                elif hasattr(artist, "lines"):               # an errorbar container
                    c = artist.lines[0].get_color()
                else:                                        # a bar container
                    c = artist.patches[0].get_facecolor()
                out.setdefault(label, set()).add(to_hex(c))
    return out


@pytest.mark.parametrize("name", ["collapse", "strategy_k", "depth", "cost"])
def test_one_colour_per_strategy_in_every_figure(tables, name):
    table_name, fn = plots.FIGURES[name]
    found = _strategy_colours(fn(tables[table_name].frame))
    assert found, f"{name}: no strategy drawn"
    for strategy, colours in found.items():
        assert colours == {plots.colour(strategy)}, (name, strategy, colours)


def test_trajectory_figures_use_the_palette():
    import numpy as np
    import pandas as pd

    from harness.trajectory import Landscape, trajectory_figures

    rows = [dict(strategy=s, step=i, suffix_loss=1.0, suffix_kl=0.1, lens_top1=0.5, norm=1.0,
                 cos_prev=0.9, dist_from_plain=0.1) for s in ("naive", "euler", "anchored")
            for i in range(3)]
    a = np.linspace(-1, 1, 3)
    land = Landscape(a=a, b=a, loss=np.ones((3, 3)), explained=(0.6, 0.3),
                     paths={s: np.zeros((3, 2)) for s in ("naive", "euler", "anchored")})
    for fig in trajectory_figures(pd.DataFrame(rows), land):
        found = _strategy_colours(fig)
        assert set(found) == {"naive", "euler", "anchored"}
        assert all(c == {plots.colour(s)} for s, c in found.items())


def test_report_twice_gives_byte_identical_figures(tmp_path):
    """A second report from the same cells rewrites the figures byte for byte (no PDF
    CreationDate), so a second `sweep.py experiment=demo` leaves committed results clean."""
    import time

    from harness import store
    from harness.report import make_report
    from tests.harness.test_store import record

    store.write_record(tmp_path / "s", record("aaaa00000000"))
    store.write_record(tmp_path / "s", record("base00000000", loop=False))

    def run(name):
        make_report(tmp_path / "s", tmp_path / name, n_boot=20, log=lambda *a: None)
        return {p.name: p.read_bytes() for p in sorted((tmp_path / name / "figures").iterdir())}

    first = run("a")
    assert any(name.endswith(".pdf") for name in first)
    time.sleep(1.1)                          # a creation date would now differ by a second
    assert run("b") == first
