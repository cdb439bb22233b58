"""`streamproc demo` end to end: the README's main job, scored against the line's ground truth."""

from pathlib import Path

from tests.conftest import Figures, read_report, streamproc


def test_demo_rejects_every_defective_part_once(tmp_path: Path, figures: Figures) -> None:
    report_path = tmp_path / "demo.json"
    result = streamproc("--log-level", "WARNING", "demo", "--report", str(report_path), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ALERT reject" in result.stdout and "summary:" in result.stdout
    report = read_report(report_path)
    score = report["line_score"]
    assert report["unaccounted"] == 0
    assert score["recall"] >= 0.95, score
    assert score["precision"] >= 0.95, score
    assert score["duplicate_alerts"] == 0 and score["false_rejects"] == 0, score
    cams = report["cameras"]
    assert cams["bottles"]["boxes"] > 0 and cams["parking"]["boxes"] > 0
    figures.add(
        "demo",
        f"{score['true_rejects']}/{score['defective_parts']} defective parts rejected, "
        f"{score['false_rejects']} false rejects, recall {score['recall']:.2f}, precision {score['precision']:.2f}, "
        f"reject latency p50 {score['latency_p50_ms']:.0f} ms p95 {score['latency_p95_ms']:.0f} ms",
    )
