"""sharding.py with inference.py and validate.py under torchrun (2 CPU processes, gloo), and the report page."""

import json
import os
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest
import skimage.data

from srdensenet import report, sharding
from srdensenet.checkpoint import save_checkpoint
from srdensenet.image_files import write_image
from srdensenet.model import SRDenseNet

TINY = dict(num_blocks=2, layers_per_block=2, growth_rate=4, num_features=8, bottleneck_features=8)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "w.pth"
    save_checkpoint(path, SRDenseNet(2, **TINY))
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos") / "Photos"
    (root / "sub").mkdir(parents=True)
    astronaut = skimage.data.astronaut()
    for i in range(5):
        write_image(root / ("sub" if i % 2 else "") / f"p{i}.png", astronaut[40 * i:40 * i + 36, 100:146])
    write_image(root / "gray.png", skimage.data.camera()[:30, :42])
    write_image(root / "p1.png", astronaut[300:330, 200:240])  # the name of sub/p1.png: results name it by path
    return root


def launch(repo_root, script, *args, processes=2):
    prefix = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [*(prefix if processes > 1 else [sys.executable]), script, *map(str, args)]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shard_takes_every_world_th_item():
    items = list(range(11))
    shares = [sharding.shard(items, rank, 3) for rank in range(3)]
    assert sorted(sum(shares, [])) == items and [len(s) for s in shares] == [4, 4, 3]
    assert sharding.shard(items, 0, 1) == items and sharding.gather("x", 1) == ["x"]


def test_two_processes_write_the_same_files_as_one(repo_root, weights, photos, tmp_path):
    common = ["--weights", weights, "-i", photos, "--precision", "fp32", "--threads", "1"]
    launch(repo_root, "inference.py", *common, "-o", tmp_path / "one", processes=1)
    result = launch(repo_root, "inference.py", *common, "-o", tmp_path / "two")
    one, two = files(tmp_path / "one"), files(tmp_path / "two")
    assert len(one) == 7 and one == two  # byte for byte, sub-folders mirrored
    assert "7 written, 0 skipped (already there), 0 failed, of 7 images (2 processes)" in result.stderr
    assert result.stderr.count("written, ") == 1  # one summary, from rank 0
    # A killed sharded run resumes by skipping what is done: remove two outputs and run again.
    for name in ("p0.png", "sub/p3.png"):
        (tmp_path / "two" / name).unlink()
    again = launch(repo_root, "inference.py", *common, "-o", tmp_path / "two")
    assert "2 written, 5 skipped" in again.stderr and files(tmp_path / "two") == one


def test_two_processes_score_like_one(repo_root, weights, photos, tmp_path):
    common = ["--weights", weights, "--valid-dirs", photos, "--device", "cpu", "--threads", "1"]
    launch(repo_root, "validate.py", *common, "--json", tmp_path / "one.json", processes=1)
    result = launch(repo_root, "validate.py", *common, "--json", tmp_path / "two.json", "--report", tmp_path / "r")
    one, two = (json.loads((tmp_path / n).read_text()) for n in ("one.json", "two.json"))
    assert one["datasets"] == two["datasets"]  # same images, same order, same numbers to the last bit
    assert list(two["datasets"]["Photos"]["images"]) == list(one["datasets"]["Photos"]["images"])
    assert two["meta"]["processes"] == 2 and result.stdout.count("summary x2") == 1
    page = PageParser.read(tmp_path / "r" / "index.html")
    assert len(page.rows) == 1 + 7  # the set's row and one row per image, gathered from both processes
    assert all((tmp_path / "r" / src).is_file() for src in page.images) and len(page.images) == 7 * 4


class PageParser(HTMLParser):
    """The parts of index.html a test checks: table rows, image sources, external references, sortable headers."""

    def __init__(self):
        super().__init__()
        self.rows, self.images, self.external, self.sortable_headers = [], [], [], 0
        self.rows_in_head = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and not self.rows_in_head:
            self.rows.append(tag)
        if tag == "thead":
            self.rows_in_head = True
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "th" and "sortBy" in (attrs.get("onclick") or ""):
            self.sortable_headers += 1
        for value in attrs.values():
            if value and ("://" in value or value.startswith("//")):
                self.external.append(value)

    def handle_endtag(self, tag):
        if tag == "thead":
            self.rows_in_head = False

    @classmethod
    def read(cls, path):
        parser = cls()
        parser.feed(path.read_text())
        return parser


def test_report_page_structure_and_images(repo_root, weights, photos, tmp_path):
    launch(repo_root, "validate.py", "--weights", weights, "--valid-dirs", photos, "--device", "cpu",
           "--report", tmp_path / "r", processes=1)
    page = PageParser.read(tmp_path / "r" / "index.html")
    assert len(page.rows) == 1 + 7 and page.sortable_headers == 7 + 7
    assert len(page.images) == 7 * 4 and all((tmp_path / "r" / src).is_file() for src in page.images)
    assert page.external == []  # self-contained: no CDN, no network
    assert "sub/p1.png" in (tmp_path / "r" / "index.html").read_text()  # a name two sub-folders share: its path
    refused = subprocess.run([sys.executable, "validate.py", "--weights", str(weights), "--valid-dirs", str(photos),
                              "--device", "cpu", "--report", str(tmp_path / "r")], cwd=repo_root,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "--force" in refused.stderr and "Traceback" not in refused.stderr


def test_gain_window_finds_where_the_model_helps_most():
    rng = np.random.default_rng(0)
    hr = rng.uniform(0, 255, (80, 96))
    bicubic = hr + rng.normal(0, 10, hr.shape)
    sr = bicubic.copy()
    sr[40:56, 8:24] = hr[40:56, 8:24]  # the model fixes this 16x16 region only
    assert report.gain_window(sr, bicubic, hr, 16, 4) == (40, 8)
    sr = bicubic.copy()
    sr[0:16, 0:16] = hr[0:16, 0:16]  # in the border the protocol does not score: never chosen
    top, left = report.gain_window(sr, bicubic, hr, 16, 4)
    assert top >= 4 and left >= 4
