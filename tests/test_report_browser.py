"""The HTML report in a real headless browser (Debian's chromium): it renders, its
screenshot is not blank, and the rendered DOM has the main section headings."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from bench.report.build import build_report
from tests.test_report import SECTIONS, make_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)"
)


def _unfilter_row(kind: int, row: np.ndarray, prior: np.ndarray, bpp: int) -> np.ndarray:
    """Undo one PNG scanline filter (PNG spec, section 9)."""
    if kind == 0:
        return row
    if kind == 2:
        return (row.astype(np.uint16) + prior).astype(np.uint8)
    if kind == 1:
        pixels = row.reshape(-1, bpp).astype(np.uint64)
        return (np.cumsum(pixels, axis=0) % 256).astype(np.uint8).ravel()
    out = bytearray(row.tobytes())
    up = prior.tobytes()
    for i in range(len(out)):
        a = out[i - bpp] if i >= bpp else 0
        b = up[i]
        if kind == 3:
            out[i] = (out[i] + (a + b) // 2) & 0xFF
            continue
        c = up[i - bpp] if i >= bpp else 0
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        out[i] = (out[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    return np.frombuffer(bytes(out), dtype=np.uint8)


def png_pixels(path: Path) -> np.ndarray:
    """Decode an 8-bit, non-interlaced RGB or RGBA PNG into a (height, width, channels) array."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, header, idat = 8, b"", []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        header = body if kind == b"IHDR" else header
        if kind == b"IDAT":
            idat.append(body)
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, "unsupported PNG layout"
    bpp = 3 if colour == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), dtype=np.uint8)
    rows = raw.reshape(height, width * bpp + 1)
    prior = np.zeros(width * bpp, dtype=np.uint8)
    image = np.empty((height, width * bpp), dtype=np.uint8)
    for y in range(height):
        prior = image[y] = _unfilter_row(int(rows[y, 0]), rows[y, 1:], prior, bpp)
    return image.reshape(height, width, bpp)


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *FLAGS, *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser") / "runs"
    base = make_run(root, seed=31)
    new = make_run(root, seed=32, slow={"substation_cam": 1.3})
    files = build_report(
        [new], baseline=base, out=root.parent / "report", runs_dir=root, progress=None
    )
    return files.html


def test_screenshot_of_the_report_is_not_blank(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "report.png"
    result = _chromium(f"--screenshot={shot}", "--window-size=1280,4000", report.as_uri())
    assert shot.exists(), f"chromium wrote no screenshot: {result.stderr[-2000:]}"
    pixels = png_pixels(shot)
    assert pixels.shape[:2] == (4000, 1280)
    grey = pixels[..., :3].astype(np.float64).mean(axis=2)
    assert grey.std() > 10, "the screenshot is (nearly) one colour"
    # the top of the page, where the headline and the first tables are, has content too
    assert grey[:600].std() > 10
    # plots are drawn: the palette's blue (#0072B2) or orange (#E69F00) appears somewhere
    rgb = pixels[..., :3].astype(int)
    coloured = (np.abs(rgb - [0, 114, 178]).sum(axis=2) < 30) | (
        np.abs(rgb - [230, 159, 0]).sum(axis=2) < 30
    )
    assert coloured.sum() > 200


def test_rendered_dom_has_the_main_sections(report: Path) -> None:
    result = _chromium("--dump-dom", report.as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    headings = re.findall(r"<h2>([^<]+)</h2>", dom)
    assert headings == [*SECTIONS[:9], "Other measurements", SECTIONS[9]]
    assert dom.count("<svg") >= 6
    assert "<script" not in dom.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
