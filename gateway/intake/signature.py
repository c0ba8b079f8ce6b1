"""Message-level signatures: enveloped XML-DSig over the whole Envelope, checked against pinned certificates.

A partner configured with `signing_cert = "certs/vn-nsw.pem"` (or a list, to rotate) must
sign every message. Where the signature goes, and why:

    <Envelope xmlns="urn:swgw:envelope:1">
      <Header>...</Header>
      <Body>...</Body>
      <ds:Signature xmlns:ds="http://www.w3.org/2000/09/xmldsig#">   last child of Envelope
        <ds:SignedInfo> ... <ds:Reference URI=""> enveloped-signature transform ...

The last child of the Envelope, because that is where standard enveloped signers put it
(signxml's `XMLSigner().sign(root)`, xmlsec1 with a template appended to the root, Java's
`DOMSignContext(root)`), so partners need no custom placement; the envelope XSD allows one
optional `ds:Signature` there and nowhere else. `URI=""` signs the whole document, so the
header the gateway routes and authorises on (From, To, MessageType, MessageId) is covered,
not only the payload.

Verification is signxml's, with the partner's configured certificate passed as
`x509_cert`: any certificate or key in the message's KeyInfo is never trusted by itself
(signxml rejects a KeyValue that does not match the pinned certificate). On top of signxml,
this module insists on exactly one Signature, directly under Envelope, with exactly one
Reference to `""`, and only the enveloped and canonicalization transforms: signxml
silently skips transforms it does not know and would apply a base64 transform, either of
which could make a valid signature cover less than the whole envelope. SHA-1 is refused
(signxml's default). The certificate's validity period is checked at verification time.

Failures are 403 (`signature_missing`, `signature_invalid`): the message may be well
formed, but the gateway cannot attribute it to the partner. The gateway queues the bytes
it received, so the signature still verifies at the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import cryptography.exceptions
from cryptography import x509
from lxml import etree
from signxml.algorithms import CanonicalizationMethod
from signxml.exceptions import SignXMLException
from signxml.verifier import SignatureConfiguration, XMLVerifier

from gateway.errors import ConfigError, Forbidden
from gateway.settings.model import Partner

DS_NS = "http://www.w3.org/2000/09/xmldsig#"
ENVELOPED = f"{DS_NS}enveloped-signature"
_ALLOWED_TRANSFORMS = frozenset({ENVELOPED, *(m.value for m in CanonicalizationMethod)})
_ENVELOPE_TAG = "{urn:swgw:envelope:1}Envelope"
_NS = {"ds": DS_NS}


def _parser() -> etree.XMLParser:
    # signxml re-parses what it verifies; give it the same hardening as ingress.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def load_certificates(path: Path, *, config_file: str, key: str) -> tuple[x509.Certificate, ...]:
    """Every PEM certificate in `path`; ConfigError naming `key` if there is none or it is unreadable."""
    try:
        certs = tuple(x509.load_pem_x509_certificates(path.read_bytes()))
    except (OSError, ValueError) as exc:
        raise ConfigError(config_file, key, f"cannot read a PEM certificate from {path}: {exc}") from exc
    return certs


class SignatureVerifier:
    """Checks the enveloped XML-DSig of messages from partners that have `signing_cert`.

    Parameters:
        partners: the configured partners; certificates are loaded once, here, and a bad
            file raises ConfigError naming `partners[i].signing_cert`.
        config_file: named in those errors.
        clock: the time certificate validity is checked at; `datetime.now(UTC)` by default.
    """

    def __init__(
        self,
        partners: Iterable[Partner],
        *,
        config_file: str = "(config)",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._clock = clock
        self._certs: dict[str, tuple[x509.Certificate, ...]] = {}
        for i, p in enumerate(partners):
            if p.signing_cert:
                key = f"partners[{i}].signing_cert"
                self._certs[p.id] = tuple(
                    c for path in p.signing_cert for c in load_certificates(path, config_file=config_file, key=key)
                )

    def verify(self, partner: Partner, envelope: etree._Element) -> None:
        """Raise Forbidden (403) unless `envelope` carries a valid signature by `partner`, if it must.

        `envelope` is the root parsed by the hardened ingress parser; signxml works on a copy.
        """
        certs = self._certs.get(partner.id)
        if certs is None:
            return
        signature = self._signature(partner, envelope)
        self._check_shape(signature)
        problem = "no certificate configured"
        for cert in certs:  # several during rotation; any one may verify
            try:
                result = XMLVerifier().verify(
                    envelope,
                    x509_cert=cert,
                    parser=_parser(),
                    expect_config=SignatureConfiguration(
                        location="./", expect_references=1, verification_time=self._clock()
                    ),
                )
            # Whatever makes verification fail, the message is not attributable: fail closed.
            except (SignXMLException, cryptography.exceptions.InvalidSignature, ValueError, etree.LxmlError) as exc:
                problem = str(exc) or type(exc).__name__
                continue
            signed = result[0] if isinstance(result, list) else result
            if signed.signed_xml is not None and signed.signed_xml.tag == _ENVELOPE_TAG:
                return
            problem = "the signature does not cover the Envelope"
        raise Forbidden(
            f"The signature does not verify with partner {partner.id!r}'s registered signing certificate: "
            f"{problem}. Sign the Envelope as sent, after the last change, with the registered key.",
            reason="signature_invalid",
        )

    @staticmethod
    def _signature(partner: Partner, envelope: etree._Element) -> etree._Element:
        signatures = envelope.findall("ds:Signature", _NS)
        if not signatures:
            raise Forbidden(
                f"Partner {partner.id!r} must sign its messages: add an enveloped XML-DSig "
                '(ds:Signature, Reference URI="", RSA/ECDSA with SHA-256 or better) as the last child of Envelope.',
                reason="signature_missing",
            )
        if len(signatures) > 1:
            raise Forbidden(
                "The Envelope carries more than one ds:Signature; send exactly one.", reason="signature_invalid"
            )
        return signatures[0]

    @staticmethod
    def _check_shape(signature: etree._Element) -> None:
        references = signature.findall("ds:SignedInfo/ds:Reference", _NS)
        if len(references) != 1 or references[0].get("URI") != "":
            raise Forbidden(
                'The signature must have exactly one ds:Reference, with URI="" (the whole Envelope).',
                reason="signature_invalid",
            )
        for transform in references[0].findall("ds:Transforms/ds:Transform", _NS):
            algorithm = transform.get("Algorithm")
            if algorithm not in _ALLOWED_TRANSFORMS:
                raise Forbidden(
                    f"Signature transform {algorithm!r} is not accepted; use only enveloped-signature "
                    "and a canonicalization method.",
                    reason="signature_invalid",
                )
