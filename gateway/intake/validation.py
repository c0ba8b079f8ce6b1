"""Hardened XML parsing and schema validation: the checks every message passes before queueing.

Untrusted bytes are parsed with a parser that loads no DTD, expands no entity, touches
no file or network and keeps libxml2's depth/size limits (no `huge_tree`). Any DOCTYPE is
refused outright: a gateway has no use for one, and refusing it also refuses billion
laughs, external entities and external DTDs before they can do anything.

Schemas are compiled once, when the Validator is built at start-up, never per request.
Validation runs on lxml (libxml2) because it is ~50x faster than xmlschema on valid
documents; the error path turns libxml2's terse log into `Problem`s with line, column, a
readable path (`/Envelope/Body/Declaration/GoodsItem[2]/HSCode`) and a reason without
Clark-notation noise, so a partner can fix the message from the error alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from lxml import etree

from gateway.errors import ConfigError, InvalidMessage, MalformedXML, Problem
from gateway.settings.model import MessageType, Settings


def packaged(name: str) -> Path:
    """A file or folder shipped inside the package (pyproject's package-data), as a path on disk.

    Read with importlib.resources, so an installed gateway uses its own copy and never a
    checkout's folder. It must be a real path: lxml resolves xs:include and xs:import against
    the file system (pip installs a wheel as files, never zipped).
    """
    found = resources.files("gateway").joinpath(name)
    if not isinstance(found, Path) or not found.exists():
        raise RuntimeError(f"the swgw package has no {name!r} on disk ({found}); reinstall it from its wheel")
    return found.resolve()


MESSAGE_SET = packaged("schemas")
"""Envelope and payload XSDs, examples and their reference: schemas/ in a checkout, a copy in the wheel."""
ENVELOPE_NS = "urn:swgw:envelope:1"
ENVELOPE_TAG = f"{{{ENVELOPE_NS}}}Envelope"
ENVELOPE_XSD = MESSAGE_SET / "envelope" / "envelope-1.xsd"
MAX_PROBLEMS = 50
_XSD_NS = "http://www.w3.org/2001/XMLSchema"
# Clark names only ({urn:...}Name, {http://...}Name): a namespace URI always has a colon, a regex
# quantifier ({4}, {0,2}) or an enumeration set ({'IM', 'EX'}) never both lacks quotes and has one.
_CLARK_RE = re.compile(r"\{[^{}\s']*:[^{}\s']*\}")
_ELEMENT_PREFIX_RE = re.compile(r"^Element '[^']*'(?:, attribute '([^']*)')?: ")
# Children of xs:schema that bring another file's declarations into the same target namespace
# (xs:import brings another namespace: its elements are not this message type's roots).
_SAME_NAMESPACE = tuple(f"{{{_XSD_NS}}}{kind}" for kind in ("include", "redefine", "override"))


def untrusted_parser() -> etree.XMLParser:
    """The hardened parser for bytes from outside (also what bench/ceiling.py measures against)."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        collect_ids=False,
    )


def parse_xml(body: bytes, parser: etree.XMLParser | None = None) -> etree._Element:
    """Parse untrusted bytes; raise MalformedXML (400) with line and column on any problem."""
    if not body.strip():
        raise MalformedXML("The body is empty; expected an XML envelope.", reason="malformed_xml")
    try:
        root = etree.fromstring(body, parser or untrusted_parser())
    except etree.XMLSyntaxError as exc:
        line, column = exc.position if exc.position else (exc.lineno, 0)
        msg = exc.msg or str(exc)
        raise MalformedXML(
            f"The body is not well-formed XML at line {line}, column {column}: {msg}",
            problems=[Problem(line, column, "/", msg)],
        ) from exc
    except (ValueError, OSError, LookupError) as exc:  # bad encodings, NUL bytes in str input
        raise MalformedXML(f"The body cannot be decoded as XML: {exc}") from exc
    info: Any = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None:
        raise MalformedXML(
            "DOCTYPE declarations are not allowed (no DTDs, no entities); remove the <!DOCTYPE ...> line.",
            reason="doctype_forbidden",
        )
    return root


@dataclass(frozen=True)
class CompiledSchema:
    """One XSD compiled at start-up, and the payload roots it accepts (Clark names)."""

    name: str
    path: Path
    schema: etree.XMLSchema
    roots: frozenset[str]

    @classmethod
    def load(cls, name: str, path: Path, root: str | None = None) -> CompiledSchema:
        # Schema files are trusted (they come with the deployment) but still must not reach
        # the network: every xs:import/xs:include has to resolve to a local file.
        parser = etree.XMLParser(no_network=True, resolve_entities=False)
        doc = etree.parse(str(path), parser)
        schema = etree.XMLSchema(doc)
        top = doc.getroot()
        tns = top.get("targetNamespace")
        declared = global_elements(path, top)
        if root is not None and root not in declared:
            raise ValueError(
                f"root {root!r} is not a global element of {path.name} or the files it includes; "
                f"declared: {', '.join(sorted(declared)) or '(none)'}"
            )
        names = [root] if root is not None else sorted(declared)
        qualify = (lambda n: f"{{{tns}}}{n}") if tns else (lambda n: n)
        return cls(name, path, schema, frozenset(qualify(n) for n in names))

    def problems(self, element: etree._Element, body: bytes) -> list[Problem]:
        """Validate; return [] when valid, else the capped list of problems."""
        if self.schema.validate(element):
            return []
        return _explain(self.schema.error_log, element, body)


def global_elements(path: Path, top: etree._Element, seen: set[Path] | None = None) -> set[str]:
    """Local names of the global elements `path` declares, itself or through xs:include,
    xs:redefine and xs:override (same target namespace; a chameleon include takes the
    includer's), followed to any depth, each file once. These are the payload roots the
    schema can validate: libxml2 accepts an included declaration as a validation root, so
    roots read from the main file alone left a type whose elements live in an included
    file accepting nothing ("expected one of: ."). A location that is not a local file is
    skipped (schemas never reach the network; lxml would have refused it already).
    """
    seen = set() if seen is None else seen
    seen.add(path.resolve())
    names = {n for e in top.iterchildren(f"{{{_XSD_NS}}}element") if (n := e.get("name"))}
    for ref in top.iterchildren(*_SAME_NAMESPACE):
        target = _local_file(path, ref.get("schemaLocation"))
        if target is None or target in seen or not target.is_file():
            continue
        doc = etree.parse(str(target), etree.XMLParser(no_network=True, resolve_entities=False))
        names |= global_elements(target, doc.getroot(), seen)
    return names


def _local_file(base: Path, location: str | None) -> Path | None:
    if not location:
        return None
    parts = urlsplit(location)
    if parts.scheme == "file":
        return Path(unquote(parts.path)).resolve()
    if parts.scheme and len(parts.scheme) > 1:  # http(s) and the like; one letter is a Windows drive
        return None
    return (base.parent / unquote(location)).resolve()


@dataclass(frozen=True)
class Envelope:
    """What the gateway reads from a valid envelope header; the payload stays as parsed."""

    message_id: str
    correlation_id: str | None
    sender: str
    receiver: str
    message_type: str
    sent_at: str
    test: bool
    payload: etree._Element
    body: bytes


class Validator:
    """Runs exactly the ingress checks, for the server and for `swgw validate` alike.

    `rules` is the business-rule layer (gateway.intake.rules.check); it runs only on payloads that
    passed their schema, so rules may assume the structure the XSD guarantees.
    """

    def __init__(
        self,
        message_types: Iterable[MessageType],
        *,
        rules: Callable[..., Sequence[Problem]] | None = None,
        envelope_xsd: Path = ENVELOPE_XSD,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        config_file: str = "config",
    ) -> None:
        self._parser = untrusted_parser()
        self.envelope = CompiledSchema.load("Envelope", envelope_xsd, "Envelope")
        self.types: dict[str, CompiledSchema] = {}
        for i, t in enumerate(message_types):
            # A type that can accept no payload root would reject every message: refuse it
            # now, naming the key, rather than answer 422 "expected one of: ." at run time.
            try:
                compiled = CompiledSchema.load(t.name, t.schema, t.root)
            except ValueError as exc:
                raise ConfigError(config_file, f"message_types[{i}].root", str(exc)) from exc
            if not compiled.roots:
                raise ConfigError(
                    config_file,
                    f"message_types[{i}].schema",
                    f"{t.schema.name} declares no global element, itself or through xs:include/xs:redefine, "
                    f"so {t.name!r} could accept no payload; point it at the schema that declares the "
                    "document element",
                )
            self.types[t.name] = compiled
        self._rules = rules
        self._clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: object) -> Validator:
        return cls(settings.message_types, config_file=str(settings.path), **kwargs)  # type: ignore[arg-type]

    def read_envelope(self, body: bytes) -> Envelope:
        """Parse and check the envelope (400 / 422); the payload is not validated yet."""
        root = parse_xml(body, self._parser)
        if root.tag != ENVELOPE_TAG:
            raise MalformedXML(
                f"The document is not an envelope: its root is <{etree.QName(root).localname}> "
                f"in namespace {etree.QName(root).namespace or '(none)'!r}; expected <Envelope> "
                f"in namespace {ENVELOPE_NS!r}.",
                reason="not_envelope",
            )
        problems = self.envelope.problems(root, body)
        if problems:
            raise InvalidMessage(
                f"The envelope does not match its schema ({len(problems)} problem(s)); first: {problems[0]}",
                reason="envelope_invalid",
                problems=problems,
            )
        header, envelope_body = root[0], root[1]
        values = {etree.QName(el).localname: (el.text or "").strip() for el in header}
        return Envelope(
            message_id=values["MessageId"],
            correlation_id=values.get("CorrelationId"),
            sender=values["From"],
            receiver=values["To"],
            message_type=values["MessageType"],
            sent_at=values["SentAt"],
            test=values.get("TestIndicator") in ("true", "1"),
            payload=next(el for el in envelope_body if isinstance(el.tag, str)),
            body=body,
        )

    def check_payload(self, env: Envelope) -> None:
        """Validate the payload against its message type's schema, then the business rules."""
        compiled = self.types.get(env.message_type)
        if compiled is None:
            known = ", ".join(sorted(self.types)) or "(none configured)"
            raise InvalidMessage(
                f"Unknown message type {env.message_type!r}; this gateway accepts: {known}.",
                reason="unknown_message_type",
                problems=[_problem_at(_header_el(env, "MessageType"), env.body, "unknown message type")],
            )
        payload = env.payload
        if payload.tag not in compiled.roots:
            expected = ", ".join(sorted(_pretty(r) for r in compiled.roots))
            raise InvalidMessage(
                f"The payload <{_pretty(payload.tag)}> is not a {env.message_type} document; "
                f"expected one of: {expected}.",
                reason="wrong_payload",
                problems=[_problem_at(payload, env.body, f"expected {expected}")],
            )
        problems = compiled.problems(payload, env.body)
        if problems:
            raise InvalidMessage(
                f"The {env.message_type} payload does not match its schema ({len(problems)} problem(s)); "
                f"first: {problems[0]}",
                reason="schema_invalid",
                problems=problems,
            )
        if self._rules is not None:
            broken = [_with_column(p, env.body) for p in list(self._rules(payload, now=self._clock()))[:MAX_PROBLEMS]]
            if broken:
                raise InvalidMessage(
                    f"The {env.message_type} payload breaks {len(broken)} business rule(s); first: {broken[0]}",
                    reason="rule_violation",
                    problems=broken,
                )

    def check(self, body: bytes) -> Envelope:
        """All offline checks (no authorisation, no routing): what `swgw validate` runs."""
        env = self.read_envelope(body)
        self.check_payload(env)
        return env


def _pretty(tag: str) -> str:
    q = etree.QName(tag)
    return f"{q.localname} ({q.namespace})" if q.namespace else q.localname


def _header_el(env: Envelope, name: str) -> etree._Element:
    root = env.payload.getroottree().getroot()
    found = root.find(f"{{{ENVELOPE_NS}}}Header/{{{ENVELOPE_NS}}}{name}")
    return found if found is not None else root


def readable_path(el: etree._Element) -> str:
    """`/Envelope/Body/Declaration/GoodsItem[2]/HSCode`: local names, index only when repeated."""
    parts: list[str] = []
    node: etree._Element | None = el
    while node is not None:
        name = etree.QName(node).localname
        parent = node.getparent()
        if parent is not None:
            same = [c for c in parent if c.tag == node.tag]
            if len(same) > 1:
                name += f"[{same.index(node) + 1}]"
        parts.append(name)
        node = parent
    return "/" + "/".join(reversed(parts))


def _column_of(body: bytes, line: int | None, local: str) -> int | None:
    """libxml2 reports no column for schema errors; find the element's start tag on its line."""
    if line is None or line < 1 or not local:
        return None
    lines = body.split(b"\n", line)
    if len(lines) < line:
        return None
    text = lines[line - 1].decode("utf-8", "replace")
    m = re.search(r"<(?:[\w.-]+:)?" + re.escape(local) + r"(?=[\s/>])", text)
    return m.start() + 1 if m else None


def _column(body: bytes, line: int | None, el: etree._Element) -> int | None:
    return _column_of(body, line, etree.QName(el).localname)


def _with_column(problem: Problem, body: bytes) -> Problem:
    """Rules report line and path; add the column of the element the path ends in."""
    if problem.column is not None:
        return problem
    local = problem.path.rsplit("/", 1)[-1].split("[", 1)[0]
    column = _column_of(body, problem.line, local)
    return Problem(problem.line, column, problem.path, problem.reason) if column else problem


def _line(el: etree._Element) -> int | None:
    line = el.sourceline  # lxml-stubs types this loosely
    return line if isinstance(line, int) else None


def _problem_at(el: etree._Element, body: bytes, reason: str) -> Problem:
    line = _line(el)
    return Problem(line, _column(body, line, el), readable_path(el), reason)


def _locate(element: etree._Element, path: str | None) -> etree._Element | None:
    """Map libxml2's error path (relative to the validated element) back to the element."""
    if not path or not path.startswith("/"):
        return None
    steps = path.split("/")[2:]  # drop "" and the step naming the validated element itself
    if not steps:
        return element
    nsmap: dict[str, str] = {}
    for el in element.iter():
        for prefix, uri in el.nsmap.items():
            if prefix:
                nsmap.setdefault(prefix, uri)
    try:
        found = element.xpath("./" + "/".join(steps), namespaces=nsmap)
    except etree.XPathError:
        return None
    if isinstance(found, list) and found and isinstance(found[0], etree._Element):
        return found[0]
    return None


def _reason(message: str) -> str:
    m = _ELEMENT_PREFIX_RE.match(message)
    text = message[m.end() :] if m else message
    if m and m.group(1):
        text = f"attribute {_CLARK_RE.sub('', m.group(1))!r}: {text}"
    text = text.replace("##other", "")
    return _CLARK_RE.sub("", text).strip()


def _explain(log: etree._ListErrorLog, element: etree._Element, body: bytes) -> list[Problem]:
    problems: list[Problem] = []
    for entry in log:
        if len(problems) >= MAX_PROBLEMS:
            break
        el = _locate(element, entry.path)
        if el is not None:
            line = _line(el) or entry.line
            problems.append(Problem(line, _column(body, line, el), readable_path(el), _reason(entry.message)))
        else:
            problems.append(Problem(entry.line or None, None, entry.path or "/", _reason(entry.message)))
    return problems
