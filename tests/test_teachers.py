"""`wdistill teachers fetch` against a local HTTP server (127.0.0.1): a good archive, a checksum
mismatch, a checkpoint of the wrong architecture, a corrupt one, the offline case and a download
interrupted midway then resumed with a Range request."""
import hashlib
import io
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from wdistill import models
from wdistill.cli import main
from wdistill.config import load_config
from wdistill.engine import Trainer
from wdistill.errors import FetchError
from wdistill.models import teachers


def _ckpt_bytes(arch: str, num_classes: int = 100) -> bytes:
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save({"model": models.create(arch, num_classes=num_classes).state_dict(), "epoch": 240}, buf)
    return buf.getvalue()


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Server:
    """Serves ``files`` {url path: bytes}; honours ``Range: bytes=N-``; ``cut`` {path: n} sends the
    full Content-Length but only n bytes, then closes (an interrupted transfer), once."""

    def __init__(self):
        self.files, self.cut, self.ranges = {}, {}, []
        srv = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                data = srv.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                srv.ranges.append(rng)
                start = int(rng.split("=")[1].rstrip("-")) if rng else 0
                body = data[start:]
                self.send_response(206 if rng else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                n = srv.cut.pop(self.path, len(body))
                self.wfile.write(body[:n])
                self.wfile.flush()
                if n < len(body):
                    self.connection.shutdown(socket.SHUT_RDWR)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(teachers.BASE_URL_ENV, raising=False)
    return tmp_path / "cache" / "teachers" / "cifar100"




@pytest.fixture(scope="module")
def good_tar():
    return _tar({"cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth": _ckpt_bytes("resnet56"),
                 "cifar_teachers/resnet110_vanilla/ckpt_epoch_240.pth": _ckpt_bytes("resnet110")})


def test_fetch_verifies_and_records_sha256(server, cache, good_tar):
    server.files["/m/cifar_teachers.tar"] = good_tar
    out = teachers.fetch(["resnet56"], base_url=server.url + "m", progress=False, log=lambda *_: None)
    dest = cache / "resnet56.pth"
    assert out == {"resnet56": dest}
    digest = hashlib.sha256(dest.read_bytes()).hexdigest()
    assert (cache / "resnet56.pth.sha256").read_text() == f"{digest}  resnet56.pth\n"
    # the extracted file is exactly the archive member, and it loads strictly
    with tarfile.open(fileobj=io.BytesIO(good_tar)) as tar:
        assert dest.read_bytes() == tar.extractfile("cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth").read()
    # a preset-style config finds it through cache: and builds the teacher from it
    cfg = load_config({"student": {"model": "resnet8"}, "loss": [{"name": "kd"}],
                       "teacher": {"model": "resnet56", "checkpoint": "cache:teachers/cifar100/resnet56.pth"}})
    from wdistill.engine.build import build_model
    t = build_model(cfg.teacher, 100, 3, "teacher")
    ref = models.create("resnet56", 100)
    ref.load_state_dict(torch.load(io.BytesIO(_ckpt_bytes("resnet56")), weights_only=True)["model"])
    assert all(torch.equal(a, b) for a, b in zip(t.state_dict().values(), ref.state_dict().values()))
    # a second call downloads nothing (archive kept, file verified by its recorded sha256)
    n = len(server.ranges)
    teachers.fetch(["resnet56", "resnet110"], base_url=server.url + "m", progress=False, log=lambda *_: None)
    assert len(server.ranges) == n and (cache / "resnet110.pth.sha256").is_file()
    # a file changed after verification is verified again, and a broken one is refused
    dest.write_bytes(dest.read_bytes()[:1000])
    with pytest.raises(FetchError, match="not a valid resnet56"):
        teachers.fetch(["resnet56"], base_url=server.url + "m", progress=False, log=lambda *_: None)


def test_checksum_mismatch_deletes_the_archive(server, cache, good_tar):
    server.files["/cifar_teachers.tar"] = good_tar
    with pytest.raises(FetchError, match="SHA-256 .* was expected; the file was deleted"):
        teachers.fetch(["resnet56"], base_url=server.url, sha256="0" * 64, progress=False)
    assert not (cache / "cifar_teachers.tar").exists() and not (cache / "resnet56.pth").exists()
    right = hashlib.sha256(good_tar).hexdigest()
    teachers.fetch(["resnet56"], base_url=server.url, sha256=right, progress=False, log=lambda *_: None)
    assert (cache / "resnet56.pth").is_file()


@pytest.mark.parametrize("member,match", [
    (lambda: _ckpt_bytes("resnet20"), r"not a valid resnet56 .*missing keys.*matches zoo model resnet20"),
    (lambda: _ckpt_bytes("resnet56", num_classes=10), r"not a valid resnet56 .*another shape"),
    (lambda: b"\x80\x02garbage" * 100, r"not a valid resnet56 .*safe \(weights-only\) loader"),
])
def test_wrong_architecture_or_corrupt_checkpoint_is_refused(server, cache, member, match):
    server.files["/cifar_teachers.tar"] = _tar({"cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth": member()})
    with pytest.raises(FetchError, match=match):
        teachers.fetch(["resnet56"], base_url=server.url, progress=False)
    assert not list(cache.glob("resnet56.pth*")) and not (cache / "cifar_teachers.tar").exists()


def test_offline_error_says_which_file_to_put_where(cache, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc = main(["teachers", "fetch", "vgg13", "--url", f"http://127.0.0.1:{port}/", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"put it at {cache / 'cifar_teachers.tar'}" in err
    assert f"its vgg13_vanilla/ckpt_epoch_240.pth at {cache / 'vgg13.pth'}" in err
    # put by hand (offline), then verified by the same command without any network
    (cache / "vgg13.pth").write_bytes(_ckpt_bytes("vgg13"))
    assert main(["teachers", "fetch", "vgg13", "--url", f"http://127.0.0.1:{port}/", "--quiet"]) == 0
    assert (cache / "vgg13.pth.sha256").is_file()


def test_interrupted_download_resumes_with_range(server, cache, good_tar):
    server.files["/cifar_teachers.tar"] = good_tar
    server.cut["/cifar_teachers.tar"] = len(good_tar) // 3
    with pytest.raises(FetchError, match="could not download"):
        teachers.fetch(["resnet110"], base_url=server.url, progress=False)
    part = cache / "cifar_teachers.tar.part"
    assert part.stat().st_size == len(good_tar) // 3
    teachers.fetch(["resnet110"], base_url=server.url, progress=False, log=lambda *_: None)
    assert server.ranges == [None, f"bytes={len(good_tar) // 3}-"]
    assert (cache / "cifar_teachers.tar").read_bytes() == good_tar and not part.exists()
    assert (cache / "resnet110.pth").is_file()


def test_missing_teacher_in_preset_names_the_fetch_command(cache):
    cfg = load_config("cifar100/resnet56-resnet20/kd", ["data.name=fmnist_sample"])
    with pytest.raises(Exception, match=r"wdistill teachers fetch resnet56"):
        Trainer(cfg)
