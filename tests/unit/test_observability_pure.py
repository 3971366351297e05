"""The pure parts of observability: event log bounds and rotation, request metering, metrics, the status table."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mlx_serve.cli_ops import follow_file, format_status, tail
from mlx_serve.events import EventLog
from mlx_serve.logfiles import rotate_if_larger
from mlx_serve.metrics import Metrics, unload_reason
from mlx_serve.requestlog import RequestLog, RequestMeter


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


# --- events -------------------------------------------------------------------------------------

def test_event_log_keeps_the_last_events_in_memory_and_filters_by_model() -> None:
    events = EventLog(keep=5)
    for i in range(12):
        events("load", "a" if i % 2 else "b", n=i)
    recent = events.recent(100)
    assert [e["n"] for e in recent] == [7, 8, 9, 10, 11]
    assert [e["seq"] for e in recent] == [8, 9, 10, 11, 12]
    assert [e["n"] for e in events.recent(2, model="a")] == [9, 11]
    assert events.recent(0) == []


def test_event_log_file_rotates_and_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = EventLog(path, max_file_bytes=2000, backups=2)
    for i in range(300):
        events("ready", "model", pid=i, reason="x" * 40)
    events.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert all(f.stat().st_size <= 2000 for f in files)
    last = [json.loads(line) for line in path.read_text().splitlines()][-1]
    assert last["pid"] == 299 and last["event"] == "ready" and last["model"] == "model"


def test_a_failing_listener_does_not_stop_the_others() -> None:
    seen = []

    def broken(event: dict) -> None:
        raise RuntimeError("boom")

    events = EventLog(listeners=[broken, seen.append])
    events("crash", "a", pid=1)
    assert [e["event"] for e in seen] == ["crash"]


def test_rotate_if_larger_shifts_backups_and_drops_the_oldest(tmp_path: Path) -> None:
    log = tmp_path / "worker-a.log"
    assert rotate_if_larger(log, 10, 2) is False  # no file yet
    for generation in range(4):
        log.write_text(f"run {generation} " + "x" * 20)
        assert rotate_if_larger(log, 10, 2) is True
    assert not log.exists()
    assert (tmp_path / "worker-a.log.1").read_text().startswith("run 3")
    assert (tmp_path / "worker-a.log.2").read_text().startswith("run 2")
    assert not (tmp_path / "worker-a.log.3").exists()
    log.write_text("small")
    assert rotate_if_larger(log, 10, 2) is False and log.read_text() == "small"


# --- request metering ---------------------------------------------------------------------------

def _chunk(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def test_meter_reads_usage_from_a_json_body_split_in_chunks() -> None:
    meter = RequestMeter("a", "/v1/chat/completions")
    meter.leased()
    meter.begin("application/json")
    body = json.dumps({"choices": [{"message": {"content": "hi " * 50}}],
                       "usage": {"prompt_tokens": 9, "completion_tokens": 31}}).encode()
    for i in range(0, len(body), 7):
        meter.chunk(body[i:i + 7])
    record = meter.finish(200)
    assert (record.completion_tokens, record.prompt_tokens, record.stream, record.ttft_s) == (31, 9, False, None)
    assert record.tokens_per_s is not None and record.tokens_per_s > 0
    assert record.queue_s is not None and record.duration_s >= record.queue_s


def test_meter_uses_the_final_usage_event_of_a_stream() -> None:
    meter = RequestMeter("a", "/v1/chat/completions")
    meter.leased()
    meter.begin("text/event-stream")
    time.sleep(0.01)
    for i in range(40):
        meter.chunk(_chunk({"choices": [{"delta": {"content": f"t{i}"}}]}))
    meter.chunk(_chunk({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 42}}) + b"data: [DONE]\n\n")
    record = meter.finish(200)
    assert record.stream and record.completion_tokens == 42 and record.prompt_tokens == 5
    assert record.ttft_s is not None and record.ttft_s >= 0.01


def test_meter_counts_events_of_a_stream_without_usage() -> None:
    meter = RequestMeter("a", "/v1/completions")
    meter.begin("text/event-stream")
    payload = b"".join(_chunk({"choices": [{"text": "x"}]}) for _ in range(6)) + b"data: [DONE]\n\n"
    meter.chunk(payload[:30])
    meter.chunk(payload[30:])
    record = meter.finish(200)
    assert record.completion_tokens == 6 and record.prompt_tokens is None
    assert record.queue_s is None and record.tokens_per_s is None  # never leased: no rate


def test_meter_does_not_keep_large_or_binary_bodies() -> None:
    meter = RequestMeter("e", "/v1/embeddings")
    meter.begin("application/json")
    meter.chunk(b'{"data": [' + b"0.1," * 400_000 + b'0.1], "usage": {"completion_tokens": 3}}')
    assert meter.finish(200).completion_tokens is None  # over the 1 MB cap: relayed, not parsed
    audio = RequestMeter("t", "/v1/audio/speech")
    audio.begin("audio/wav")
    audio.chunk(b"RIFF" + bytes(1000))
    assert audio.finish(200).completion_tokens is None


def test_request_log_is_bounded_and_feeds_the_metrics() -> None:
    metrics = Metrics()
    log = RequestLog(keep=3, listeners=[metrics.observe_request])
    for status in (200, 200, 503, 200, 499):
        meter = RequestMeter("a", "/v1/chat/completions")
        if status == 200:
            meter.leased()
            meter.begin("text/event-stream")
            meter.chunk(_chunk({"choices": [], "usage": {"completion_tokens": 4}}) + b"data: [DONE]\n\n")
        log.add(meter.finish(status))
    assert [r["status"] for r in log.recent(10)] == [503, 200, 499]
    samples = _samples(metrics)
    labels = (("endpoint", "/v1/chat/completions"), ("model", "a"))
    assert samples[("mlx_serve_requests_total", tuple(sorted((*labels, ("status", "200")))))] == 3
    assert samples[("mlx_serve_requests_total", tuple(sorted((*labels, ("status", "503")))))] == 1
    assert samples[("mlx_serve_time_to_first_token_seconds_count", labels)] == 3
    assert samples[("mlx_serve_generated_tokens_total", labels)] == 12
    assert samples[("mlx_serve_queue_wait_seconds_count", (("model", "a"),))] == 3
    assert samples[("mlx_serve_request_duration_seconds_count", labels)] == 5


# --- metrics from events ------------------------------------------------------------------------

def test_events_feed_the_lifecycle_metrics() -> None:
    metrics = Metrics()
    events = EventLog(listeners=[metrics.observe_event])
    events("load", "a", reason="requested")
    events("ready", "a", pid=1, duration_s=1.5)
    events("evict", "a", reason="make room for b", pid=1)
    events("unload", "a", pid=1, reason="evicted for b")
    events("crash", "b", pid=2, reason="killed by SIGKILL")
    events("restart", "b", reason="after worker crashed", failures=1)
    events("backoff", "b", reason="x", retry_in_s=5, failures=3)
    events("unload", "a", pid=3, reason="keep_alive expired")
    samples = _samples(metrics)
    assert samples[("mlx_serve_model_loads_total", (("model", "a"),))] == 1
    assert samples[("mlx_serve_model_load_seconds_sum", (("model", "a"),))] == 1.5
    assert samples[("mlx_serve_model_evictions_total", (("model", "a"), ("reason", "memory")))] == 1
    assert samples[("mlx_serve_model_evictions_total", (("model", "a"), ("reason", "keep_alive")))] == 1
    for name in ("crashes", "restarts", "backoffs"):
        assert samples[(f"mlx_serve_model_{name}_total", (("model", "b"),))] == 1


def test_unload_reasons_map_to_few_labels() -> None:
    assert unload_reason("evicted for qwen") == "memory"
    assert unload_reason("keep_alive expired") == "keep_alive"
    assert unload_reason("unload requested") == "requested"
    assert unload_reason("shutdown") == "shutdown"
    assert unload_reason("something new") == "other"


def test_each_app_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.requests.labels("a", "/v1/completions", "200").inc()
    assert b'mlx_serve_requests_total{endpoint="/v1/completions"' in first.exposition()
    assert b"mlx_serve_requests_total{" not in second.exposition()


# --- CLI pieces ---------------------------------------------------------------------------------

PS = {
    "memory": {"budget": 2_000_000_000, "used": 1_500_000_000},
    "models": [{"name": "chat", "type": "text", "state": "ready", "pid": 4242, "size": 1_000_000_000,
                "requests_in_flight": 2, "requests_waiting": 1, "pinned": False,
                "expires_at": "2030-01-01T00:10:00+00:00"}],
    "queue": {"waiting": 3, "by_model": {"embed": 2}},
}
MODELS = [{"id": "chat", "type": "text", "state": "ready"}, {"id": "embed", "type": "embedding", "state": "loading"}]


def test_status_table_shows_every_model_memory_and_expiry() -> None:
    now = datetime(2030, 1, 1, 0, 5, 30, tzinfo=timezone.utc).timestamp()
    text = format_status(PS, MODELS, now=now)
    lines = text.splitlines()
    assert lines[0].startswith("memory  [") and "1.5 GB of 2.0 GB budget (75%)" in lines[0]
    assert "500.0 MB of it warm spare workers" in lines[0]
    assert lines[0].count("#") == 22  # 75% of a 30-character bar
    header = next(line for line in lines if line.startswith("MODEL"))
    assert header.split() == ["MODEL", "TYPE", "STATE", "PID", "MEMORY", "IN", "FLIGHT", "WAITING", "EXPIRES"]
    chat = next(line for line in lines if line.startswith("chat "))
    assert chat.split() == ["chat", "text", "ready", "4242", "1.0", "GB", "2", "1", "in", "4m30s"]
    embed = next(line for line in lines if line.startswith("embed "))
    assert embed.split() == ["embed", "embedding", "loading", "-", "-", "-", "2", "-"]
    assert "no models loaded" not in text


def test_status_table_says_when_nothing_is_loaded_and_when_a_model_is_pinned() -> None:
    empty = format_status({"memory": {"budget": 10, "used": 0}, "models": []}, MODELS)
    assert "no models loaded" in empty and "stopped" not in empty.splitlines()[0]
    pinned = dict(PS, models=[dict(PS["models"][0], pinned=True)])
    assert "never (pinned)" in format_status(pinned, MODELS)


def test_tail_returns_the_last_lines_and_the_end_offset(tmp_path: Path) -> None:
    log = tmp_path / "router.log"
    log.write_text("".join(f"line {i}\n" for i in range(5000)))
    text, end = tail(log, 3, block=64)
    assert text == "line 4997\nline 4998\nline 4999\n"
    assert end == log.stat().st_size
    assert tail(log, 0)[0] == ""


def test_follow_prints_appended_lines_and_survives_rotation(tmp_path: Path) -> None:
    log = tmp_path / "worker-a.log"
    log.write_text("old\n")
    seen: list[str] = []
    stream = follow_file(log, log.stat().st_size, poll=0.01)

    def consume() -> None:
        for chunk in stream:
            seen.append(chunk)
            if "after rotation" in "".join(seen):
                return

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    time.sleep(0.1)
    with open(log, "a") as f:
        f.write("appended\n")
    time.sleep(0.1)
    log.rename(tmp_path / "worker-a.log.1")
    log.write_text("after rotation\n")
    reader.join(5)
    assert not reader.is_alive()
    assert "".join(seen) == "appended\nafter rotation\n"
