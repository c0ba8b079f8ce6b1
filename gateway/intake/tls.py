"""TLS for the partner listener, and the verified client certificate of a request.

With `[server] tls_cert` and `tls_key` set the listener speaks TLS 1.2+ only. With
`client_ca` it also asks every client for a certificate; the handshake itself fails unless
the certificate chains to that CA, so by the time a request reaches auth.py the certificate
is verified and only needs mapping to a partner. `client_cert = "optional"` lets token-only
partners connect without one; `"required"` refuses any connection without one.

Certificates and keys are read once, when the context is built at start-up; to rotate
them, replace the files and restart (replicas one at a time), as SECURITY.md describes.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from gateway.errors import ConfigError
from gateway.settings.model import Server

if TYPE_CHECKING:  # the CLI imports this module; keep aiohttp out of its start-up
    from aiohttp import web


def server_context(server: Server, *, config_file: str = "(config)") -> ssl.SSLContext | None:
    """The SSLContext for `server`, or None when TLS is not configured.

    Raises ConfigError naming the key when a file cannot be loaded, so a bad certificate
    stops start-up instead of failing every handshake later.
    """
    if server.tls_cert is None or server.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(server.tls_cert, server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            config_file, "server.tls_cert", f"cannot load {server.tls_cert} / {server.tls_key}: {exc}"
        ) from exc
    if server.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=server.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(config_file, "server.client_ca", f"cannot load {server.client_ca}: {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED if server.client_cert == "required" else ssl.CERT_OPTIONAL
    return ctx


def peer_certificate(request: web.BaseRequest) -> bytes | None:
    """The client's DER certificate, verified by the handshake; None without TLS or without one."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    return der or None
