"""Telemetry / AsyncTelemetry against a real broker: envelopes arrive valid and keyed,
nothing is lost while the broker is away, and logging never waits for the network."""

import asyncio
import math
import os
import socket
import subprocess
import sys
import textwrap
from collections import defaultdict

import pytest

import prodlens.broker
from prodlens.broker import EmbeddedBroker, free_port
from prodlens.sdk import AsyncTelemetry, Telemetry
from prodlens.sdk.privacy import Privacy

pytestmark = pytest.mark.broker
SALT = "test-salt"


def topics_for(prefix):
    return {"predictions": f"{prefix}.predictions", "feedback": f"{prefix}.feedback",
            "outcomes": f"{prefix}.outcomes"}


def ids(messages):
    return [eid for m in messages for eid in m.decoded.columns.get("event_id", [])]


def assert_all_valid(messages):
    for m in messages:
        assert m.decoded.envelope and m.decoded.rejections == [], m.decoded.rejections
        assert m.decoded.count > 0


def log_mixed(tel, n_pred=600):
    """Predictions over three (model, version) groups, feedback with and without model, outcomes."""
    groups = [("churn", "v7"), ("churn", "v8"), ("eta", "v2")]
    sent = defaultdict(list)
    for i in range(n_pred):
        model, version = groups[i % 3]
        out = {"value": float(i)} if model == "eta" else {"label": "stay" if i % 2 else "churn",
                                                         "score": (i % 10) / 10}
        pid = tel.log_prediction(model, version, out, features={
            "tenure": i, "spend": math.nan if i % 50 == 0 else i / 3, "plan": "pro"},
            segment={"country": ["US", "DE", "FR"][i % 3]}, unit_id=f"user-{i % 40}",
            latency_ms=1.0 + i % 7)
        sent[(model, version)].append(pid)
    fb = [tel.log_feedback(sent[("churn", "v7")][i], "label", "churn", model="churn") for i in range(30)]
    fb += [tel.log_feedback(sent[("eta", "v2")][i], "rating", 4) for i in range(20)]
    oc = [tel.log_outcome(f"user-{i}", "revenue", 9.5, experiment="pricing") for i in range(25)]
    return sent, fb, oc


def check_delivery(consume, bootstrap, prefix, sent, fb, oc, n_pred):
    t = topics_for(prefix)
    preds = consume(bootstrap, t["predictions"], "prediction", n_pred)
    assert_all_valid(preds)
    assert sum(m.decoded.count for m in preds) == n_pred
    by_key = defaultdict(set)
    for m in preds:
        model, version = m.decoded.columns["model"][0], m.decoded.columns["version"][0]
        assert m.key == f"{model}/{version}".encode()
        assert set(m.decoded.columns["model"]) == {model} and set(m.decoded.columns["version"]) == {version}
        by_key[m.key].add(m.partition)
        assert set(m.decoded.columns["prediction_id"]) <= set(sent[(model, version)])
        # unit ids left the app hashed with the salt
        assert "user-1" not in m.decoded.columns["unit_id"]
        assert set(m.decoded.columns["unit_id"]) <= {Privacy(salt=SALT).hash_unit(f"user-{i}") for i in range(40)}
    assert set(by_key) == {b"churn/v7", b"churn/v8", b"eta/v2"}
    assert all(len(p) == 1 for p in by_key.values())  # one version lands on one partition
    got_pids = [p for m in preds for p in m.decoded.columns["prediction_id"]]
    assert sorted(got_pids) == sorted(p for v in sent.values() for p in v)
    # NaN features arrived as null (missing)
    spend = [v for m in preds for v in m.decoded.columns["features"]["spend"]]
    assert spend.count(None) == n_pred // 50

    feedback = consume(bootstrap, t["feedback"], "feedback", len(fb))
    assert_all_valid(feedback)
    assert sorted(ids(feedback)) == sorted(fb)
    assert {m.key for m in feedback} == {b"churn", None}
    for m in feedback:
        assert set(m.decoded.columns["model"]) == ({"churn"} if m.key else {None})

    outcomes = consume(bootstrap, t["outcomes"], "outcome", len(oc))
    assert_all_valid(outcomes)
    assert sorted(ids(outcomes)) == sorted(oc)
    assert all(m.key is None for m in outcomes)


def test_telemetry_delivers_valid_keyed_envelopes(kafka_bootstrap, unique_name, tmp_path,
                                                  create_topics, consume):
    create_topics(kafka_bootstrap, list(topics_for(unique_name).values()), partitions=3)
    with Telemetry(kafka_bootstrap, topics=topics_for(unique_name), salt=SALT, batch_size=200,
                   spool_dir=tmp_path) as tel:
        sent, fb, oc = log_mixed(tel)
        assert tel.flush(20)
        stats = tel.stats()
    total = 600 + 50 + 25
    assert stats["logged"] == stats["sent"] == total
    assert stats["spooled"] == stats["dropped"] == stats["failed"] == stats["pending"] == 0
    assert stats["non_finite"] == 600 // 50
    assert tel.closed and tel.sent == total
    check_delivery(consume, kafka_bootstrap, unique_name, sent, fb, oc, 600)
    with pytest.raises(RuntimeError, match="closed"):
        tel.log_outcome("u", "revenue", 1.0)


def test_async_telemetry_delivers_valid_keyed_envelopes(kafka_bootstrap, unique_name, tmp_path,
                                                        create_topics, consume):
    create_topics(kafka_bootstrap, list(topics_for(unique_name).values()), partitions=3)

    class AsyncAdapter:  # drive the coroutines through the same helper as the sync API
        def __init__(self, tel, loop):
            self.tel, self.loop = tel, loop

        def __getattr__(self, name):
            method = getattr(self.tel, name)
            return lambda *a, **k: self.loop.run_until_complete(method(*a, **k))

    loop = asyncio.new_event_loop()
    try:
        tel = AsyncTelemetry(kafka_bootstrap, topics=topics_for(unique_name), salt=SALT,
                             batch_size=128, spool_dir=tmp_path)
        loop.run_until_complete(tel.start())
        sent, fb, oc = log_mixed(AsyncAdapter(tel, loop), n_pred=300)
        assert loop.run_until_complete(tel.flush())
        assert loop.run_until_complete(tel.close()) is True
    finally:
        loop.close()
    stats = tel.stats()
    assert stats["logged"] == stats["sent"] == 300 + 50 + 25 and stats["spooled"] == 0
    check_delivery(consume, kafka_bootstrap, unique_name, sent, fb, oc, 300)


def test_async_context_manager_and_concurrent_loggers(kafka_bootstrap, unique_name, tmp_path, consume):
    topic = f"{unique_name}.outcomes"

    async def app():
        async with AsyncTelemetry(kafka_bootstrap, topics={"outcomes": topic}, salt=SALT,
                                  batch_size=50, spool_dir=tmp_path) as tel:
            async def handler(i):
                await asyncio.sleep(0)
                return await tel.log_outcome(f"u{i}", "clicks", i)
            logged = await asyncio.gather(*(handler(i) for i in range(400)))
        return tel, logged

    tel, logged = asyncio.run(app())
    assert tel.closed and tel.sent == 400
    got = consume(kafka_bootstrap, topic, "outcome", 400)
    assert_all_valid(got)
    assert sorted(ids(got)) == sorted(logged)


def test_spool_while_broker_is_down_then_resend(tmp_path, consume):
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    topic = "sdk.spool.predictions"
    tel = Telemetry(bootstrap, topics={"predictions": topic}, salt=SALT, spool_dir=tmp_path,
                    batch_size=100, linger=0.01)
    try:
        first = [tel.log_prediction("churn", "v7", label="stay", unit_id=i) for i in range(450)]
        assert tel.flush(10) is False  # nothing listens on the port: all of it went to the spool
        s = tel.stats()
        assert (s["spooled"], s["sent"], s["resent"], s["pending"]) == (450, 0, 0, 0)
        assert s["failed"] == 0 and not s["connected"] and s["spool_events"] == 450
        assert any(name.endswith(".spool") for name in os.listdir(tmp_path))

        with EmbeddedBroker(port=port) as broker:
            assert tel.flush(20) is True  # broker back: the spool is resent
            s = tel.stats()
            assert (s["resent"], s["spool_events"], s["spool_bytes"]) == (450, 0, 0)
            second = [tel.log_prediction("churn", "v7", label="churn") for _ in range(120)]
            assert tel.flush(20) is True
            s = tel.stats()
            assert s["sent"] == 120 and s["logged"] == s["sent"] + s["resent"] == 570
            assert s["dropped"] == 0
            got = consume(broker.bootstrap, topic, "prediction", 570)
            assert_all_valid(got)
            pids = [p for m in got for p in m.decoded.columns["prediction_id"]]
            assert set(pids) == set(first + second) and len(pids) >= 570  # at least once
            assert {m.key for m in got} == {b"churn/v7"}
            tel.close()  # before the broker stops: tansu waits for connected clients
        assert not [n for n in os.listdir(tmp_path) if n.endswith(".spool") and
                    os.path.getsize(tmp_path / n) > 0]
    finally:
        tel.close(timeout=2)


def test_spool_left_by_a_closed_app_is_resent_by_the_next_one(kafka_bootstrap, unique_name, tmp_path,
                                                             consume):
    topic = f"{unique_name}.outcomes"
    dead = f"127.0.0.1:{free_port()}"
    old = Telemetry(dead, topics={"outcomes": topic}, salt=SALT, spool_dir=tmp_path)
    logged = [old.log_outcome(f"u{i}", "revenue", float(i)) for i in range(300)]
    assert old.close(timeout=2) is False  # could not deliver: kept on disk
    assert old.spooled == 300 and old.sent == 0

    new = Telemetry(kafka_bootstrap, topics={"outcomes": topic}, salt=SALT, spool_dir=tmp_path)
    try:
        assert new.flush(20) is True
        s = new.stats()
        assert s["adopted"] == 300 and s["resent"] == 300 and s["spool_events"] == 0
    finally:
        new.close()
    got = consume(kafka_bootstrap, topic, "outcome", 300)
    assert_all_valid(got)
    assert set(ids(got)) == set(logged)


@pytest.fixture
def silent_broker():
    """A TCP port that accepts connections and never answers: a hung broker."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_logging_never_waits_for_the_network(silent_broker, tmp_path):
    # The sender is stuck connecting (the broker never answers, connect_timeout is long);
    # every log call still returns at once with its id, the events wait in memory.
    tel = Telemetry(silent_broker, salt=SALT, spool_dir=tmp_path, connect_timeout=60)
    try:
        pids = [tel.log_prediction("churn", "v7", label="stay") for _ in range(1000)]
        assert len(set(pids)) == 1000
        s = tel.stats()
        assert (s["logged"], s["sent"], s["spooled"], s["pending"]) == (1000, 0, 0, 1000)
        assert not s["connected"]
    finally:
        assert tel.close(timeout=0.5) is False
    s = tel.stats()
    assert s["spooled"] == 1000 and s["dropped"] == 0  # close gave up waiting: kept on disk


def test_full_queue_spills_to_the_spool_without_blocking(silent_broker, tmp_path):
    tel = Telemetry(silent_broker, salt=SALT, spool_dir=tmp_path, connect_timeout=60, max_queue=250,
                    batch_size=100)
    try:
        for i in range(1000):
            tel.log_outcome(f"u{i}", "revenue", 1.0)
        s = tel.stats()
        assert s["logged"] == 1000 and s["pending"] < 250
        assert s["spooled"] + s["pending"] == 1000 and s["spooled"] >= 750
    finally:
        tel.close(timeout=0.5)
    assert tel.spooled == 1000 and tel.dropped == 0


def test_spool_cap_drops_and_counts(tmp_path):
    tel = Telemetry(f"127.0.0.1:{free_port()}", salt=SALT, spool_dir=tmp_path, spool_max_bytes=20_000,
                    batch_size=50)
    try:
        for i in range(1000):
            tel.log_outcome(f"u{i}", "revenue", 1.0)
        assert tel.flush(10) is False
    finally:
        tel.close(timeout=1)
    s = tel.stats()
    assert s["dropped"] > 0 and s["spooled"] > 0
    assert s["spooled"] + s["dropped"] == 1000
    on_disk = sum(os.path.getsize(tmp_path / n) for n in os.listdir(tmp_path))
    assert s["spool_bytes"] == on_disk <= 20_000 and s["spool_events"] == s["spooled"]


def test_broker_lost_mid_stream_then_back(tmp_path, monkeypatch, consume):
    # tansu binds with SO_REUSEPORT, so a restarted broker can take the port while the old
    # connections linger in TIME_WAIT; the embedded broker's own port check would refuse.
    monkeypatch.setattr(prodlens.broker, "_port_free", lambda host, port: True)
    port = free_port()
    topic = "sdk.outage.feedback"
    first = EmbeddedBroker(port=port).start()
    tel = Telemetry(f"127.0.0.1:{port}", topics={"feedback": topic}, spool_dir=tmp_path, batch_size=50,
                    request_timeout=1.0, reconnect_backoff=0.2, reconnect_backoff_max=0.5)
    try:
        before = [tel.log_feedback(f"p{i}", "label", "a", model="m") for i in range(100)]
        assert tel.flush(15) is True and tel.sent == 100
        first._process.kill()  # the broker crashes
        first.stop()
        during = [tel.log_feedback(f"q{i}", "label", "b", model="m") for i in range(100)]
        assert tel.flush(15) is False
        s = tel.stats()
        assert s["sent"] == 100 and s["spooled"] == 100 and not s["connected"]
        assert s["failed"] == 100  # handed to the producer before it knew the broker was gone
        with EmbeddedBroker(port=port) as broker:
            assert tel.flush(20) is True
            s = tel.stats()
            assert s["resent"] == s["spooled"] == 100 and s["logged"] == s["sent"] + s["resent"] == 200
            got = consume(broker.bootstrap, topic, "feedback", len(during))
            assert set(ids(got)) == set(during)  # the new broker has everything logged while it was away
            assert {m.key for m in got} == {b"m"}
            tel.close()
        assert set(before).isdisjoint(during)
    finally:
        tel.close(timeout=2)
        first.stop()


def test_flush_at_interpreter_exit(kafka_bootstrap, unique_name, tmp_path, consume):
    topic = f"{unique_name}.predictions"
    script = textwrap.dedent(f"""
        from prodlens.sdk import Telemetry
        tel = Telemetry({kafka_bootstrap!r}, topics={{"predictions": {topic!r}}}, salt="s",
                        spool_dir={str(tmp_path)!r}, linger=60)  # only the exit flush sends
        for i in range(77):
            print(tel.log_prediction("churn", "v7", score=0.5))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    logged = out.stdout.split()
    assert len(logged) == 77
    got = consume(kafka_bootstrap, topic, "prediction", 77)
    assert_all_valid(got)
    assert sorted(p for m in got for p in m.decoded.columns["prediction_id"]) == sorted(logged)


def test_topics_and_broker_from_prodlens_yaml(tmp_path):
    cfg = tmp_path / "prodlens.yaml"
    cfg.write_text(textwrap.dedent("""
        broker:
          bootstrap: kafka-1:9092,kafka-2:9092
        topics:
          predictions: app.preds
          outcomes: app.outcomes
          deadletter: app.dlq
        models:
          churn: {output: binary}
    """))
    tel = Telemetry(config=cfg, spool_dir=tmp_path / "spool", topics={"feedback": "app.fb"},
                    connect_timeout=0.2)
    try:
        assert tel.settings.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
        assert tel.settings.topics == {"prediction": "app.preds", "feedback": "app.fb",
                                       "outcome": "app.outcomes"}
    finally:
        tel.close(timeout=0.5)
    embedded = tmp_path / "embedded.yaml"
    embedded.write_text("broker: {bootstrap: embedded}\n")
    tel = Telemetry("127.0.0.1:1", config=embedded, spool_dir=tmp_path / "spool")
    assert tel.settings.bootstrap_servers == "127.0.0.1:1"
    assert tel.settings.topics["prediction"] == "prodlens.predictions"
    tel.close(timeout=0.5)
    with pytest.raises(ValueError, match="config: .*no such file"):
        Telemetry(config=tmp_path / "missing.yaml")
    with pytest.raises(TypeError, match="unknown option"):
        Telemetry("x:1", batchsize=10)
    with pytest.raises(ValueError, match="^batch_size"):
        Telemetry("x:1", batch_size=0)


def test_single_events_go_out_after_linger_without_flush(kafka_bootstrap, unique_name, tmp_path, consume):
    # Nothing reaches batch_size and nobody flushes: the linger timer must send each event.
    topic = f"{unique_name}.feedback"
    with Telemetry(kafka_bootstrap, topics={"feedback": topic}, spool_dir=tmp_path, linger=0.02) as tel:
        first = tel.log_feedback("p1", "label", "a")
        assert ids(consume(kafka_bootstrap, topic, "feedback", 1)) == [first]
        second = tel.log_feedback("p2", "label", "b")  # the sender went idle in between
        assert ids(consume(kafka_bootstrap, topic, "feedback", 2)) == [first, second]
        assert tel.sent == 2 and tel.stats()["envelopes"] == 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_its_own_sender(kafka_bootstrap, unique_name, tmp_path, consume):
    # gunicorn --preload style: the parent creates the client, workers fork and log.
    topic = f"{unique_name}.outcomes"
    tel = Telemetry(kafka_bootstrap, topics={"outcomes": topic}, salt=SALT, spool_dir=tmp_path)
    try:
        parent = [tel.log_outcome(f"u{i}", "revenue", 1.0) for i in range(10)]
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                child = [tel.log_outcome(f"c{i}", "revenue", 2.0) for i in range(20)]
                ok = tel.close(timeout=10)
                os.write(write, " ".join(child).encode())
                code = 0 if ok and tel.sent == 20 and tel.stats()["logged"] == 20 else 2
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        with os.fdopen(read) as f:
            child_ids = f.read().split()
        assert os.waitstatus_to_exitcode(status) == 0
        assert tel.flush(10) is True and tel.sent == 10
    finally:
        tel.close()
    got = consume(kafka_bootstrap, topic, "outcome", 30)
    assert sorted(ids(got)) == sorted(parent + child_ids)  # each event exactly once


def test_many_threads_log_at_once(kafka_bootstrap, unique_name, tmp_path, consume):
    import threading

    topic = f"{unique_name}.predictions"
    tel = Telemetry(kafka_bootstrap, topics={"predictions": topic}, salt=SALT, spool_dir=tmp_path,
                    batch_size=250)
    logged: list[list[str]] = [[] for _ in range(8)]

    def handler(k):
        for i in range(500):
            logged[k].append(tel.log_prediction("churn", f"v{k % 2}", score=0.5, unit_id=i,
                                                features={"x": i}))

    threads = [threading.Thread(target=handler, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tel.close(20) is True
    s = tel.stats()
    assert s["logged"] == s["sent"] == 4000 and s["spooled"] == s["dropped"] == 0
    got = consume(kafka_bootstrap, topic, "prediction", 4000)
    assert_all_valid(got)
    pids = [p for m in got for p in m.decoded.columns["prediction_id"]]
    assert len(pids) == 4000 and set(pids) == {p for part in logged for p in part}


def test_async_app_exiting_without_close_keeps_its_events(tmp_path):
    # The event loop is gone at exit, so nothing can be sent; what was in memory must
    # still be on disk for the next start.
    script = textwrap.dedent(f"""
        import asyncio
        from prodlens.sdk import AsyncTelemetry

        async def main():
            tel = AsyncTelemetry("127.0.0.1:{free_port()}", spool_dir={str(tmp_path)!r}, linger=60,
                                 connect_timeout=30)
            for i in range(30):
                await tel.log_outcome(f"u{{i}}", "revenue", 1.0)

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    from prodlens.sdk.spool import Spool

    assert Spool(tmp_path).adopt() == 30


def test_default_spool_dir_is_per_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("PRODLENS_SPOOL_DIR", str(tmp_path))
    dirs = []
    for servers in ("a:9092,b:9092", "b:9092,a:9092", "c:9092"):
        tel = Telemetry(servers, connect_timeout=0.1)
        dirs.append(tel._spool.directory)
        tel.close(timeout=0.2)
    assert dirs[0] == dirs[1] != dirs[2]
    assert all(d.parent == tmp_path for d in dirs)


def test_async_logging_never_waits_for_the_network(silent_broker, tmp_path):
    async def app():
        tel = AsyncTelemetry(silent_broker, salt=SALT, spool_dir=tmp_path, connect_timeout=60)
        await tel.start()
        await asyncio.sleep(0.05)  # let the sender get stuck connecting
        pids = [await tel.log_prediction("churn", "v7", label="stay") for _ in range(1000)]
        s = tel.stats()
        closed = await tel.close(timeout=0.5)
        return pids, s, closed, tel.stats()

    pids, during, closed, after = asyncio.run(app())
    assert len(set(pids)) == 1000
    assert (during["logged"], during["sent"], during["spooled"]) == (1000, 0, 0)
    assert during["pending"] == 1000 and not during["connected"]
    assert closed is False and after["spooled"] == 1000 and after["dropped"] == 0
