"""Schemathesis against a live gateway: no 5xx, and every answer matches /openapi.json.

The gateway runs on loopback with the real RabbitMQ, a backend simulator behind its one
destination and a pull inbox for the test partner, in its own event loop on a thread (the
checks are synchronous: hypothesis drives requests through `requests`). The document is
fetched from the running gateway (the shared port: partner and admin API in one document).
Each operation gets explicit cases first (the description's example envelope, so the happy
path is a 202 with a receipt; real destination ids for the admin routes), then generated
ones, valid and invalid, bounded so the whole run stays well under a minute on 2 cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
import requests
import schemathesis
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.runtime.openapi.partner import example_envelope
from gateway.tools.simulator import Simulator
from tests.helpers import (
    ADMIN_TOKEN,
    OTHER_TOKEN,
    TOKEN,
    config_doc,
    delete_topology,
    fast_destination,
    run_gateway,
    sha,
    write_settings,
)

pytestmark = pytest.mark.integration
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Bounded for CI (about 15 s on 2 cores), and the same cases each run; SWGW_FUZZ_SCALE=10 runs ten
# times as many, with a fresh random seed, to look harder.
SCALE = int(os.environ.get("SWGW_FUZZ_SCALE", "1"))
EXAMPLES = {GenerationMode.POSITIVE: 60 * SCALE, GenerationMode.NEGATIVE: 30 * SCALE}
DESTINATIONS = ("vnaccs", "vn-inbox")
EXAMPLE_ID = "VNNSW-CUSDEC-20260305-001288"  # the MessageId of the description's example envelope


class LiveGateway:
    """A gateway and simulator in an event loop on a thread; `url` once started."""

    def __init__(self, tmp_path: Path, prefix: str) -> None:
        self.tmp_path, self.prefix = tmp_path, prefix
        self.url = ""
        self.loop = asyncio.new_event_loop()
        self.started = threading.Event()
        self.stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="live-gateway", daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:
            self.error = exc
            self.started.set()
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        self.stop = asyncio.Event()
        async with Simulator() as sim:
            partners = [
                {"id": "VN-NSW", "token_sha256": [sha(TOKEN)], "rate_per_s": 100000.0, "burst": 100000},
                {"id": "TH-NSW", "token_sha256": [sha(OTHER_TOKEN)], "rate_per_s": 100.0, "burst": 100},
            ]
            destinations = [
                fast_destination("vnaccs", sim),
                {"id": "vn-inbox", "kind": "inbox", "partner": "VN-NSW", "lease_s": 30},
            ]
            doc = config_doc(self.prefix, partners=partners, destinations=destinations)
            key = ed25519.Ed25519PrivateKey.generate()  # signed receipts: the 202's `receipt` is checked too
            pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
            (self.tmp_path / "receipts.pem").write_bytes(pem)
            doc["receipts"] = {"signing_keys": ["receipts.pem"]}
            settings_ = write_settings(self.tmp_path, doc)
            try:
                async with run_gateway(settings_) as gw:
                    self.url = gw.url
                    self.started.set()
                    await self.stop.wait()
            finally:
                await delete_topology(settings_)

    def __enter__(self) -> LiveGateway:
        self.thread.start()
        assert self.started.wait(60), "the gateway did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *_: object) -> None:
        if self.stop is not None:
            self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


@pytest.fixture
def live(tmp_path: Path, prefix: str) -> Iterator[LiveGateway]:
    with LiveGateway(tmp_path, prefix) as gateway:
        yield gateway


def aimed(doc: dict[str, Any]) -> dict[str, Any]:
    """The served document with the envelope's header narrowed to this gateway's parties and types, so
    generated envelopes get past the sender and authorisation checks to the payload's (the document
    allows any party id: which ones exist is configuration)."""
    doc = copy.deepcopy(doc)
    header = doc["components"]["schemas"]["Envelope"]["properties"]["Header"]["properties"]
    header["From"]["enum"] = ["VN-NSW", "TH-NSW"]
    header["To"]["enum"] = ["VN-VNACCS", "VN-NSW"]
    header["MessageType"]["enum"] = ["CUSDEC", "ECOO"]
    return doc


def envelopes(operation: Any) -> st.SearchStrategy[Any]:
    """Sends of the example envelope with its header and one payload value changed: past the envelope's
    checks to the sender, authorisation, duplicate (200, 409), payload schema and routing ones."""
    base = example_envelope()
    party = st.sampled_from(["VN-NSW", "TH-NSW", "VN-VNACCS", "XX"])
    text = st.one_of(st.from_regex(r"[A-Za-z0-9._:\-]{1,64}", fullmatch=True), st.text(max_size=70))

    def build(message_id: str, sender: str, receiver: str, message_type: str, quantity: str, media_type: str) -> Any:
        body = base
        for tag, value in (
            ("MessageId", message_id),
            ("From", sender),
            ("To", receiver),
            ("MessageType", message_type),
            ("GoodsItemQuantity", quantity),
        ):
            body = re.sub(f"<{tag}>[^<]*</{tag}>", lambda _, t=tag, v=value: f"<{t}>{escape(v)}</{t}>", body, count=1)
        return operation.Case(body=body.encode(), media_type=media_type)

    return st.builds(
        build,
        st.one_of(st.just(EXAMPLE_ID), st.sampled_from(["OAS-1", "OAS-2"]), text),
        party,
        party,
        st.sampled_from(["CUSDEC", "ECOO", "NOPE"]),
        st.one_of(st.just("5"), st.integers(-3, 10**6).map(str), text),
        st.sampled_from(["application/xml", "text/xml"]),
    )


def auth_for(path: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN if path.startswith('/admin/') else TOKEN}"}


def short_polls(case: Any) -> Any:
    """A long poll may wait 30 s by the contract; the run keeps each one under 0.2 s."""
    query = case.query or {}
    with contextlib.suppress(TypeError, ValueError):
        if float(query.get("wait_s", 0)) > 0.2:
            case.query = {**query, "wait_s": 0.1}
    return case


def explicit_cases(operation: Any) -> list[Any]:
    """The happy paths generation rarely finds: the example envelope, real destinations, an ack."""
    path, method = operation.path, operation.method.lower()
    if (method, path) == ("post", "/v1/messages"):
        # bytes go on the wire as they are (a str would be wrapped in <data> by the XML serializer)
        return [
            operation.Case(body=example_envelope().encode(), media_type="application/xml"),
            # A malformed Content-Type was a 500 (aiohttp's parser raised IndexError): now a 415.
            operation.Case(body=b"<x/>", media_type="application/xml", headers={"Content-Type": ";+*"}),
        ]
    if (method, path) == ("post", "/v1/inbox/ack"):
        return [operation.Case(body={"message_ids": ["never-pulled"]}, media_type="application/json")]
    if path == "/admin/destinations/{id}/replay":
        dry = [
            operation.Case(path_parameters={"id": d}, body={"dry_run": True}, media_type="application/json")
            for d in DESTINATIONS
        ]
        # A malformed or unknown charset in the Content-Type was a 500 (request.json() raised): now ignored.
        odd = [
            operation.Case(
                path_parameters={"id": "vnaccs"},
                body={"dry_run": True},
                media_type="application/json",
                headers={"Content-Type": ct},
            )
            for ct in (";+*", "application/json; charset=nope")
        ]
        return dry + odd
    if "{id}" in path:
        return [operation.Case(path_parameters={"id": d}) for d in DESTINATIONS]
    if path == "/admin/messages/{sender}/{message_id}":
        return [operation.Case(path_parameters={"sender": "VN-NSW", "message_id": EXAMPLE_ID})]
    if path == "/v1/messages/{message_id}":  # the example envelope's id, sent just before
        return [operation.Case(path_parameters={"message_id": EXAMPLE_ID}, query={"receipt": "1"})]
    return [] if "{" in path else [operation.Case()]


class Recorded(AssertionError):
    """A failed check, already in `failures`: stops hypothesis on this strategy."""


def checker(base_url: str, label: str, headers: dict[str, str], failures: list[str], seen: Counter[str]) -> Any:
    """One request and the checks on its answer; a failure is recorded (and raised to stop hypothesis)."""

    def check(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=15)
        seen[f"{label} {response.status_code}"] += 1
        if response.status_code in (200, 202) and case.path == "/v1/messages":
            seen[f"{label} {response.status_code} signed"] += "receipt" in response.json()
        if "problem+json" in str(response.headers.get("content-type")):
            with contextlib.suppress(ValueError, AttributeError):
                seen[f"{label} {response.status_code} {response.json().get('reason')}"] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except (AssertionError, FailureGroup) as exc:  # a FailureGroup is a BaseExceptionGroup
            failures.append(f"{label} -> {response.status_code}\n{exc}"[:2000])
            raise Recorded(label) from None

    return check


def test_no_5xx_and_every_answer_matches_the_description(live: LiveGateway) -> None:
    served = requests.get(f"{live.url}/openapi.json", timeout=10).json()
    schemathesis.openapi.from_dict(served).validate()
    schema = schemathesis.openapi.from_dict(aimed(served))
    failures: list[str] = []
    seen: Counter[str] = Counter()  # "<operation> <status>": how many answers
    tested = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        label = f"{operation.method.upper()} {operation.path}"

        check = checker(live.url, label, auth_for(operation.path), failures, seen)
        for case in explicit_cases(operation):
            with contextlib.suppress(Recorded):
                check(case)
        strategies = [(operation.as_strategy(mode).map(short_polls), n) for mode, n in EXAMPLES.items()]
        if (operation.method.lower(), operation.path) == ("post", "/v1/messages"):
            strategies.append((envelopes(operation), EXAMPLES[GenerationMode.POSITIVE]))
        if "{id}" in operation.path:  # also aim generated cases at real destinations
            real = st.sampled_from(DESTINATIONS).flatmap(
                lambda d, op=operation: op.as_strategy(path_parameters={"id": d})
            )
            strategies.append((real.map(short_polls), EXAMPLES[GenerationMode.POSITIVE]))
        for strategy, max_examples in strategies:
            run = settings(
                max_examples=max_examples,
                deadline=None,
                database=None,
                derandomize=SCALE == 1,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )(given(case=strategy)(check))
            try:
                run()
            except (Recorded, Unsatisfiable):  # written to `failures` by check / nothing invalid to generate
                pass
            except Exception as exc:  # the run itself broke (a transport error, a generation error)
                failures.append(f"{label}: {type(exc).__name__}: {exc}"[:2000])
        tested += 1
    assert tested >= 15
    print("\n".join(f"{n:5d}  {k}" for k, n in sorted(seen.items())))
    print("\n".join(dict.fromkeys(failures)))
    # The happy paths were reached, not only the refusals.
    for answer in (
        "POST /v1/messages 202",
        "GET /v1/messages/{message_id} 200",
        "GET /v1/inbox 200",
        "POST /v1/inbox/ack 200",
        "POST /admin/destinations/{id}/replay 200",
        "GET /admin/destinations/{id}/parked 200",
        "GET /admin/messages/{sender}/{message_id} 200",
    ):
        assert seen[answer], f"no {answer}"
    assert seen["POST /v1/messages 202 signed"], "the 202 carries a signed receipt"
    assert not failures, "\n".join(dict.fromkeys(failures))
