"""`wsss data fetch`: small fabricated archives served from 127.0.0.1 (nothing leaves the machine).

Resumed and restarted downloads, checksums, safe extraction, the `train_aug` rule, COCO class masks and
labels, and roots that `wsss validate` passes and the readers read."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers.data import palette_mask, rgb_image, voc_id, write_xml
from PIL import Image
from scipy.io import savemat

from conftest import REPO
from wsss.data.fetch.archives import ARCHIVES, Archive, mirrored, parse_mirrors
from wsss.data.fetch.coco_masks import IGNORE
from wsss.data.fetch.datasets import fetch_coco, fetch_voc
from wsss.data.fetch.extract import extract
from wsss.data.fetch.sbd import read_sbd_mask, train_aug_ids
from wsss.data.images import read_mask
from wsss.data.readers import read_dataset_source
from wsss.errors import ConfigError, DataError

# --- a file server on 127.0.0.1 that honours Range, can ignore it, and can cut a response short ---------


class FileServer:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: dict[str, int] = {}  # path → bytes sent before the connection is closed (next request only)
        self.ignore_range = False
        self.slow = False  # send bodies in small pieces, slowly (to interrupt a download)
        self.log: list[tuple[str, str | None, int]] = []  # (path, Range header, status)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    def archive(self, name: str, data: bytes, filename: str) -> Archive:
        """Serve `data` at /filename; the Archive entry with its real checksum."""
        self.files[f"/{filename}"] = data
        return Archive(name, f"{self.url}/{filename}", "md5:" + hashlib.md5(data).hexdigest())

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                data = server.files.get(self.path)
                rng = self.headers.get("Range")
                if data is None:
                    server.log.append((self.path, rng, 404))
                    return self.send_error(404)
                start = int(rng.split("=")[1].split("-")[0]) if rng and not server.ignore_range else 0
                status = 206 if rng and not server.ignore_range else 200
                if start >= len(data) and status == 206:
                    status, start = 416, len(data)
                server.log.append((self.path, rng, status))
                self.send_response(status)
                self.send_header("Content-Length", str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                body = data[start:]
                cut = server.cut.pop(self.path, None)
                body = body if cut is None else body[:cut]
                try:
                    for k in range(0, len(body), 4096 if server.slow else len(body) or 1):
                        self.wfile.write(body[k:k + 4096] if server.slow else body)
                        self.wfile.flush()
                        time.sleep(0.05 if server.slow else 0)
                except (BrokenPipeError, ConnectionResetError):  # the client went away
                    pass

            def log_message(self, *args):
                pass

        return Handler

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with FileServer() as s:
        yield s


# --- fabricated VOC 2012 + SBD ----------------------------------------------------------------------------

# VOC train a b, val c d; SBD train a e c (c is VOC val), SBD val f b; g is in no list.
IDS = {k: f"2008_00000{n}" for n, k in enumerate("abcdefg")}
OBJECTS = {"a": ["cat"], "b": ["dog"], "c": ["bird"], "d": ["cat", "dog"], "e": ["dog"], "f": ["bird"], "g": ["cat"]}


def _lines(*keys) -> str:
    return "".join(f"{IDS[k]}\n" for k in keys)


def _sbd_mask(key: str) -> np.ndarray:
    m = np.zeros((24, 32), np.uint8)
    m[4:20, 6:26] = voc_id(OBJECTS[key][0])
    return m


def _tar(src: Path, top: str, gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tf:
        tf.add(src / top, arcname=top)
    return buf.getvalue()


def voc_tar(tmp: Path) -> bytes:
    voc = tmp / "voc-src/VOCdevkit/VOC2012"
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    for n, (k, id_) in enumerate(IDS.items()):
        rgb_image(300 + n).save(voc / "JPEGImages" / f"{id_}.jpg", quality=95)
        write_xml(voc / "Annotations" / f"{id_}.xml", id_, OBJECTS[k])
        if k in "abcd":  # VOC's own masks: train and val only
            palette_mask(sorted(voc_id(o) for o in OBJECTS[k])).save(voc / "SegmentationClass" / f"{id_}.png")
    (voc / "ImageSets/Segmentation/train.txt").write_text(_lines("a", "b"))
    (voc / "ImageSets/Segmentation/val.txt").write_text(_lines("c", "d"))
    return _tar(tmp / "voc-src", "VOCdevkit")


def sbd_tgz(tmp: Path) -> bytes:
    ds = tmp / "sbd-src/benchmark_RELEASE/dataset"
    (ds / "cls").mkdir(parents=True)
    for k in "abcef":
        savemat(ds / "cls" / f"{IDS[k]}.mat", {"GTcls": {"Segmentation": _sbd_mask(k), "CategoriesPresent": 1}})
    (ds / "train.txt").write_text(_lines("a", "e", "c"))
    (ds / "val.txt").write_text(_lines("f", "b"))
    return _tar(tmp / "sbd-src", "benchmark_RELEASE", gz=True)


@pytest.fixture
def voc_archives(server, tmp_path):
    return {"voc": server.archive("voc", voc_tar(tmp_path / "src"), ARCHIVES["voc"].filename),
            "sbd": server.archive("sbd", sbd_tgz(tmp_path / "src"), ARCHIVES["sbd"].filename)}


def test_train_aug_rule():
    assert train_aug_ids(["a", "e", "c"], ["f", "b"], ["a", "b"], ["c", "d"]) == ["a", "b", "e", "f"]
    assert train_aug_ids(["x"], [], ["y"], ["x", "y"]) == []


def test_voc_fetch_builds_train_aug_that_validates_and_reads(server, voc_archives, tmp_path):
    from wsss.validation import validate_drop

    voc = fetch_voc(tmp_path / "raw", archives=voc_archives)
    assert voc == tmp_path / "raw/VOCdevkit/VOC2012"
    aug = [IDS[k] for k in "abef"]
    assert (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split() == aug
    assert sorted(p.stem for p in (voc / "SegmentationClassAug").iterdir()) == aug
    for k in "ab":  # VOC's own mask wins where it exists
        assert (voc / f"SegmentationClassAug/{IDS[k]}.png").read_bytes() == \
            (voc / f"SegmentationClass/{IDS[k]}.png").read_bytes()
    for k in "ef":  # else SBD's, as a palette PNG
        path = voc / f"SegmentationClassAug/{IDS[k]}.png"
        assert Image.open(path).mode == "P" and (read_mask(path) == _sbd_mask(k)).all()

    ds = read_dataset_source(voc, format="voc", splits=["train_aug", "val"])  # what `prepare` reads
    assert dict(zip(ds.table["id"], ds.table["split"])) == {**{i: "train_aug" for i in aug},
                                                             IDS["c"]: "val", IDS["d"]: "val"}
    assert dict(zip(ds.table["id"], ds.table["mask"]))[IDS["c"]] == f"SegmentationClass/{IDS['c']}.png"
    result = validate_drop(voc, report_dir=tmp_path / "report", min_side=8)
    assert result.success, result.verdicts

    requests = len(server.log)
    fetch_voc(tmp_path / "raw", archives=voc_archives)  # done: nothing downloaded, nothing rebuilt
    assert len(server.log) == requests


def test_cut_download_is_resumed_by_the_next_run(server, voc_archives, tmp_path):
    root = tmp_path / "raw"
    path = "/" + ARCHIVES["voc"].filename
    size = len(server.files[path])
    server.cut[path] = size // 2
    with pytest.raises(DataError, match=f"download cut at {size // 2} of {size} bytes"):
        fetch_voc(root, splits=["train", "val"], archives=voc_archives)
    part = root / "downloads" / (ARCHIVES["voc"].filename + ".part")
    assert part.stat().st_size == size // 2
    assert not (root / "downloads" / ARCHIVES["voc"].filename).exists() and not (root / "VOCdevkit").exists()

    fetch_voc(root, splits=["train", "val"], archives=voc_archives)
    assert server.log[-1] == (path, f"bytes={size // 2}-", 206)
    assert not part.exists() and (root / "VOCdevkit/VOC2012/JPEGImages").is_dir()


def test_server_ignoring_range_restarts_from_zero(server, voc_archives, tmp_path):
    root = tmp_path / "raw"
    path = "/" + ARCHIVES["voc"].filename
    part = root / "downloads" / (ARCHIVES["voc"].filename + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"garbage that a 200 answer must replace")
    server.ignore_range = True
    fetch_voc(root, splits=["val"], archives=voc_archives)
    assert server.log[-1][1:] == ("bytes=38-", 200)
    assert (root / "downloads" / ARCHIVES["voc"].filename).read_bytes() == server.files[path]


def test_complete_part_is_checked_not_downloaded_again(server, voc_archives, tmp_path):
    root = tmp_path / "raw"
    path = "/" + ARCHIVES["voc"].filename
    part = root / "downloads" / (ARCHIVES["voc"].filename + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(server.files[path])  # a run stopped between the last byte and the rename
    fetch_voc(root, splits=["val"], archives=voc_archives)
    assert server.log[-1][2] == 416 and (root / "VOCdevkit/VOC2012").is_dir()


def test_wrong_checksum_is_one_line_and_leaves_nothing(server, voc_archives, tmp_path):
    root = tmp_path / "raw"
    bad = {**voc_archives, "voc": Archive("voc", voc_archives["voc"].url, "md5:" + "0" * 32)}
    with pytest.raises(DataError) as err:
        fetch_voc(root, archives=bad)
    got = hashlib.md5(server.files["/" + ARCHIVES["voc"].filename]).hexdigest()
    assert str(err.value) == f"{bad['voc'].url}: checksum mismatch (expected md5:{'0' * 32}, got md5:{got})"
    assert [p.name for p in root.rglob("*")] == ["downloads"]  # no archive, no .part, nothing extracted


def _evil_tar(tmp: Path, member: tarfile.TarInfo) -> Path:
    path = tmp / "evil.tar"
    with tarfile.open(path, "w") as tf:
        ok = tarfile.TarInfo("top/ok.txt")
        ok.size = 2
        tf.addfile(ok, io.BytesIO(b"ok"))
        tf.addfile(member, io.BytesIO(b"x" * member.size))
    return path


def _member(name: str, link: str | None = None) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    if link is None:
        m.size = 1
    else:
        m.type, m.linkname = tarfile.SYMTYPE, link
    return m


@pytest.mark.parametrize("member, why", [
    (_member("top/../../escape.txt"), "'..' in its path"),
    (_member("/tmp/absolute.txt"), "absolute path"),
    (_member("top/link", link="../../outside"), "outside the destination"),
])
def test_unsafe_tar_member_is_refused_and_nothing_extracted(tmp_path, member, why):
    root = tmp_path / "root"
    with pytest.raises(DataError, match=f"refused member {member.name!r}.*{why}"):
        extract(_evil_tar(tmp_path, member), root, "md5:x")
    assert list(root.iterdir()) == [] and not (tmp_path / "escape.txt").exists()


def test_unsafe_zip_member_is_refused(tmp_path):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("top/ok.txt", "ok")
        zf.writestr("top/../../escape.txt", "x")
    with pytest.raises(DataError, match="refused member 'top/../../escape.txt'"):
        extract(path, tmp_path / "root", "md5:x")
    assert list((tmp_path / "root").iterdir()) == []


def test_extraction_merges_into_existing_folders(tmp_path):
    root = tmp_path / "root"
    (root / "top").mkdir(parents=True)
    (root / "top/mine.txt").write_text("kept")
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr("top/ok.txt", "ok")
    extract(tmp_path / "a.zip", root, "md5:abc")
    assert (root / "top/mine.txt").read_text() == "kept" and (root / "top/ok.txt").read_text() == "ok"
    assert (root / ".a.zip.extracted").read_text().strip() == "md5:abc"


def test_sbd_mask_errors_name_the_file(tmp_path):
    savemat(tmp_path / "bad.mat", {"other": np.zeros((2, 2))})
    with pytest.raises(DataError, match="bad.mat: not an SBD class mask"):
        read_sbd_mask(tmp_path / "bad.mat")


def test_mirrors():
    assert parse_mirrors(["voc=http://m/x.tar", "sbd=http://m/"], ("voc", "sbd")) == \
        {"voc": "http://m/x.tar", "sbd": "http://m/"}
    assert mirrored(ARCHIVES["sbd"], "http://m/").url == "http://m/benchmark.tgz"
    assert mirrored(ARCHIVES["sbd"], None) == ARCHIVES["sbd"]
    with pytest.raises(ConfigError, match="unknown archive 'coco'"):
        parse_mirrors(["coco=http://m/"], ("voc", "sbd"))
    with pytest.raises(ConfigError, match="expected NAME=URL"):
        parse_mirrors(["http://m/"], ("voc", "sbd"))


def test_cli_mirror_with_a_wrong_archive_is_one_line(server, tmp_path):
    server.files["/VOCtrainval_11-May-2012.tar"] = b"not the real archive"
    proc = subprocess.run([sys.executable, "-m", "wsss.cli", "data", "fetch", "voc", str(tmp_path / "raw"),
                           "--mirror", f"voc={server.url}/"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {server.url}/VOCtrainval_11-May-2012.tar: checksum mismatch (expected "
                      f"{ARCHIVES['voc'].checksum}, got md5:{hashlib.md5(b'not the real archive').hexdigest()})"]
    assert "Traceback" not in proc.stderr


def test_ctrl_c_stops_promptly_leaving_only_the_part_file(server, tmp_path):
    server.files["/VOCtrainval_11-May-2012.tar"] = bytes(400_000)
    server.slow = True
    root = tmp_path / "raw"
    part = root / "downloads/VOCtrainval_11-May-2012.tar.part"
    proc = subprocess.Popen([sys.executable, "-m", "wsss.cli", "data", "fetch", "voc", str(root),
                             "--mirror", f"voc={server.url}/"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (part.is_file() and part.stat().st_size) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err
    assert [p for p in root.rglob("*") if p.is_file()] == [part]
    assert 0 < part.stat().st_size < 400_000


# --- fabricated COCO 2014 ---------------------------------------------------------------------------------

CATS = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]  # → classes 1, 2, 3
PERSON, CAR, DOG = 1, 2, 3


def _box(x0, y0, x1, y1) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _crowd(x0, y0, x1, y1, h=24, w=32) -> dict:
    from pycocotools import mask as mask_utils

    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"counts": rle["counts"].decode(), "size": [h, w]}


def _ann(i, image, cat, segmentation, area, crowd=0) -> dict:
    return {"id": i, "image_id": image, "category_id": cat, "segmentation": segmentation, "area": area,
            "bbox": [0, 0, 1, 1], "iscrowd": crowd}


def coco_files(split: str) -> tuple[list[dict], list[dict]]:
    """Image 1: a large dog, a small person in front of it, a crowd of cars on the left strip;
    image 2: a crowd only; image 3: no annotation; image 4: one dog."""
    name = lambda i: f"COCO_{split}2014_{i:012d}.jpg"  # noqa: E731
    images = [{"id": i, "file_name": name(i), "width": 32, "height": 24} for i in (1, 2, 3, 4)]
    anns = [_ann(1, 1, 18, _box(2, 2, 30, 22), 560), _ann(2, 1, 1, _box(10, 8, 16, 14), 36),
            _ann(3, 1, 3, _crowd(0, 0, 8, 24), 192, crowd=1), _ann(4, 2, 1, _crowd(0, 0, 16, 24), 384, crowd=1),
            _ann(5, 4, 18, _box(4, 4, 20, 20), 256)]
    return images, anns


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    rgb_image(seed).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture
def coco_archives(server):
    notes, out = {}, {}
    for k, split in enumerate(("train", "val")):
        images, anns = coco_files(split)
        notes[f"annotations/instances_{split}2014.json"] = json.dumps(
            {"images": images, "annotations": anns, "categories": CATS}).encode()
        out[f"{split}2014"] = server.archive(f"{split}2014", _zip(
            {f"{split}2014/{im['file_name']}": _jpeg(400 + 10 * k + n) for n, im in enumerate(images)}),
            f"{split}2014.zip")
    out["annotations2014"] = server.archive("annotations2014", _zip(notes), "annotations_trainval2014.zip")
    return out


def test_coco_masks_labels_and_a_root_that_validates(coco_archives, tmp_path):
    from wsss.validation import validate_drop

    root = fetch_coco(tmp_path / "coco", archives=coco_archives)
    stem = "COCO_train2014_{:012d}".format
    mask = read_mask(root / f"SegmentationClass/train2014/{stem(1)}.png")
    assert mask[11, 12] == PERSON  # the small person is drawn over the large dog
    assert mask[18, 24] == DOG and mask[12, 5] == DOG  # the outlined dog is drawn over the crowd region
    assert mask[12, 1] == IGNORE and mask[23, 31] == 0  # crowd alone: ignore; outside everything: background
    assert set(np.unique(mask)) == {0, PERSON, DOG, IGNORE}

    labels = json.loads((root / "image_labels.json").read_text())
    assert labels[stem(1)] == [PERSON, DOG] and labels[stem(4)] == [DOG]  # the crowd's car is not a label
    for i in (2, 3):  # crowd only / nothing annotated: no label, set aside
        assert stem(i) not in labels and (root / f"unlabelled/train2014/{stem(i)}.jpg").is_file()
        assert not (root / f"train2014/{stem(i)}.jpg").exists()
    assert (root / "classes.txt").read_text().split("\n")[:3] == ["person", "car", "dog"]

    ds = read_dataset_source(root, format="coco", labels="image_labels.json")  # what `prepare` reads
    assert sorted(zip(ds.table["id"], ds.table["split"], ds.table["labels"])) == [
        ("COCO_train2014_000000000001", "train", (PERSON, DOG)), ("COCO_train2014_000000000004", "train", (DOG,)),
        ("COCO_val2014_000000000001", "val", (PERSON, DOG)), ("COCO_val2014_000000000004", "val", (DOG,))]
    result = validate_drop(root, labels="image_labels.json", report_dir=tmp_path / "report", min_side=8)
    assert result.success, result.verdicts

    before = (root / f"SegmentationClass/train2014/{stem(1)}.png").stat().st_mtime_ns
    fetch_coco(tmp_path / "coco", archives=coco_archives)  # a rerun keeps current masks as they are
    assert (root / f"SegmentationClass/train2014/{stem(1)}.png").stat().st_mtime_ns == before
