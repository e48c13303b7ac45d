"""`seqrec data download`: fixture files served from 127.0.0.1 (no test touches the internet):
download, resume after a partial, checksum mismatch, an archive checked member by member,
unpinned datasets refused, offline (connection refused)."""
from __future__ import annotations

import hashlib
import io
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from seqrec.cli import main
from seqrec.data import load_dataset
from seqrec.data.download import DownloadError, download_dataset, fetch
from seqrec.data.registry import DATASETS, DatasetSource, Pinned, RemoteFile, find_dataset

from helpers import SHARED_DATA

TXT = b"".join(f"{u} {' '.join(str(1 + (u * 7 + k) % 40) for k in range(6))}\n".encode() for u in range(1, 60))
JSON = b'{"1": [1, 2], "2": [3]}'


def _pin(data: bytes) -> Pinned:
    return Pinned(len(data), hashlib.sha256(data).hexdigest())


class _Server:
    """Serves ``files`` ({path: bytes}) with HTTP Range support; records each request's
    Range header and the bytes sent."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.ranges, self.sent = files, [], 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest's output clean
                pass

            def do_GET(self):
                data = outer.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                rng = self.headers.get("Range")
                outer.ranges.append(rng)
                start = int(rng.split("=")[1].rstrip("-")) if rng else 0
                if start >= len(data) and rng:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                body = data[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # Counted before the write: the client may finish reading (and the test
                # read the count) before this thread runs again after the write.
                outer.sent += len(body)
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _s3rec_source(url: str, txt_pin: Pinned, json_pin: Pinned, name="Tiny") -> DatasetSource:
    return DatasetSource(name, "s3rec", "test", (
        RemoteFile(f"{url}/data/Remote.txt", f"{name}.txt", txt_pin),
        RemoteFile(f"{url}/data/Remote_item2attributes.json", f"{name}_item2attributes.json", json_pin)))


def test_download_verifies_renames_and_loads(tmp_path):
    with _Server({"/data/Remote.txt": TXT, "/data/Remote_item2attributes.json": JSON}) as srv:
        lines = []
        folder = download_dataset("Tiny", tmp_path, source=_s3rec_source(srv.url, _pin(TXT), _pin(JSON)),
                                  progress=False, log=lines.append)
        assert folder == tmp_path / "Tiny"
        assert (folder / "Tiny.txt").read_bytes() == TXT
        assert (folder / "Tiny_item2attributes.json").read_bytes() == JSON
        assert not list(folder.glob("*.part"))
        assert sum("SHA-256 verified" in line for line in lines) == 2
        # what a user then does with it
        ds = load_dataset(str(folder))
        assert ds.num_users == 59 and "attributes" in ds.attributes
        # a second call finds both files in place and fetches nothing
        sent = srv.sent
        download_dataset("Tiny", tmp_path, source=_s3rec_source(srv.url, _pin(TXT), _pin(JSON)), progress=False,
                         log=lines.append)
        assert srv.sent == sent and lines[-1].endswith("already there")


def test_resume_after_partial_fetches_only_the_rest(tmp_path):
    dest = tmp_path / "Tiny.txt"
    (tmp_path / "Tiny.txt.part").write_bytes(TXT[:100])  # an interrupted earlier run
    with _Server({"/f.txt": TXT}) as srv:
        fetch(f"{srv.url}/f.txt", dest, _pin(TXT), progress=False)
        assert srv.ranges == ["bytes=100-"]
        assert srv.sent == len(TXT) - 100
    assert dest.read_bytes() == TXT and not (tmp_path / "Tiny.txt.part").exists()


def test_complete_part_is_verified_without_refetching(tmp_path):
    (tmp_path / "Tiny.txt.part").write_bytes(TXT)  # killed between the last byte and the rename
    with _Server({"/f.txt": TXT}) as srv:
        fetch(f"{srv.url}/f.txt", tmp_path / "Tiny.txt", _pin(TXT), progress=False)
        assert srv.sent == 0
    assert (tmp_path / "Tiny.txt").read_bytes() == TXT


def test_checksum_mismatch_deletes_the_part_and_says_so(tmp_path):
    tampered = TXT.replace(b"1", b"2", 1)
    with _Server({"/f.txt": tampered}) as srv:
        with pytest.raises(DownloadError, match=r"does not match its pinned checksum \(SHA-256 [0-9a-f]{64}, "
                                                r"expected [0-9a-f]{64}\); deleted .*Tiny\.txt\.part"):
            fetch(f"{srv.url}/f.txt", tmp_path / "Tiny.txt", _pin(TXT), progress=False)
    assert not (tmp_path / "Tiny.txt").exists() and not (tmp_path / "Tiny.txt.part").exists()


def test_size_mismatch_is_reported(tmp_path):
    with _Server({"/f.txt": TXT + b"9 9\n"}) as srv:
        with pytest.raises(DownloadError, match=f"{len(TXT) + 4} bytes, expected {len(TXT)}"):
            fetch(f"{srv.url}/f.txt", tmp_path / "Tiny.txt", _pin(TXT), progress=False)
    assert not list(tmp_path.iterdir())


def test_http_error_names_url_and_status(tmp_path):
    with _Server({}) as srv:
        with pytest.raises(DownloadError, match=r"cannot download http://127\.0\.0\.1:\d+/missing\.txt: HTTP 404"):
            fetch(f"{srv.url}/missing.txt", tmp_path / "x.txt", progress=False)


def test_offline_dataset_download_leaves_no_folder(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot download"):
        download_dataset("Tiny", tmp_path, source=_s3rec_source(f"http://127.0.0.1:{port}", _pin(TXT), _pin(JSON)),
                         progress=False)
    assert not list(tmp_path.iterdir())


def test_offline_names_url_and_cause(tmp_path):
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data/Beauty.txt"
    with pytest.raises(DownloadError, match=rf"cannot download {url}: .*[Cc]onnection refused.*offline"):
        fetch(url, tmp_path / "Beauty.txt", progress=False)
    assert not (tmp_path / "Beauty.txt").exists()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


INTER = b"user_id:token\titem_id:token\ttimestamp:float\n" + b"".join(
    f"{u}\t{i}\t{u * 100 + i}\n".encode() for u in range(1, 30) for i in range(1, 8))
ITEM = b"item_id:token\tclass:token_seq\n" + b"".join(f"{i}\tc{i % 3}\n".encode() for i in range(1, 8))


def _atomic_source(url: str, members: dict[str, Pinned]) -> DatasetSource:
    return DatasetSource("mini", "atomic", "test", (RemoteFile(f"{url}/mini.zip", "mini.zip", Pinned(), members),))


def test_archive_members_are_checked_and_extracted(tmp_path):
    archive = _zip({"mini/mini.inter": INTER, "mini/mini.item": ITEM})  # a folder inside, as some mirrors do
    with _Server({"/mini.zip": archive}) as srv:
        folder = download_dataset("mini", tmp_path, progress=False, log=lambda _: None,
                                  source=_atomic_source(srv.url, {"mini.inter": _pin(INTER), "mini.item": _pin(ITEM)}))
    assert sorted(p.name for p in folder.iterdir()) == ["mini.inter", "mini.item"]  # archive removed
    ds = load_dataset(str(folder))
    assert ds.num_users == 29 and ds.num_items == 7


def test_archive_member_mismatch_removes_everything(tmp_path):
    archive = _zip({"mini.inter": INTER, "mini.item": ITEM + b"8\tc9\n"})
    with _Server({"/mini.zip": archive}) as srv:
        with pytest.raises(DownloadError, match=r"mini\.item does not match its pinned checksum"):
            download_dataset("mini", tmp_path, progress=False, log=lambda _: None,
                             source=_atomic_source(srv.url, {"mini.inter": _pin(INTER), "mini.item": _pin(ITEM)}))
    assert not (tmp_path / "mini").exists()  # no archive, no part, no empty folder


def test_unpinned_dataset_is_refused_unless_no_verify(tmp_path):
    source = _s3rec_source("http://127.0.0.1:9", Pinned(), Pinned())  # never contacted when refused
    with pytest.raises(DownloadError, match=r"no pinned checksum for Tiny .*pass --no-verify"):
        download_dataset("Tiny", tmp_path, source=source, progress=False)
    with _Server({"/data/Remote.txt": TXT, "/data/Remote_item2attributes.json": JSON}) as srv:
        lines = []
        download_dataset("Tiny", tmp_path, source=_s3rec_source(srv.url, Pinned(), Pinned()), verify=False,
                         progress=False, log=lines.append)
    assert any(f"SHA-256 {hashlib.sha256(TXT).hexdigest()} (UNVERIFIED" in line for line in lines)


def test_registry_pins_the_files_our_results_come_from():
    assert set(DATASETS) == {"Beauty", "Sports", "Toys", "Yelp", "LastFM", "ml-100k", "ml-1m"}
    assert find_dataset("beauty") is DATASETS["Beauty"]
    with pytest.raises(ValueError, match="unknown dataset 'Amazon'; known: Beauty"):
        find_dataset("Amazon")
    for name in ("Beauty", "Sports", "Toys", "Yelp", "LastFM", "ml-100k"):
        assert DATASETS[name].verifiable, name
    assert not DATASETS["ml-1m"].verifiable  # refused without --no-verify, never silently accepted
    # the pins are those of our copies of the data (skipped where ../shared/data is absent)
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} absent")
    for name in ("Beauty", "LastFM", "ml-100k"):
        for remote in DATASETS[name].files:
            pins = remote.members if remote.members is not None else {remote.name: remote.pinned}
            for file_name, pin in pins.items():
                data = (SHARED_DATA / name / file_name).read_bytes()
                assert _pin(data) == pin, file_name


def test_cli_download_and_its_errors(tmp_path, capsys, monkeypatch):
    import seqrec.data.registry as registry

    with _Server({"/data/Remote.txt": TXT, "/data/Remote_item2attributes.json": JSON}) as srv:
        monkeypatch.setitem(registry.DATASETS, "Tiny", _s3rec_source(srv.url, _pin(TXT), _pin(JSON)))
        assert main(["data", "download", "tiny", "--to", str(tmp_path), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert f"Tiny is in {tmp_path / 'Tiny'}" in captured.out and "seqrec train --model sasrec --data" in captured.out
    assert (tmp_path / "Tiny" / "Tiny.txt").read_bytes() == TXT
    # unpinned: refused with the way out, exit status 2, nothing written
    assert main(["data", "download", "ml-1m", "--to", str(tmp_path)]) == 2
    assert "no pinned checksum for ml-1m" in capsys.readouterr().err
    assert not (tmp_path / "ml-1m").exists()
    assert main(["data", "download", "Amazon", "--to", str(tmp_path)]) == 2
    assert "unknown dataset 'Amazon'" in capsys.readouterr().err
