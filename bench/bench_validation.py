"""Validation speed per message type: lxml (libxml2) vs xmlschema, documents per second.

Columns: parse/s = plain `etree.fromstring` of the whole envelope; lxml/s and
xmlschema/s = payload validation only; check/s = the gateway's full offline check
(`Validator.check`: parse, envelope XSD, payload XSD, business rules) on valid examples.

Measures what the gateway pays per message: validating an already-parsed payload against
its compiled schema (parsing is the same for both and is measured separately as
"parse"). Valid examples measure the hot path every accepted message takes; the invalid
(schema-error) examples measure the failure path, where collecting every error is the
point. Each figure is the median of --runs runs of at least --min-time seconds each.

    .venv/bin/python bench/bench_validation.py [--runs 5] [--min-time 0.3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import xmlschema
from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.intake import rules  # noqa: E402
from gateway.intake.validation import Validator  # noqa: E402
from gateway.settings.load import load_settings  # noqa: E402

CONFIG = ROOT / "schemas" / "examples" / "message-set.toml"


def rate(fn: Callable[[], object], *, runs: int, min_time: float) -> float:
    """Median calls per second over `runs` timed runs of at least `min_time` seconds."""
    fn()  # warm up (first-call caches)
    rates = []
    for _ in range(runs):
        n, start = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        rates.append(n / elapsed)
    return statistics.median(rates)


def payload_of(path: Path) -> etree._Element:
    return etree.parse(str(path)).getroot()[1][0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.3)
    args = parser.parse_args(argv)
    settings = load_settings(CONFIG)
    print(
        f"python {platform.python_version()}, lxml {etree.__version__} (libxml2 "
        f"{'.'.join(map(str, etree.LIBXML_VERSION))}), xmlschema {xmlschema.__version__}; "
        f"median of {args.runs} runs >= {args.min_time}s"
    )
    validator = Validator.from_settings(settings, rules=rules.check)
    header = (
        f"{'type':<9} {'docs':>4} {'avg KB':>6} {'parse/s':>9} {'lxml/s':>9} {'xmlschema/s':>11} {'ratio':>6}"
        f" {'check/s':>9}"
    )
    for kind in ("valid", "invalid"):
        note = {"valid": "the hot path", "invalid": "schema errors only: the failure path, every error collected"}
        print(f"\n{kind} examples ({note[kind]})")
        print(header)
        for mt in settings.message_types:
            lx = etree.XMLSchema(etree.parse(str(mt.schema)))
            xs = xmlschema.XMLSchema10(str(mt.schema))
            files = sorted((CONFIG.parent / mt.name / kind).glob("*.xml"))
            payloads = [payload_of(f) for f in files]
            if kind == "invalid":  # rule-only examples are schema-valid: not a failure-path sample
                keep = [i for i, p in enumerate(payloads) if not lx.validate(p)]
                files, payloads = [files[i] for i in keep], [payloads[i] for i in keep]
            if not payloads:
                continue
            bodies = [f.read_bytes() for f in files]

            def parse_all(bodies: list[bytes] = bodies) -> None:
                for b in bodies:
                    etree.fromstring(b)

            def lxml_all(payloads: list[etree._Element] = payloads, lx: etree.XMLSchema = lx) -> None:
                for p in payloads:
                    lx.validate(p)

            def xmlschema_all(payloads: list[etree._Element] = payloads, xs: xmlschema.XMLSchema10 = xs) -> None:
                for p in payloads:
                    for _ in xs.iter_errors(p):
                        pass

            n = len(payloads)
            parse_r = rate(parse_all, runs=args.runs, min_time=args.min_time) * n
            lxml_r = rate(lxml_all, runs=args.runs, min_time=args.min_time) * n
            xs_r = rate(xmlschema_all, runs=args.runs, min_time=args.min_time) * n

            def check_all(bodies: list[bytes] = bodies) -> None:
                for b in bodies:
                    validator.check(b)

            check = f"{'-':>9}"  # invalid documents raise: their cost is the xmlschema/lxml columns
            if kind == "valid":
                check = f"{rate(check_all, runs=args.runs, min_time=args.min_time) * n:>9,.0f}"
            kb = sum(len(b) for b in bodies) / n / 1024
            print(
                f"{mt.name:<9} {n:>4} {kb:>6.1f} {parse_r:>9,.0f} {lxml_r:>9,.0f} {xs_r:>11,.0f} {lxml_r / xs_r:>5.0f}x"
                f" {check}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
