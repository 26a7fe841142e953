"""``fsnap analyze --html``: the page renders in a real browser (Debian's headless Chromium)
with a chart per layer, the sunburst, the wasted-space table, and the image's own strings
escaped (a hostile history line stays text)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from support.cli import fsnap, succeeded
from support.registry import RegistryProcess, busybox_members, make_image, make_layer

HOSTILE = "<script>alert('pwned')</script> RUN make"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: scripts/setup installs it")
        pytest.skip("chromium is not installed (scripts/setup installs it)")
    return found


def browser(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    argv = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_html_report_renders_a_chart_per_layer(registry: RegistryProcess, tmp_path: Path) -> None:
    layers = [
        make_layer(busybox_members()),
        make_layer({"opt/": b"", "opt/big": b"x" * 200_000, "opt/keep": b"k" * 5000}),
        make_layer({"opt/": b"", "opt/big": b"y" * 100_000, "srv/": b"", "srv/data": b"d" * 3000}),
    ]
    image = make_image(layers, history=["ADD busybox /", "RUN fetch big", HOSTILE])
    registry.push_image("report/wasteful", "v1", image)
    ref = f"{registry.host}/report/wasteful:v1"
    root = tmp_path / "root"
    succeeded(fsnap(root, "pull", ref))
    page = tmp_path / "report.html"
    nowhere = tmp_path / "missing" / "report.html"  # named as given, not its temporary file
    refused = fsnap(root, "analyze", ref, "--html", str(nowhere))
    assert refused.returncode == 2, refused.stderr
    said = f"fsnap: error: cannot write {nowhere}: no directory {nowhere.parent}\n"
    assert refused.stderr == said
    succeeded(fsnap(root, "analyze", ref, "--html", str(page)))
    text = page.read_text()
    assert "<script" not in text
    assert "&lt;script&gt;" in text
    assert "http://" not in text
    assert "https://" not in text

    dom = browser("--dump-dom", page.as_uri(), profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Uncaught" not in dom.stderr, dom.stderr[-2000:]
    assert "CONSOLE" not in dom.stderr, dom.stderr[-2000:]
    bars = re.findall(r"<svg class=\"layer-bar\"", dom.stdout)
    assert len(bars) == 3, dom.stdout[:2000]
    assert 'id="sunburst"' in dom.stdout
    assert dom.stdout.count("<path ") >= 3
    offenders = dom.stdout[dom.stdout.index('id="offenders"') :]
    assert "/opt/big" in offenders
    assert "efficiency" in dom.stdout

    shot = tmp_path / "report.png"
    done = browser(
        f"--screenshot={shot}",
        "--window-size=1200,1400",
        page.as_uri(),
        profile=tmp_path / "profile",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.exists(), done.stderr[-2000:]
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert shot.stat().st_size > 10_000
