"""`streamproc bench` smoke run: every variant runs and the JSON has the figures docs/BENCHMARKS.md
reads. (The numbers themselves are measured by the benchmark, not asserted by tests.)"""

import json
from pathlib import Path

from tests.conftest import DEMO_ONNX, Figures, streamproc


def test_bench_smoke(tmp_path: Path, figures: Figures) -> None:
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    result = streamproc(
        "--log-level", "WARNING", "bench", "--model", str(DEMO_ONNX), "--imgsz", "320", "--cameras", "2",
        "--duration", "3", "--warmup", "2", "--json", str(out), "--markdown", str(md), timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data["fps"]) == {"bare", "ultralytics_sequential", "ultralytics_threads", "pipeline"}
    assert all(v > 0 for v in data["fps"].values())
    assert data["ratio_pipeline_vs_bare"] > 0 and data["ratio_pipeline_vs_ultralytics"] > 0
    assert set(data["latency_ms"]) == {"p50", "p95", "p99"}
    assert data["saturated"]["unaccounted"] == 0 and data["loaded"]["unaccounted"] == 0
    assert set(data["cpu_steal_pct"]) == {"bare", "call_overhead", "ultralytics_sequential", "ultralytics_threads",
                                          "pipeline", "live"}  # fmt: skip
    assert all(0.0 <= v <= 100.0 for v in data["cpu_steal_pct"].values())
    assert "| pipeline |" in md.read_text()
    figures.add("bench smoke", f"fps {data['fps']}, c/a {data['ratio_pipeline_vs_bare']}, "
                f"c/b {data['ratio_pipeline_vs_ultralytics']} (a few seconds: not a measurement)")  # fmt: skip
