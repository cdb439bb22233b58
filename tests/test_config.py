"""Config validation: unknown keys and bad values are one-line errors naming the key."""

from pathlib import Path

import pytest

from streamproc.config import PipelineConfig, load_rules, parse_source_flag, validate_config
from streamproc.errors import ConfigError


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config({"detector": {"confidence": 0.5}}, "config file x.yaml")
    message = str(err.value)
    assert "\n" not in message
    assert "detector.confidence" in message and "unknown key" in message and "x.yaml" in message


def test_bad_value_is_named() -> None:
    with pytest.raises(ConfigError) as err:
        validate_config({"sources": [{"name": "cam 1", "uri": "a.mp4"}]}, "flags")
    assert "sources.0.name" in str(err.value)


def test_duplicate_cameras_rejected() -> None:
    with pytest.raises(ConfigError, match="repeated: a"):
        validate_config({"sources": [{"name": "a", "uri": "x"}, {"name": "a", "uri": "y"}]}, "flags")


def test_defaults_mirror_ultralytics_predict() -> None:
    cfg = PipelineConfig()
    assert (cfg.detector.conf, cfg.detector.iou, cfg.detector.max_det, cfg.detector.imgsz) == (0.25, 0.7, 300, 640)
    assert cfg.detector.nms is None


def test_source_modes() -> None:
    cfg = validate_config(
        {
            "sources": [
                {"name": "file", "uri": "a.mp4"},
                {"name": "paced", "uri": "a.mp4", "realtime": True},
                {"name": "cam", "uri": "rtsp://user:pw@host/stream"},
            ]
        },
        "flags",
    )
    assert [s.effective_mode for s in cfg.sources] == ["lossless", "live", "live"]


def test_source_flag_form() -> None:
    assert parse_source_flag("cam=rtsp://h/s?a=b") == ("cam", "rtsp://h/s?a=b")
    with pytest.raises(ConfigError, match="NAME=URI"):
        parse_source_flag("just-a-uri")


def test_rules_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: r\n    classes: [a]\n    min_frame: 3\n")
    with pytest.raises(ConfigError, match=r"rules\.0\.min_frame: unknown key"):
        load_rules(bad)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("rules: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rules(unsafe)


def test_config_reference_is_current() -> None:
    from streamproc.config import config_reference

    reference = Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md"
    assert reference.read_text() == config_reference(), "run: python -m streamproc.config > docs/CONFIG.md"
