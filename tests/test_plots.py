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


def test_missing_run_folder_or_output_folder_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        plots.main(["--out", str(tmp_path / "x.png"), f"A={tmp_path / 'nothing'}"])
    assert "metrics.jsonl does not exist" in capsys.readouterr().err
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 0.5}) + "\n")
    with pytest.raises(SystemExit):
        plots.main(["--out", str(tmp_path / "nodir" / "x.png"), f"A={tmp_path / 'a'}"])
    assert "nodir does not exist" in capsys.readouterr().err
