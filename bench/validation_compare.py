"""lxml vs xmlschema error messages on the message set's invalid examples, side by side.

For every invalid example that breaks its schema (rule-only examples are schema-valid and
produce the same rule problems either way), print what a partner would read:

  expected  the example's swgw-expect comment
  lxml      the Problem the gateway answers with today (gateway.intake.validation on libxml2)
  xmlschema line, path and reason of each xmlschema error (its long `message` and the
            schema-component dump are left out: partners do not read XSD source)

    .venv/bin/python bench/validation_compare.py [TYPE ...]

The conclusion is recorded in bench/VALIDATION.md.
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import xmlschema
from lxml import etree

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.errors import IngressError  # noqa: E402
from gateway.intake.validation import Validator  # noqa: E402
from gateway.settings.load import load_settings  # noqa: E402

CONFIG = ROOT / "schemas" / "examples" / "message-set.toml"
_EXPECT = re.compile(r"<!--\s*swgw-expect:(.*?)-->", re.S)
_CLARK = re.compile(r"\{[^{}\s']*:[^{}\s']*\}")  # Clark names, not {4} quantifiers


def _wrap(label: str, text: str) -> str:
    return textwrap.fill(text, width=108, initial_indent=f"  {label:<10}", subsequent_indent=" " * 12)


def main(argv: list[str] | None = None) -> int:
    wanted = set(argv if argv is not None else sys.argv[1:])
    settings = load_settings(CONFIG)
    validator = Validator.from_settings(settings)  # schema only: rules are the same for both engines
    for mt in settings.message_types:
        if wanted and mt.name not in wanted:
            continue
        lx = etree.XMLSchema(etree.parse(str(mt.schema)))
        xs = xmlschema.XMLSchema10(str(mt.schema))
        for path in sorted((CONFIG.parent / mt.name / "invalid").glob("*.xml")):
            body = path.read_bytes()
            root = etree.fromstring(body)
            payload = root[1][0]
            if lx.validate(payload):
                continue
            print(f"\n{mt.name}/invalid/{path.name}")
            m = _EXPECT.search(body.decode())
            print(_wrap("expected", m.group(1).strip() if m else "(no swgw-expect comment)"))
            try:
                validator.check(body)
            except IngressError as exc:
                for p in exc.problems:
                    print(_wrap("lxml", f"line {p.line}, column {p.column}: {p.path}: {p.reason}"))
            for err in xs.iter_errors(payload):
                where = f"line {err.sourceline}: /Envelope/Body{err.path}"
                print(_wrap("xmlschema", f"{where}: {_CLARK.sub('', err.reason or err.message)}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
