"""The README's first command runs `swgw demo`: run it for real (own ports and prefix) and read its story."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings.load import load_settings
from tests.helpers import ROOT, delete_topology

pytestmark = [pytest.mark.integration, pytest.mark.drill]


def free_pair() -> int:
    """A free port p whose p+100 (the simulator's control port) is free too."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 100 > 65535:
            continue
        with socket.socket() as t:
            try:
                t.bind(("127.0.0.1", port + 100))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def demo_config(tmp_path: Path, prefix: str) -> Path:
    text = (ROOT / "ops" / "gateway.toml").read_text()
    text = text.replace('"../schemas/', f'"{ROOT}/schemas/')
    text = text.replace('prefix = "swgw"', f'prefix = "{prefix}"')
    text = re.sub(r"^port = 8080$", f"port = {free_pair()}", text, flags=re.M)
    for old in ("9001", "9002", "9003"):
        text = text.replace(f"127.0.0.1:{old}/", f"127.0.0.1:{free_pair()}/")
    path = tmp_path / "demo.toml"
    path.write_text(text)
    return path


async def test_the_demo_tells_the_whole_story(tmp_path: Path, rabbit_url: str, prefix: str) -> None:
    config = demo_config(tmp_path, prefix)
    try:
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "gateway", "demo", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    finally:
        await delete_topology(load_settings(config, env={}))
    out = result.stdout
    assert result.returncode == 0, result.stderr[-3000:]
    # A few lines per step: the logs go to a file named first, nothing else reaches the screen.
    lines = out.splitlines()
    assert len(lines) < 50, out
    assert not [line for line in lines if line.lstrip().startswith("{")], "JSON log lines on stdout"
    assert result.stderr == ""  # no log lines, and no progress drawn: stderr is not a terminal
    found = re.search(r"the gateway's logs go to (\S+)", lines[0])
    assert found is not None, lines[0]
    log = Path(found.group(1))
    try:
        assert "simulator data port" in await asyncio.to_thread(log.read_text)  # the logs went there instead
    finally:
        await asyncio.to_thread(log.unlink)
    assert f"the gateway's logs of this run: {log}" in out
    assert "delivered: " in out
    assert re.search(r"202 from \d+ partners: .*CUSDEC x\d.*ECOO x\d.*HANDOVER x\d", out)
    assert re.search(r"  422 \S+\.xml: .*line \d+", out)  # precise errors
    assert "400 billion-laughs document" in out
    assert "answers: 200 x 202" in out
    assert "vnaccs circuit=open, backlog=200 held in RabbitMQ" in out
    assert re.search(r"drained 200 messages in", out)
    assert "reason=rejected status=400" in out
    assert re.search(r"replayed [1-9]\d*, all delivered", out)
    assert "duplicate=True" in out
    assert "signed receipt verifies for these bytes: body_sha256=" in out
    assert "same as the first's: True" in out
    assert "demo finished" in out
