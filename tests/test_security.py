"""Security: Redis AUTH with ACL users over TLS, the minimal ACL of each worker as documented in
docs/SECURITY.md, no credentials in output or in Redis, and no unsafe deserialisation in the source."""

from __future__ import annotations

import ast
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import psutil
import pytest
import redis
import yaml

from streamproc.config import RedisConfig, load_yaml
from streamproc.errors import ConfigError
from streamproc.keys import FRAMES_GROUP, Keys
from streamproc.ledger import read_ledgers
from streamproc.messages import Alert, Box, Detection
from streamproc.observe import pipeline_idle
from streamproc.redact import RedactingFilter, RedactingFormatter, redact
from streamproc.transport import Streams, connect
from tests.conftest import DEMO_ONNX, REPO, Figures, make_clip, read_report, streamproc
from tests.tls import AclUser, Certs, TLSRedisServer, make_certs, new_password

DOC = REPO / "docs" / "SECURITY.md"
MODEL = [str(DEMO_ONNX) if DEMO_ONNX.exists() else "yolo26n.yaml"]
DETECTOR = {"model": MODEL[0], "imgsz": 320}
RTSP_SECRET = "hunter2"
KEYS = Keys()


# -- the documented ACL ---------------------------------------------------------------------------------


def documented_acl() -> dict[str, tuple[str, ...]]:
    """User name -> ACL rules, from the ``user ...`` lines between the acl markers of docs/SECURITY.md
    (without ``on`` and the password, which the tests choose)."""
    text = DOC.read_text(encoding="utf-8")
    block = text.split("<!-- acl:begin", 1)[1].split("<!-- acl:end -->", 1)[0]
    users = {}
    for line in block.splitlines():
        tokens = line.split()
        if tokens[:1] == ["user"]:
            users[tokens[1]] = tuple(t for t in tokens[2:] if t != "on" and not t.startswith((">", "#")))
    return users


def test_doc_lists_every_worker() -> None:
    assert set(documented_acl()) == {"sp-ingest", "sp-detect", "sp-alert", "sp-status", "sp-tail", "sp-run"}


# -- fixtures and helpers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def users() -> dict[str, AclUser]:
    return {name: AclUser(name, new_password(), rules) for name, rules in documented_acl().items()}


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certs: Certs, users: dict[str, AclUser]
) -> Iterator[TLSRedisServer]:
    """Mutual TLS only (no plain port, client certificates required), default user off, the documented users."""
    server = TLSRedisServer(
        certs, users=list(users.values()), auth_clients="yes", data_dir=tmp_path_factory.mktemp("redis-tls")
    ).start()
    yield server
    server.cleanup()


@pytest.fixture
def server(tls_server: TLSRedisServer) -> Iterator[TLSRedisServer]:
    """The shared TLS server, emptied, with an empty ACL LOG."""
    with tls_server.client() as admin:
        admin.flushall()
        admin.acl_log_reset()
    yield tls_server


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    path.chmod(0o600)
    return path


def config_for(tmp_path: Path, server: TLSRedisServer, user: AclUser, **sections: Any) -> Path:
    return write_config(tmp_path / f"{user.name}.yaml", {"redis": server.redis_config(user), **sections})


def denials(server: TLSRedisServer) -> list[tuple[str, str, str, str]]:
    """(user, reason, object, context) of every ACL LOG entry: commands and keys refused."""
    return [(str(d["username"]), str(d["reason"]), str(d["object"]), str(d["context"])) for d in server.acl_denials()]


class Worker:
    """A streamproc command running in the background, its output in files."""

    def __init__(self, tmp_path: Path, name: str, *args: str) -> None:
        self.name = name
        self.out_path, self.err_path = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        self._out: IO[bytes] = self.out_path.open("wb")
        self._err: IO[bytes] = self.err_path.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "workers", *args], stdout=self._out, stderr=self._err)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._out.close()
        self._err.close()
        return code

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    workers: list[Worker],
    server: TLSRedisServer,
    state: Callable[[], object] = lambda: "",
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {w.name} ({w.process.poll()}):\n{w.stderr[-1500:]}" for w in workers)
            pytest.fail(f"timed out waiting for {what} ({state()}); ACL denials {denials(server)}\n{tails}")
        time.sleep(0.2)


def probe_detection(seq: int = 0) -> Detection:
    """A detection of camera ``probe`` the probe rule fires on, whatever the model under test finds."""
    box = Box(0, "person", 0.9, (10.0, 10.0, 120.0, 200.0))
    return Detection("probe", seq, seq - 1, float(seq), time.time(), 320, 240, "probe", "ok", (box,), {})


PROBE_RULE = {"name": "probe", "classes": ["person"], "min_conf": 0.5, "min_frames": 1, "cameras": ["probe"]}


def dump_redis(client: redis.Redis) -> str:
    """Every key and value in the server, as text (for looking for secrets)."""
    out = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = kind
        out.append(f"{key!r} {value!r}")
    return "\n".join(out)


# -- AUTH + TLS + ACL: each worker with only its documented rules ------------------------------------------


def test_each_worker_runs_with_only_its_documented_acl(
    server: TLSRedisServer, users: dict[str, AclUser], tmp_path: Path, figures: Figures
) -> None:
    """ingest, detect, alert, status and tail as separate processes, each logged in as its own user over
    mutual TLS. Besides the normal path, the rare paths run too: the fps cap leaves counters for ingest's
    final flush (MULTI/EXEC), a garbage frame pending on a dead consumer makes the detector claim and
    dead-letter it, and a probe detection makes the alerter publish an alert. Redis must refuse nothing."""
    clip = make_clip(tmp_path / "clip.mp4", 30)
    admin = server.client()
    shard = KEYS.shard_of("cam")
    admin.xgroup_create(KEYS.frames(shard), FRAMES_GROUP, id="0", mkstream=True)
    admin.xadd(KEYS.frames(shard), {"v": "1", "cam": "cam", "seq": "garbage"})
    admin.xreadgroup(FRAMES_GROUP, "ghost", {KEYS.frames(shard): ">"}, count=1)
    admin.xadd(KEYS.detections(KEYS.shard_of("probe")), probe_detection().to_fields())

    sections: dict[str, Any] = {
        "detector": {**DETECTOR, "claim_idle_ms": 200},
        "alert": {"rules": [PROBE_RULE]},
        "sources": [{"name": "cam", "uri": str(clip), "fps": 10}],  # 25 fps clip: 12 of 30 frames kept
    }
    cfg = {name: config_for(tmp_path, server, users[name], **sections) for name in users}
    started = time.monotonic()
    workers = [
        Worker(tmp_path, "detect", "detect", "--config", str(cfg["sp-detect"])),
        Worker(tmp_path, "alert", "alert", "--config", str(cfg["sp-alert"])),
        Worker(tmp_path, "ingest", "ingest", "--config", str(cfg["sp-ingest"])),
    ]
    try:

        def done() -> bool:
            cam = read_ledgers(admin, KEYS, ["cam"])["cam"]
            return (
                workers[2].process.poll() is not None
                and cam.read == 30
                and cam.in_flight == 0
                and admin.xlen(KEYS.dead(shard)) == 1
                and admin.xlen(KEYS.alerts(KEYS.shard_of("probe"))) >= 1
                and pipeline_idle(admin, KEYS)
            )

        def state() -> object:
            return (
                read_ledgers(admin, KEYS, ["cam"]),
                admin.xlen(KEYS.dead(shard)),
                admin.xlen(KEYS.alerts(KEYS.shard_of("probe"))),
                pipeline_idle(admin, KEYS),
            )

        wait_for(done, 150, "every frame processed and the probe alert", workers, server, state)
        elapsed = time.monotonic() - started
    finally:
        codes = {w.name: w.stop() for w in workers}
    assert denials(server) == [], "\n".join(w.stderr[-1500:] for w in workers)
    assert codes == {"detect": 0, "alert": 0, "ingest": 0}, "\n".join(w.stderr[-1500:] for w in workers)
    for w in workers:
        assert "Traceback" not in w.stderr, w.stderr[-3000:]

    status = streamproc("status", "--json", "--config", str(cfg["sp-status"]), timeout=60)
    assert status.returncode == 0, status.stderr
    cam = json.loads(status.stdout)["cameras"]["cam"]
    assert (cam["read"], cam["processed"], cam["dropped"], cam["in_flight"], cam["unaccounted"]) == (
        30, 12, {"fps_cap": 18}, 0, 0,
    )  # fmt: skip
    assert json.loads(status.stdout)["streams"][KEYS.dead(shard)]["length"] == 1
    assert admin.hget(KEYS.ledger(shard, "_invalid"), "dead_lettered") == b"1"
    text = streamproc("status", "--config", str(cfg["sp-status"]), timeout=60)
    assert text.returncode == 0 and "cam" in text.stdout, text.stderr

    for kind, count, extra in (("detections", 3, ["--camera", "cam"]), ("alerts", 1, []), ("dead", 1, [])):
        tail = streamproc("tail", kind, "--from-start", "--count", str(count), *extra,
                          "--config", str(cfg["sp-tail"]), timeout=60)  # fmt: skip
        assert tail.returncode == 0, tail.stderr
        assert len(tail.stdout.splitlines()) == count
    # tail from the end (no --from-start) pins each stream's last id first
    follower = Worker(tmp_path, "tail", "tail", "alerts", "--count", "1", "--config", str(cfg["sp-tail"]))
    try:
        deadline = time.monotonic() + 60
        while follower.process.poll() is None and time.monotonic() < deadline:
            admin.xadd(KEYS.alerts(0), _probe_alert().to_fields())
            time.sleep(0.3)
    finally:
        assert follower.stop() == 0, follower.stderr
    assert json.loads(follower.stdout.splitlines()[0])["rule"] == "probe"
    assert denials(server) == []

    # the detector's rarest path (forgetting consumers gone for minutes) with the detector's user
    detect_cfg = RedisConfig.model_validate(server.redis_config(users["sp-detect"]))
    as_detect = Streams(connect(detect_cfg, str(detect_cfg.url)), KEYS)
    assert "ghost" in as_detect.idle_consumers(KEYS.frames(shard), FRAMES_GROUP, 0)
    assert as_detect.delete_consumer_if_idle(KEYS.frames(shard), FRAMES_GROUP, "ghost")
    as_detect.client.close()
    assert denials(server) == []

    # results, alerts and dead letters carry camera names, never the source's URI
    for key in (KEYS.detections(shard), KEYS.alerts(KEYS.shard_of("probe")), KEYS.dead(shard)):
        for _, fields in admin.xrange(key):
            values = b" ".join(v for k, v in fields.items() if k != b"data")
            assert b"://" not in values and str(clip).encode() not in values
    assert {f.name for f in Alert.__dataclass_fields__.values()}.isdisjoint({"uri", "source", "url"})
    admin.close()
    figures.add(
        "security",
        f"per-worker ACL users over mutual TLS: 30 frames read, 12 processed (18 over the fps cap), "
        f"1 garbage frame claimed and dead-lettered, 1 probe alert, 0 ACL denials, in {elapsed:.1f} s",
    )


def _probe_alert() -> Alert:
    return Alert("probe", 1, 0, "person", 0.9, (1.0, 2.0, 3.0, 4.0), 0, 0.0, time.time(), "probe", "alert", 1.0)


def test_run_through_tls_with_the_run_user(
    server: TLSRedisServer, users: dict[str, AclUser], tmp_path: Path, figures: Figures
) -> None:
    """`streamproc run --config` with rediss://USER:PASS@ in the file: every frame processed, nothing
    refused, and the children's command lines hold only the path of a private (0600) config file."""
    clip = make_clip(tmp_path / "clip.mp4", 40)
    user = users["sp-run"]
    cfg = config_for(tmp_path, server, user, detector=DETECTOR, sources=[{"name": "cam", "uri": str(clip)}])
    report_path = tmp_path / "report.json"
    run = Worker(tmp_path, "run", "run", "--config", str(cfg), "--report", str(report_path))
    cmdlines: dict[int, list[str]] = {}
    modes: dict[str, tuple[int, int]] = {}
    try:
        parent = psutil.Process(run.process.pid)
        deadline = time.monotonic() + 150
        while run.process.poll() is None and time.monotonic() < deadline:
            for child in parent.children(recursive=True):
                try:
                    argv = child.cmdline()
                except psutil.Error:
                    continue
                cmdlines[child.pid] = argv
                if "--resolved-config" in argv:
                    path = Path(argv[argv.index("--resolved-config") + 1])
                    with contextlib.suppress(FileNotFoundError):
                        modes[str(path)] = (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777)
            time.sleep(0.1)
    finally:
        code = run.stop(timeout=30)
    assert code == 0, run.stderr[-3000:]
    assert len(cmdlines) >= 3, cmdlines  # ingest, a detector, the alerter
    assert all(user.password not in " ".join(argv) for argv in cmdlines.values())
    assert modes and set(modes.values()) == {(0o600, 0o700)}, modes
    assert not any(Path(p).exists() for p in modes), "the private config outlived the run"

    report = read_report(report_path)
    assert report["frames_read"] == report["frames_processed"] == 40
    assert report["unaccounted"] == 0
    assert report["cameras"]["cam"]["results"] == 40
    assert denials(server) == []
    for text in (run.stdout, run.stderr, report_path.read_text()):
        assert user.password not in text
    assert "://" not in report_path.read_text() and str(clip) not in report_path.read_text()
    figures.add(
        "security",
        f"`streamproc run` over TLS as one ACL user: {report['frames_processed']}/{report['frames_read']} frames "
        f"in {report['duration_s']} s, unaccounted {report['unaccounted']}",
    )


# -- failures: one line, credentials redacted ---------------------------------------------------------------


def test_wrong_credentials_or_untrusted_server_fail_with_one_line(tmp_path: Path, certs: Certs) -> None:
    """A server with users from --user arguments and a password-protected default user, TLS clients
    without certificates allowed: a wrong password, an unknown user (from the environment) and an
    untrusted server certificate each give one line naming the redacted URL, and exit 2."""
    status = AclUser("sp-status", new_password(), documented_acl()["sp-status"])
    short = AclUser("sp-short", new_password(), tuple(r for r in status.rules if r != "+xlen"))
    default_password = new_password()
    data = tmp_path / "redis"
    data.mkdir()
    with TLSRedisServer(
        certs, users=[status, short], default_password=default_password, auth_clients="optional", acl="args",
        data_dir=data,
    ) as server:  # fmt: skip
        with redis.Redis.from_url(server.url_for("default", default_password), ssl_ca_certs=str(certs.ca)) as default:
            assert default.ping()
        ok = write_config(tmp_path / "ok.yaml", {"redis": server.redis_config(status, client_cert=False)})
        assert streamproc("status", "--config", str(ok), timeout=60).returncode == 0

        wrong = "Wrong-" + new_password()
        cases: list[tuple[str, Path, dict[str, str], str]] = [
            (
                "wrong password",
                write_config(tmp_path / "wrong.yaml", {"redis": server.redis_config(status, wrong, client_cert=False)}),
                {},
                "check the user and password",
            ),
            (
                "unknown user",
                write_config(tmp_path / "ca-only.yaml", {"redis": {"tls_ca": str(certs.ca)}}),
                {"STREAMPROC_REDIS_URL": server.url_for("nobody", wrong)},
                "check the user and password",
            ),
            (
                "untrusted server",
                write_config(tmp_path / "no-ca.yaml", {"redis": {"url": server.url_for(status)}}),
                {},
                "certificate verify failed",
            ),
        ]
        for what, config, env, expected in cases:
            result = streamproc(
                "status", "--config", str(config), timeout=60, env={**os.environ, "STREAMPROC_REDIS_URL": "", **env}
            )
            lines = result.stderr.strip().splitlines()
            assert result.returncode == 2, (what, result.stderr)
            assert len(lines) == 1 and "Traceback" not in result.stderr, (what, result.stderr)
            assert lines[0].startswith(f"streamproc: error: Redis at rediss://***@127.0.0.1:{server.port}/0 "), lines
            assert expected in lines[0], (what, lines[0])
            for secret in (wrong, status.password, default_password):
                assert secret not in result.stderr + result.stdout

        # a user without one of the documented rules: one line naming the refused command
        config = write_config(tmp_path / "short.yaml", {"redis": server.redis_config(short, client_cert=False)})
        result = streamproc("status", "--config", str(config), timeout=60)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines() == [
            "streamproc: error: Redis refused a command (this user has no permissions to run the 'xlen' command): "
            "the Redis user lacks an ACL rule (see docs/SECURITY.md for the rules of each worker)"
        ]


def test_credentials_never_leave_the_process(server: TLSRedisServer, users: dict[str, AclUser], tmp_path: Path) -> None:
    """An unreachable RTSP camera with a password, ingest logging at DEBUG: neither its password nor
    Redis's appear in the output, in `status` (text and JSON), in the camera states, the heartbeats,
    or anywhere in Redis."""
    camera_uri = f"rtsp://admin:{RTSP_SECRET}@127.0.0.1:9/cam"
    cfg = config_for(
        tmp_path, server, users["sp-ingest"],
        ingest={"reconnect_initial_s": 0.2, "reconnect_max_s": 0.5},
        sources=[{"name": "door", "uri": camera_uri, "open_timeout_s": 1}],
    )  # fmt: skip
    status_cfg = config_for(tmp_path, server, users["sp-status"])
    admin = server.client()
    ingest = Worker(tmp_path, "ingest", "--log-level", "DEBUG", "ingest", "--config", str(cfg))
    try:

        def reconnecting() -> bool:
            state = json.loads(admin.hget(KEYS.camera_state, "door") or b"{}")
            return (
                state.get("state") == "reconnecting"
                and "cannot open" in state.get("error", "")
                and bool(admin.hlen(KEYS.workers))
            )

        wait_for(reconnecting, 30, "the camera to be reconnecting", [ingest], server)
        time.sleep(1.0)  # a few more reconnects and heartbeats
        status_json = streamproc("status", "--json", "--config", str(status_cfg), timeout=60)
        status_text = streamproc("status", "--config", str(status_cfg), timeout=60)
        camstate, heartbeats, everything = (
            repr(admin.hgetall(KEYS.camera_state)), repr(admin.hgetall(KEYS.workers)), dump_redis(admin),
        )  # fmt: skip
    finally:
        code = ingest.stop()
    admin.close()
    assert code == 0, ingest.stderr[-2000:]
    assert status_json.returncode == 0 and status_text.returncode == 0, status_json.stderr + status_text.stderr
    door = json.loads(status_json.stdout)["cameras"]["door"]
    assert door["uri"] == "rtsp://***@127.0.0.1:9/cam" and door["state"] == "reconnecting"
    assert "rtsp://***@127.0.0.1:9/cam" in ingest.stderr  # the camera is named, redacted
    assert "ingest" in heartbeats

    flag = streamproc("ingest", "--source", camera_uri, timeout=60, env={**os.environ, "STREAMPROC_REDIS_URL": ""})
    assert flag.returncode == 2 and "rtsp://***@127.0.0.1:9/cam" in flag.stderr, flag.stderr

    secrets = [RTSP_SECRET, server.admin.password, *(u.password for u in users.values())]
    outputs = {
        "ingest stdout": ingest.stdout,
        "ingest stderr": ingest.stderr,
        "status --json": status_json.stdout + status_json.stderr,
        "status": status_text.stdout + status_text.stderr,
        "sp:camstate": camstate,
        "sp:workers": heartbeats,
        "redis": everything,
        "--source error": flag.stderr,
    }
    for where, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"a secret leaked into {where}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/live", "rtsp://***@10.0.0.5:554/live"),
        ("rediss://sp-detect:hunter2@redis:6380/0", "rediss://***@redis:6380/0"),
        ("rediss://:hunter2@redis:6380", "rediss://***@redis:6380"),
        ("rtsp://admin@cam/live", "rtsp://***@cam/live"),
        ("rtsp://admin:hun@ter2@cam/live", "rtsp://***@cam/live"),  # unescaped @ in the password
        ("rtsp://admin:hun/ter2@cam/live", "rtsp://***@cam/live"),  # unescaped / in the password
        ("rtsp://me@corp:hunter2@cam/live", "rtsp://***@cam/live"),
        ("https://cam/hls.m3u8?user=a&password=hunter2&x=1", "https://cam/hls.m3u8?user=a&password=***&x=1"),
        ("https://cam/x?access_token=hunter2#f", "https://cam/x?access_token=***#f"),
        ("Redis at redis://u:hunter2@h:1/0 is down (Error 111 connecting to h:1.)",
         "Redis at redis://***@h:1/0 is down (Error 111 connecting to h:1.)"),
        ("'rtsp://a:hunter2@h/x', 'redis://b:hunter2@h'", "'rtsp://***@h/x', 'redis://***@h'"),
        ("redis://127.0.0.1:6379/0 and rtsp://cam:554/live", "redis://127.0.0.1:6379/0 and rtsp://cam:554/live"),
        ("rtsp://***@cam/live", "rtsp://***@cam/live"),
    ],
)  # fmt: skip
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_logged_tracebacks_and_uncaught_exceptions_are_redacted(tmp_path: Path) -> None:
    stream = tmp_path / "log.txt"
    handler = logging.FileHandler(stream)
    handler.setFormatter(RedactingFormatter("%(message)s"))
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("test_security.redact")
    log.addHandler(handler)
    try:
        raise ConnectionError("cannot reach rtsp://admin:hunter2@cam/live")
    except ConnectionError:
        log.exception("camera %s failed", "rtsp://admin:hunter2@cam/live", stack_info=True)
    finally:
        log.removeHandler(handler)
        handler.close()
    text = stream.read_text()
    assert RTSP_SECRET not in text
    assert "camera rtsp://***@cam/live failed" in text and "ConnectionError: cannot reach rtsp://***@cam/live" in text

    code = (
        "import threading\n"
        "from streamproc.redact import setup_logging\n"
        "setup_logging()\n"
        "def boom():\n"
        "    raise RuntimeError('thread: rtsp://admin:hunter2@cam/live')\n"
        "t = threading.Thread(target=boom); t.start(); t.join()\n"
        "raise RuntimeError('main: rediss://u:hunter2@redis:6380/0')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert RTSP_SECRET not in result.stderr
    assert "thread: rtsp://***@cam/live" in result.stderr and "main: rediss://***@redis:6380/0" in result.stderr


# -- no unsafe deserialisation ------------------------------------------------------------------------------

UNSAFE_CALLS = {
    "eval", "exec", "compile", "__import__",
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "cPickle.loads",
    "marshal.load", "marshal.loads", "shelve.open", "dill.load", "dill.loads", "joblib.load",
    "yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all", "yaml.full_load", "yaml.full_load_all",
    "torch.load", "numpy.load", "pandas.read_pickle",
}  # fmt: skip
UNSAFE_NAMES = {"yaml.Loader", "yaml.UnsafeLoader", "yaml.FullLoader", "yaml.CLoader", "yaml.CUnsafeLoader"}


def _qualified(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, with import aliases resolved (``np.load`` -> ``numpy.load``)."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def unsafe_uses(source: str, filename: str) -> list[str]:
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _qualified(node.func, aliases)
            if name in UNSAFE_CALLS or (name and name.endswith(".Unpickler")):
                found.append(f"{filename}:{node.lineno}: {name}()")
        elif isinstance(node, ast.Attribute | ast.Name) and isinstance(node.ctx, ast.Load):
            name = _qualified(node, aliases)
            if name in UNSAFE_NAMES:
                found.append(f"{filename}:{node.lineno}: {name}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [
                f"{filename}:{node.lineno}: import {m}"
                for m in modules
                if m.split(".")[0] in {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill"}
            ]
    return found


def test_the_scanner_finds_unsafe_calls() -> None:
    source = (
        "import pickle as p\nimport yaml\nfrom yaml import load as yl\nimport numpy as np\n"
        "p.loads(b'')\nyaml.load('', Loader=yaml.Loader)\nyl('')\neval('1')\nnp.load('x')\nyaml.safe_load('')\n"
    )
    assert sorted(unsafe_uses(source, "x.py")) == [
        "x.py:1: import pickle", "x.py:5: pickle.loads()", "x.py:6: yaml.Loader", "x.py:6: yaml.load()",
        "x.py:7: yaml.load()", "x.py:8: eval()", "x.py:9: numpy.load()",
    ]  # fmt: skip


def test_no_pickle_eval_or_unsafe_yaml_in_the_source() -> None:
    files = sorted([*(REPO / "streamproc").rglob("*.py"), *(REPO / "workers").rglob("*.py")])
    assert len(files) > 20
    found = [
        use for path in files for use in unsafe_uses(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))
    ]
    assert found == []


def test_yaml_tags_are_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    config = tmp_path / "evil.yaml"
    config.write_text(f'redis: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(config)
    assert not marker.exists()
