"""tests/scale/plot.py: per-host download and activation times of the one-change rollout, the curves, the PNG check.

write_png itself needs matplotlib, which only ``make scale`` installs (tests/scale/requirements.txt): every run of
``make scale`` writes the PNG and checks it with png_size. What is tested here is everything else, on real files.
"""

from __future__ import annotations

import os
import struct
import time
import zlib

import pytest

from scale import plot

UUID = "6f1e2d3c-4b5a-4968-8776-655443322110"


def _image(root, save_dir, name="debian.qcow2"):
    path = os.path.join(root, save_dir.lstrip("/"), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"qcow")
    return path


def _torrent(save_dir, added, completed, name="debian.qcow2"):
    return {"key": "a" * 40, "name": name, "save_dir": save_dir, "added_at": added, "completed_at": completed}


def _png(width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = (b"\x00" + b"\x00" * width) * height      # each row: filter byte, then grey pixels
    return (plot.PNG_SIGNATURE + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_host_times_from_the_engine_clock_and_the_store(tmp_path):
    root = str(tmp_path)
    started = time.time() - 1.0
    final_dir = "/var/lib/vmic/images/%s/2" % UUID
    _image(root, final_dir)
    torrents = [
        _torrent("/var/lib/vmic/images/%s/1" % UUID, started - 600, started - 590),    # the converging rollout's: not this one
        _torrent(final_dir, started + 0.5, started + 3.25),
    ]
    times = plot.host_times(started, torrents, lambda path: os.path.join(root, path.lstrip("/")))
    assert times["downloaded"] == 3.25
    assert 0.0 <= times["activated"] < 60.0


def test_host_still_downloading_or_not_activated(tmp_path):
    root = str(tmp_path)
    started = time.time() - 1.0
    partial = "/var/lib/vmic/images/.partial/%s/2" % UUID
    _image(root, partial)

    def machine(path):
        return os.path.join(root, path.lstrip("/"))

    assert plot.host_times(started, [_torrent(partial, started + 1, None)], machine) == {"downloaded": None, "activated": None}
    assert plot.host_times(started, [_torrent(partial, started + 1, started + 2)], machine) == {"downloaded": 2.0, "activated": None}
    missing = "/var/lib/vmic/images/%s/3" % UUID      # final directory named by the engine, file not there
    assert plot.host_times(started, [_torrent(missing, started + 1, started + 2)], machine)["activated"] is None
    assert plot.host_times(started, [_torrent(partial, started - 5, started - 4)], machine) is None
    assert plot.host_times(started, [], machine) is None


def test_two_torrents_complete_with_the_last():
    started = 1000.0
    torrents = [_torrent("/s/a", 1001.0, 1004.0), _torrent("/s/b", 1001.0, 1009.5), {"added_at": True}]
    assert plot.downloaded_at(plot.rollout_torrents(torrents, started)) == 1009.5
    assert plot.downloaded_at([_torrent("/s/a", 1001.0, 1004.0), _torrent("/s/b", 1001.0, None)]) is None


def test_completed_curve_counts_hosts_in_time_order():
    times = {"hv001": {"downloaded": 4.0, "activated": 9.0}, "hv002": {"downloaded": 2.5, "activated": None},
             "hv003": None, "hv004": {"downloaded": 3.0, "activated": 7.5}}
    assert plot.completed_curve(times, "downloaded") == [(0.0, 0), (2.5, 1), (3.0, 2), (4.0, 3)]
    assert plot.completed_curve(times, "activated") == [(0.0, 0), (7.5, 1), (9.0, 2)]


def test_machine_size_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683568 kB\nMemFree:         1000 kB\n", encoding="ascii")
    assert plot.machine_size(str(meminfo)) == "%d cores, 24 GB" % os.cpu_count()


def test_png_size_reads_the_header(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(_png(31, 17))
    assert plot.png_size(str(path)) == (31, 17)


@pytest.mark.parametrize("data", [b"", b"GIF89a" + b"\x00" * 30, _png(3, 3)[:20]])
def test_png_size_refuses_what_is_not_a_png(tmp_path, data):
    path = tmp_path / "b.png"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="not a PNG"):
        plot.png_size(str(path))


def test_fleet_times_names_an_engine_that_does_not_answer(tmp_path):
    socket_path = str(tmp_path / "engine.sock")
    times = plot.fleet_times(0.0, [("hv001", socket_path, lambda path: path)], timeout=2)
    assert socket_path in times["hv001"]["error"]
    assert plot.completed_curve(times, "downloaded") == [(0.0, 0)]
