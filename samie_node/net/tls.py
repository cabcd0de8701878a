"""TLS contexts for DICOM secure transport (PS3.15 B.1 / BCP 195): TLS 1.2 minimum, 1.3 preferred."""

from __future__ import annotations

import ssl

from samie_node.config import TlsSettings
from samie_node.errors import ConfigError


def _minimum(settings: TlsSettings) -> ssl.TLSVersion:
    return ssl.TLSVersion.TLSv1_3 if settings.minimum_version == "1.3" else ssl.TLSVersion.TLSv1_2


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """A context for connecting to a peer: verifies its certificate, offers ours when configured."""
    try:
        context = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(settings.ca_certificates) if settings.ca_certificates else None,
        )
        context.minimum_version = _minimum(settings)
        if settings.certificate is not None:
            context.load_cert_chain(
                str(settings.certificate), str(settings.private_key) if settings.private_key else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot set up TLS client context: {exc}") from exc
    return context


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """A context for the TLS listener; requires client certificates when configured (mutual TLS)."""
    if settings.certificate is None:
        raise ConfigError("the TLS listener needs node.tls.certificate (and private_key)")
    try:
        context = ssl.create_default_context(
            ssl.Purpose.CLIENT_AUTH,
            cafile=str(settings.ca_certificates) if settings.ca_certificates else None,
        )
        context.minimum_version = _minimum(settings)
        context.load_cert_chain(str(settings.certificate), str(settings.private_key) if settings.private_key else None)
        context.verify_mode = ssl.CERT_REQUIRED if settings.require_client_certificate else ssl.CERT_NONE
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot set up TLS server context: {exc}") from exc
    return context
