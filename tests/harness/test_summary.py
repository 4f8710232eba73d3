"""The live view's progress line: the ETA learns from the computed cells and their costs."""
from harness.summary import Progress


def test_progress_eta_learns_from_computed_cells_by_cost():
    p = Progress([10, 30, None, 20])                 # unknown cost: the mean of the known ones
    assert p.costs == [10, 30, 20, 20] and p.total == 80
    assert "ETA after the first computed cell" in p.line(0, 4)
    p.finished(0, None)                              # a skipped cell: work done, no time
    assert "ETA after the first computed cell" in p.line(1, 4)
    p.finished(1, 60.0)                              # 2 s per unit of cost
    line = p.line(2, 4)
    assert "2/4 cells, 50% of the estimated work" in line and "ETA 1m20s" in line
    assert line.startswith("[progress ##########          ]")
    two = Progress([10, 30, 20, 20], parallel=2)
    two.finished(1, 60.0)
    assert "ETA 50s" in two.line(1, 4)               # 50 units x 2 s / 2 workers
