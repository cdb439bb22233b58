"""The pipeline on a real local Redis Cluster: shard keys (hash tags) spread over the nodes, every
multi-key script runs, and the ledger and results come out as on a single server."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from streamproc.keys import Keys
from tests.cluster import LocalCluster
from tests.conftest import DEMO_ONNX, DEMO_RULES, Figures, make_clip, read_report, streamproc


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path / "cluster").start()
    yield local
    local.stop()


def test_pipeline_on_redis_cluster(cluster: LocalCluster, tmp_path: Path, figures: Figures) -> None:
    clips = {f"cam{i}": make_clip(tmp_path / f"c{i}.mp4", 40 + 10 * i) for i in range(4)}
    config = {
        "redis": {"url": cluster.url, "cluster": True, "shards": 4},
        "sources": [{"name": n, "uri": str(p)} for n, p in clips.items()],
        "detector": {"model": str(DEMO_ONNX), "imgsz": 320},
        "alert": yaml.safe_load(DEMO_RULES.read_text()),
    }
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(config))
    report = tmp_path / "report.json"
    result = streamproc("run", "--config", str(path), "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_report(report)
    for i, name in enumerate(clips):
        cam = summary["cameras"][name]
        assert (cam["read"], cam["processed"], cam["results"], cam["unaccounted"]) == (40 + 10 * i,) * 3 + (0,)
    keys = Keys("sp", 4)
    nodes = {cluster.node_of(keys.frames(s)) for s in range(4)}
    assert len(nodes) >= 2, "the shard streams all landed on one node"
    status = streamproc("status", "--config", str(path), "--json")
    assert status.returncode == 0, status.stderr
    figures.add("cluster", f"{summary['frames_processed']} frames over 3 nodes (shards on nodes {sorted(nodes)}), "
                f"unaccounted {summary['unaccounted']}")  # fmt: skip
