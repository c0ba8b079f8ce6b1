"""`swgw inbox pull`: the reference client a partner runs against its pull inbox.

It downloads each batch, writes every message durably into a folder, and acknowledges
only what is on disk:

    1. GET /v1/inbox?limit=N&wait_s=S (the partner's token, from an environment variable);
    2. for each message: write `<sender>__<message_id>.xml` to a temporary name in the
       folder, fsync the file, rename it into place, fsync the folder (the rename is then
       durable too), so a crash leaves either the whole file or no file;
    3. POST /v1/inbox/ack with the ids written;
    4. again, until a poll comes back empty (or forever with `follow`).

A crash between 2 and 3 leaves files whose messages are offered again after their lease:
the same id is then written to the same name again (same bytes), so a partner's system
that reads the folder sees each message once per file name. Never acknowledge before the
write is durable: an acknowledged message is gone from the gateway.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class PullResult:
    written: list[Path]
    acknowledged: int


def file_name(message: dict[str, Any]) -> str:
    """`<sender>__<message_id>.xml`, anything but [A-Za-z0-9._-] replaced by `_` (no path tricks)."""
    return f"{_UNSAFE.sub('_', str(message['sender']))}__{_UNSAFE.sub('_', str(message['message_id']))}.xml"


def write_durably(folder: Path, name: str, data: bytes) -> Path:
    """Write `data` to folder/name so that after return it survives a power cut (fsync file, rename, fsync dir)."""
    final = folder / name
    tmp = folder / f".{name}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return final


async def pull(
    url: str,
    token: str,
    folder: Path,
    *,
    limit: int = 50,
    wait_s: float = 20.0,
    follow: bool = False,
    timeout_s: float = 60.0,
) -> PullResult:
    """Pull until a poll is empty (or forever with `follow`); returns what was written and acknowledged."""
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    headers = {"Authorization": f"Bearer {token}"}
    written: list[Path] = []
    acked = 0
    timeout = aiohttp.ClientTimeout(total=timeout_s + wait_s)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        while True:
            params = {"limit": str(limit), "wait_s": str(wait_s)}
            async with session.get(f"{url.rstrip('/')}/v1/inbox", params=params) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"GET /v1/inbox answered {resp.status}: {await resp.text()}")
                messages = (await resp.json())["messages"]
            if not messages:
                if follow:
                    continue
                return PullResult(written, acked)
            ids = []
            for m in messages:
                path = await asyncio.to_thread(write_durably, folder, file_name(m), m["body"].encode("utf-8"))
                written.append(path)
                ids.append(m["message_id"])
            async with session.post(f"{url.rstrip('/')}/v1/inbox/ack", json={"message_ids": ids}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"POST /v1/inbox/ack answered {resp.status}: {await resp.text()}")
                acked += len((await resp.json())["acknowledged"])


def add_command(sub: Any, common: Any) -> None:
    """`swgw inbox pull`: the reference client (see the module docstring)."""
    inbox = sub.add_parser("inbox", help="pull inbox client for partners").add_subparsers(
        dest="inbox_cmd", required=True
    )
    p = inbox.add_parser(
        "pull",
        parents=[common],
        help="download your inbox into a folder (each file written durably), acknowledging what was written",
    )
    p.add_argument("--url", help="the gateway's partner URL (default: [server] host and port of --config)")
    p.add_argument("--token-env", required=True, metavar="VAR", help="environment variable holding your bearer token")
    p.add_argument("--to", required=True, type=Path, metavar="DIR", help="folder to write the messages into")
    p.add_argument("--limit", type=int, default=50, help="messages per poll (1-100, default 50)")
    p.add_argument("--wait-s", type=float, default=20.0, help="long poll per request (0-30 s, default 20)")
    p.add_argument("--follow", action="store_true", help="keep polling instead of stopping at an empty poll")
    p.set_defaults(func=main)


def main(args: Any) -> int:
    import sys

    token = os.environ.get(args.token_env)
    if not token:
        print(f"error: environment variable {args.token_env} is not set (your bearer token)", file=sys.stderr)
        return 2
    url = args.url
    if url is None:
        from gateway.settings.load import load_settings

        server = load_settings(Path(args.config)).server
        scheme = "https" if server.tls_cert is not None else "http"
        url = f"{scheme}://{server.host}:{server.port}"
    result = asyncio.run(pull(url, token, args.to, limit=args.limit, wait_s=args.wait_s, follow=args.follow))
    print(f"{len(result.written)} message(s) written to {args.to}, {result.acknowledged} acknowledged")
    return 0
