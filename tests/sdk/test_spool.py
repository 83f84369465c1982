"""The local spool: append-only, size-capped, resent record by record, adopted across processes."""

import os

import pytest

from prodlens.sdk.spool import Record, Spool


def rec(i, count=10, topic="prodlens.predictions", key=b"m/v"):
    return Record(topic, key, "prediction", count, b'{"type":"batch","n":%d}' % i)


def resend_all(spool):
    got = []
    for seg in spool.ready():
        for index, record in spool.records(seg):
            got.append(record)
            spool.ack(seg, index, record.count)
    return got


def files(directory):
    return sorted(p for p in os.listdir(directory) if p.endswith(".spool"))


def test_write_read_ack_delete(tmp_path):
    s = Spool(tmp_path, segment_bytes=200)
    for i in range(6):
        assert s.write(rec(i, key=None if i == 3 else b"m/v"))
    assert s.events == 60 and s.has_pending() and s.bytes > 0
    assert len(files(tmp_path)) > 1  # rotated by segment_bytes
    got = resend_all(s)
    assert [r.payload for r in got] == [rec(i).payload for i in range(6)]  # oldest first
    assert got[3].key is None and got[0].key == b"m/v" and got[0].topic == "prodlens.predictions"
    assert s.events == 0 and s.bytes == 0 and files(tmp_path) == []


def test_partial_resend_keeps_the_rest(tmp_path):
    s = Spool(tmp_path)
    for i in range(4):
        s.write(rec(i))
    (seg,) = s.ready()
    records = list(s.records(seg))
    s.ack(seg, records[0][0], 10)
    s.ack(seg, records[2][0], 10)
    s.ack(seg, records[2][0], 10)  # a repeated ack counts once
    assert s.events == 20 and files(tmp_path)
    assert [r.payload for _, r in s.records(seg)] == [rec(1).payload, rec(3).payload]
    resend_all(s)
    assert s.events == 0 and files(tmp_path) == []


def test_size_cap_refuses_writes(tmp_path):
    s = Spool(tmp_path, max_bytes=300)
    accepted = [s.write(rec(i)) for i in range(10)]
    assert accepted[0] and not accepted[-1]
    assert s.bytes <= 300
    assert s.events == 10 * sum(accepted)
    assert Spool(tmp_path / "off", max_bytes=0).write(rec(0)) is False


def test_closed_spool_is_adopted_by_the_next_process(tmp_path):
    s = Spool(tmp_path)
    for i in range(3):
        s.write(rec(i))
    s.close()
    nxt = Spool(tmp_path)
    assert nxt.adopt() == 30 and nxt.events == 30
    assert [r.payload for r in resend_all(nxt)] == [rec(i).payload for i in range(3)]
    assert files(tmp_path) == []


def test_a_live_spool_is_not_adopted_by_another(tmp_path):
    live = Spool(tmp_path)
    live.write(rec(1))
    other = Spool(tmp_path)
    assert other.adopt() == 0  # flock held by the live owner
    live.close()
    assert other.adopt() == 10


def test_torn_last_line_is_skipped(tmp_path):
    s = Spool(tmp_path)
    s.write(rec(1))
    s.write(rec(2))
    s.close()
    (name,) = files(tmp_path)
    with open(tmp_path / name, "ab") as f:
        f.write(b'{"topic": "t", "key": null, "kind": "prediction", "cou')  # crash mid-write
    nxt = Spool(tmp_path)
    assert nxt.adopt() == 20 and nxt.corrupt == 1
    assert len(resend_all(nxt)) == 2 and files(tmp_path) == []


def test_unwritable_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="spool_dir"):
        Spool(blocker / "sub")
