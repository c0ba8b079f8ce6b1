"""`swgw simulate`: run the backend simulator (simulator.py) from the command line.

`swgw simulate` = `add_arguments(parser)` then `run(namespace)`; `python -m gateway.tools.simulate`
runs `main(argv)`. Bad options exit 2 with a message naming the option.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Sequence
from dataclasses import fields

from gateway.tools.simulator import MODES, Mode, Simulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `swgw simulate`; cli.py adds them to its subparser."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    add("--port", type=int, default=8081, help="data port the gateway delivers to (default 8081)")
    add("--control-port", type=int, default=8082, help="control API port (default 8082)")
    add("--path", default="/inbound", help="delivery path (default /inbound)")
    add("--mode", dest="name", choices=MODES, default="up", help="starting mode (default up)")
    add("--status", type=int, default=503, help="error and sick modes: HTTP status (default 503)")
    add("--retry-after", help="error and sick modes: Retry-After header value")
    add("--delay-ms", type=int, default=0, help="slow mode: delay per request")
    add("--reject-type", dest="reject_types", action="append", default=[], help="reject mode: a type to 400")
    add("--flap-s", type=float, default=5.0, help="flap mode: seconds up, then down (default 5)")
    add("--fail-id", dest="fail_ids", action="append", default=[], help="any mode: a message id that always fails")
    add("--fail-status", type=int, default=500, help="status for --fail-id messages (default 500; 4xx gets parked)")


def mode_from_args(ns: argparse.Namespace) -> Mode:
    """The starting mode from `add_arguments` options; ValueError names a bad one."""
    return Mode(**{f.name: getattr(ns, f.name) for f in fields(Mode)})


async def serve(sim: Simulator) -> None:
    """Run `sim` until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with sim:
        print(f"simulator: deliveries to {sim.url}, control at {sim.control_url}/_sim/state", flush=True)
        await stop.wait()


def run(ns: argparse.Namespace) -> int:
    """Entry point for `swgw simulate` after argument parsing; returns the exit status."""
    try:
        mode = mode_from_args(ns)
    except ValueError as exc:  # e.g. --status 200
        print(f"swgw simulate: {exc}")
        return 2
    sim = Simulator(host=ns.host, port=ns.port, control_port=ns.control_port, path=ns.path, mode=mode)
    asyncio.run(serve(sim))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swgw simulate", description="Backend simulator for drills.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    raise SystemExit(main())
