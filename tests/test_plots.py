"""python -m xnornet.plots: one chart from several runs' metrics (run folders or CSV files)."""
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
    assert "nothing does not exist" in capsys.readouterr().err
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 0.5}) + "\n")
    with pytest.raises(SystemExit):
        plots.main(["--out", str(tmp_path / "nodir" / "x.png"), f"A={tmp_path / 'a'}"])
    assert "nodir does not exist" in capsys.readouterr().err


def test_runs_from_csv_files_and_folders_with_only_a_csv(tmp_path, capsys):
    """The per-epoch CSVs kept in docs/results/ plot as they are; a folder with only
    metrics.csv too; a CSV without the columns is a usage error naming the file."""
    table = "epoch,train_acc,test_acc\n1,0.3,0.40\n2,0.5,0.55\n"
    (tmp_path / "run.csv").write_text(table)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "metrics.csv").write_text(table)
    assert [(r["epoch"], r["test_acc"]) for r in plots.read_history(tmp_path / "run.csv")] == [(1, 0.40), (2, 0.55)]
    assert plots.read_history(tmp_path / "d") == plots.read_history(tmp_path / "run.csv")
    out = tmp_path / "x.png"
    assert plots.main(["--out", str(out), f"A={tmp_path / 'run.csv'}", f"B={tmp_path / 'd'}"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name, text, why in [("bad.csv", "epoch,loss\n1,2.0\n", "row 1 has no numeric epoch and test_acc"),
                            ("short.csv", "epoch,test_acc\n1,0.4\n2\n", "row 2 has no numeric epoch and test_acc"),
                            ("text.csv", "epoch,test_acc\n1,abc\n", "row 1 has no numeric epoch and test_acc"),
                            ("header.csv", "epoch,test_acc\n", "no epochs in it")]:
        (tmp_path / name).write_text(text)
        with pytest.raises(SystemExit):
            plots.main(["--out", str(out), f"A={tmp_path / name}"])
        assert f"{name}: {why}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        plots.main(["--out", str(out), f"A={tmp_path / 'empty'}"])
    assert "holds neither metrics.jsonl nor metrics.csv" in capsys.readouterr().err


def test_a_folder_prefers_metrics_jsonl_and_checks_it(tmp_path, capsys):
    """`xnornet train --out` writes both files: the JSON lines are read; an empty or broken one
    is a usage error naming it, not a traceback."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,test_acc\n1,0.1\n")
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 0.9, "lr": 0.1}) + "\n")
    assert plots.read_history(run) == [{"epoch": 1, "test_acc": 0.9, "lr": 0.1}]
    for text, why in [("", "no epochs in it"), ('{"epoch": 1}\n', "row 1 has no numeric epoch and test_acc"),
                      ("{not json\n", "cannot read it")]:
        (run / "metrics.jsonl").write_text(text)
        with pytest.raises(SystemExit):
            plots.main(["--out", str(tmp_path / "x.png"), f"A={run}"])
        assert f"metrics.jsonl: {why}" in capsys.readouterr().err
