"""python -m xnornet.plots: one chart from several runs' metrics.jsonl."""
import json

import pytest

from xnornet import plots


def test_plot_runs_from_metrics_files(tmp_path):
    for name, acc in (("a", 0.5), ("b", 0.7)):
        (tmp_path / name).mkdir()
        rows = [{"epoch": e, "test_acc": acc * e / 3} for e in (1, 2, 3)]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "runs.png"
    assert plots.main(["--out", str(out), f"A={tmp_path / 'a'}", f"B={tmp_path / 'b'}"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        plots.main(["--out", str(out), str(tmp_path / "a")])  # no NAME=
