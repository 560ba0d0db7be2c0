"""Download, verify and cache the SMS Spam Collection, against a real HTTP server on 127.0.0.1."""

import hashlib
import io
import logging
import threading
import time
import zipfile
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hf_spam.data.collection import ARCHIVE_MEMBER, SHA256, DataIntegrityError, DownloadError, obtain_data_file
from hf_spam.data.splits import load_sms_spam


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    """conftest keeps the Hub clients offline; `obtain_data_file` honours that too, so lift it here."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)


class Server:
    """A local HTTP server whose routes each test sets; it counts the requests for every path."""

    def __init__(self):
        self.routes = {}
        self.requests = Counter()
        self.release = threading.Event()  # wakes handlers that stall on purpose
        self.base = ""

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def server():
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            state.requests[self.path] += 1
            route = state.routes.get(self.path)
            try:
                if route is None:
                    self.send_error(404)
                else:
                    route(self)
            except OSError:  # the client gave up (timeout tests)
                pass

        def log_message(self, format, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    state.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def zip_of(content: bytes, member: str = ARCHIVE_MEMBER) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, content)
    return buffer.getvalue()


def send(body: bytes, status: int = 200, content_length: int | None = None, write: int | None = None):
    """A route that answers `status` with `body` (or its first `write` bytes), announcing `content_length`."""

    def route(handler):
        handler.send_response(status)
        handler.send_header("Content-Type", "application/zip")
        handler.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        handler.end_headers()
        handler.wfile.write(body if write is None else body[:write])
        handler.wfile.flush()

    return route


def fail(status: int):
    return lambda handler: handler.send_error(status)


def stall(server: Server, seconds: float, then):
    def route(handler):
        server.release.wait(seconds)
        then(handler)

    return route


@pytest.fixture(scope="module")
def canonical_bytes(canonical_file) -> bytes:
    return canonical_file.read_bytes()


@pytest.fixture(scope="module")
def good_zip(canonical_bytes) -> bytes:
    return zip_of(canonical_bytes)


def files_in(folder) -> list[str]:
    """Every file under `folder`, hidden `.part` files included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_good_download_is_verified_cached_and_then_served_from_the_cache(tmp_path, server, good_zip, canonical_bytes):
    server.routes["/sms.zip"] = send(good_zip)
    url, cache_dir = server.url("/sms.zip"), tmp_path / "cache"

    source, path = obtain_data_file(urls=[url], cache_dir=cache_dir, allow_bundled=False)
    assert source == url
    assert path == cache_dir / ARCHIVE_MEMBER
    assert path.read_bytes() == canonical_bytes
    assert files_in(cache_dir) == [ARCHIVE_MEMBER]
    assert server.requests["/sms.zip"] == 1

    source, again = obtain_data_file(urls=[url], cache_dir=cache_dir, allow_bundled=False)
    assert (source, again) == ("cache", path)
    assert server.requests["/sms.zip"] == 1


def test_load_sms_spam_downloads_from_the_given_urls(tmp_path, server, good_zip):
    server.routes["/sms.zip"] = send(good_zip)
    url = server.url("/sms.zip")
    _, report = load_sms_spam(urls=[url], cache_dir=str(tmp_path / "cache"), allow_bundled=False)
    assert report.source == url
    assert report.sha256 == SHA256
    assert report.path == str(tmp_path / "cache" / ARCHIVE_MEMBER)
    assert report.labels == {"ham": 4827, "spam": 747}


def test_primary_answering_500_falls_back_to_the_backup(tmp_path, server, good_zip, caplog):
    server.routes["/primary.zip"] = fail(500)
    server.routes["/backup.zip"] = send(good_zip)
    urls = [server.url("/primary.zip"), server.url("/backup.zip")]
    with caplog.at_level(logging.WARNING, logger="hf_spam.data"):
        source, path = obtain_data_file(urls=urls, cache_dir=tmp_path / "cache", allow_bundled=False)
    assert source == urls[1]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256
    assert server.requests == Counter({"/primary.zip": 1, "/backup.zip": 1})
    assert "500" in caplog.text


def test_primary_timing_out_falls_back_to_the_backup(tmp_path, server, good_zip):
    server.routes["/slow.zip"] = stall(server, 10, send(good_zip))
    server.routes["/backup.zip"] = send(good_zip)
    urls = [server.url("/slow.zip"), server.url("/backup.zip")]
    start = time.monotonic()
    source, path = obtain_data_file(urls=urls, cache_dir=tmp_path / "cache", timeout=0.5, allow_bundled=False)
    assert time.monotonic() - start < 5
    assert source == urls[1]
    assert files_in(tmp_path / "cache") == [ARCHIVE_MEMBER]
    assert server.requests["/slow.zip"] == 1


def test_every_source_timing_out_raises_download_error_naming_each_url(tmp_path, server, good_zip):
    server.routes["/a.zip"] = stall(server, 10, send(good_zip))
    server.routes["/b.zip"] = fail(503)
    urls = [server.url("/a.zip"), server.url("/b.zip")]
    with pytest.raises(DownloadError) as info:
        obtain_data_file(urls=urls, cache_dir=tmp_path / "cache", timeout=0.5, allow_bundled=False)
    assert urls[0] in str(info.value)
    assert urls[1] in str(info.value)
    assert files_in(tmp_path / "cache") == []


@pytest.mark.parametrize("corruption", ["changed_member", "not_a_zip"])
def test_corrupted_archive_fails_with_both_hashes_and_caches_nothing(tmp_path, server, canonical_bytes, corruption):
    if corruption == "changed_member":
        content = canonical_bytes.replace(b"Free entry", b"FREE ENTRY", 1)
        body = zip_of(content)
        actual = hashlib.sha256(content).hexdigest()
    else:
        body = b"<html>Service moved</html>" * 100
        actual = hashlib.sha256(body).hexdigest()
    assert actual != SHA256
    server.routes["/bad.zip"] = send(body)
    cache_dir = tmp_path / "cache"
    with pytest.raises(DataIntegrityError) as info:
        obtain_data_file(urls=[server.url("/bad.zip")], cache_dir=cache_dir, allow_bundled=True)
    assert actual in str(info.value)
    assert SHA256 in str(info.value)
    assert files_in(cache_dir) == []


def test_corrupted_archive_is_not_papered_over_by_the_backup(tmp_path, server, canonical_bytes, good_zip):
    server.routes["/bad.zip"] = send(zip_of(canonical_bytes[:-10]))
    server.routes["/good.zip"] = send(good_zip)
    with pytest.raises(DataIntegrityError):
        obtain_data_file(urls=[server.url("/bad.zip"), server.url("/good.zip")], cache_dir=tmp_path / "cache")
    assert server.requests["/good.zip"] == 0
    assert files_in(tmp_path / "cache") == []


def test_archive_without_the_member_fails_integrity(tmp_path, server, canonical_bytes):
    server.routes["/other.zip"] = send(zip_of(canonical_bytes, member="readme.txt"))
    with pytest.raises(DataIntegrityError, match=ARCHIVE_MEMBER):
        obtain_data_file(urls=[server.url("/other.zip")], cache_dir=tmp_path / "cache", allow_bundled=False)
    assert files_in(tmp_path / "cache") == []


def test_interrupted_transfer_caches_nothing_and_raises_without_bundled_fallback(tmp_path, server, good_zip):
    server.routes["/cut.zip"] = send(good_zip, content_length=len(good_zip), write=len(good_zip) // 2)
    cache_dir = tmp_path / "cache"
    with pytest.raises(DownloadError, match="interrupted"):
        obtain_data_file(urls=[server.url("/cut.zip")], cache_dir=cache_dir, allow_bundled=False)
    assert files_in(cache_dir) == []


def test_interrupted_transfer_falls_back_to_the_bundled_copy(tmp_path, server, good_zip, canonical_file):
    # The whole archive is sent, but the announced length is longer: the transfer still counts as cut short.
    server.routes["/cut.zip"] = send(good_zip, content_length=len(good_zip) + 1000)
    cache_dir = tmp_path / "cache"
    source, path = obtain_data_file(urls=[server.url("/cut.zip")], cache_dir=cache_dir, allow_bundled=True)
    assert (source, path) == ("bundled", canonical_file)
    assert server.requests["/cut.zip"] == 1
    assert files_in(cache_dir) == []


def send_chunked_then_hang_up(body: bytes):
    """A route that announces a chunk of the whole body, writes half of it and closes the connection."""

    def route(handler):
        handler.protocol_version = "HTTP/1.1"
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(b"%x\r\n" % len(body) + body[: len(body) // 2])
        handler.wfile.flush()
        handler.close_connection = True

    return route


def test_interrupted_chunked_transfer_is_a_download_failure(tmp_path, server, good_zip, canonical_file):
    server.routes["/cut.zip"] = send_chunked_then_hang_up(good_zip)
    server.routes["/backup.zip"] = send(good_zip)
    cache_dir = tmp_path / "cache"
    with pytest.raises(DownloadError, match="/cut.zip"):
        obtain_data_file(urls=[server.url("/cut.zip")], cache_dir=cache_dir, allow_bundled=False)
    assert files_in(cache_dir) == []
    assert obtain_data_file(urls=[server.url("/cut.zip")], cache_dir=cache_dir) == ("bundled", canonical_file)
    urls = [server.url("/cut.zip"), server.url("/backup.zip")]
    assert obtain_data_file(urls=urls, cache_dir=cache_dir, allow_bundled=False)[0] == urls[1]


def test_cached_file_with_wrong_hash_is_ignored_and_replaced(tmp_path, server, good_zip, canonical_bytes, caplog):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    stale = cache_dir / ARCHIVE_MEMBER
    stale.write_bytes(canonical_bytes[: len(canonical_bytes) // 2])
    stale_hash = hashlib.sha256(stale.read_bytes()).hexdigest()
    server.routes["/sms.zip"] = send(good_zip)
    with caplog.at_level(logging.WARNING, logger="hf_spam.data"):
        source, path = obtain_data_file(urls=[server.url("/sms.zip")], cache_dir=cache_dir, allow_bundled=False)
    assert source == server.url("/sms.zip")
    assert path == stale
    assert path.read_bytes() == canonical_bytes
    assert server.requests["/sms.zip"] == 1
    assert files_in(cache_dir) == [ARCHIVE_MEMBER]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Ignoring cached" in m and stale_hash in m for m in warnings)


def test_offline_environment_skips_downloads(tmp_path, server, good_zip, monkeypatch, canonical_file):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    server.routes["/sms.zip"] = send(good_zip)
    assert obtain_data_file(urls=[server.url("/sms.zip")], cache_dir=tmp_path / "cache") == ("bundled", canonical_file)
    assert server.requests["/sms.zip"] == 0
    with pytest.raises(DownloadError):
        obtain_data_file(urls=[server.url("/sms.zip")], cache_dir=tmp_path / "cache", allow_bundled=False)


def test_missing_data_file_raises_file_not_found_naming_the_path(tmp_path, server):
    missing = tmp_path / "nowhere" / "SMSSpamCollection.tsv"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        obtain_data_file(data_file=str(missing), urls=[server.url("/sms.zip")], cache_dir=tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_sms_spam(data_file=str(missing), cache_dir=str(tmp_path / "cache"))
    assert sum(server.requests.values()) == 0


def test_a_download_past_the_size_cap_stops_announced_or_not(tmp_path, server, monkeypatch):
    from hf_spam.data import collection as data

    monkeypatch.setattr(data, "MAX_DOWNLOAD_BYTES", 100_000)
    big = b"x" * 300_000
    server.routes["/announced.zip"] = send(big)
    server.routes["/unannounced.zip"] = lambda h: (h.send_response(200), h.end_headers(), h.wfile.write(big))
    for name in ("/announced.zip", "/unannounced.zip"):
        with pytest.raises(DownloadError, match="100,000"):
            obtain_data_file(urls=[server.url(name)], cache_dir=tmp_path / "cache", allow_bundled=False)
    assert files_in(tmp_path / "cache") == []


def test_a_zip_bomb_is_refused_before_it_unpacks(tmp_path, server, monkeypatch):
    from hf_spam.data import collection as data

    bomb = zip_of(b"\0" * 20_000_000)  # 20 MB of zeros: a 20 KB download
    assert len(bomb) < 100_000
    server.routes["/bomb.zip"] = send(bomb)
    unpacked = []
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda self, name: unpacked.append(name) or b"")
    with pytest.raises(DataIntegrityError, match="would unpack to 20,000,000 bytes"):
        obtain_data_file(urls=[server.url("/bomb.zip")], cache_dir=tmp_path / "cache", allow_bundled=False)
    assert unpacked == [] and data.MAX_MEMBER_BYTES < 20_000_000
