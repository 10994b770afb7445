"""Which S3 endpoints a job may use: only those the platform allows, never an arbitrary host.

The endpoint is platform configuration. A tenant may pick one of the platform's endpoints
(``LORA_STORAGE_ALLOWED_ENDPOINTS`` and the default ``LORA_STORAGE_ENDPOINT``) in
``spec.storage.endpoint``; anything else is refused before the operator or a trainer connects
to it, since the operator would otherwise send signed requests to a host the tenant controls.

Matching is exact on the parsed form: the host compared case-insensitively, the port (the
scheme's default when absent) and, when the allowed entry names one, the scheme. An entry
without a scheme allows both http and https. Other spellings of an address (decimal or hex
IPv4, an IPv4-mapped IPv6, a trailing dot) do not equal the listed text and are refused;
userinfo (``user@host``), paths, queries and fragments are refused outright.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
DEFAULT_ENDPOINT = "s3.amazonaws.com"
"""The endpoint when the platform names none."""


class EndpointError(ValueError):
    """An endpoint that cannot be parsed or is not allowed; the message says why."""


@dataclass(frozen=True)
class Endpoint:
    """A parsed S3 endpoint.

    Attributes:
        host: Lower-case host name or IP address (IPv6 without brackets).
        port: The port, or None when the text named none.
        scheme: ``http`` or ``https`` when the text named one, else None.
    """

    host: str
    port: int | None = None
    scheme: str | None = None

    def effective_scheme(self, secure: bool) -> str:
        """The scheme of a connection: the named one, else https when `secure`."""
        return self.scheme or ("https" if secure else "http")

    def effective_port(self, secure: bool) -> int:
        return self.port or DEFAULT_PORTS[self.effective_scheme(secure)]

    def address(self, secure: bool) -> str:
        """``host:port`` to connect to (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.effective_port(secure)}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        text = f"{host}:{self.port}" if self.port else host
        return f"{self.scheme}://{text}" if self.scheme else text


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``host[:port]`` or ``http(s)://host[:port]``.

    Raises:
        EndpointError: Not of that form (userinfo, a path, a query, another scheme, a bad port).
    """
    raw = text.strip()
    if not raw or any(c.isspace() or ord(c) < 32 or c == "\\" for c in raw):
        raise EndpointError(f"{text!r}: expected host:port or http(s)://host:port")
    scheme = None
    if "://" in raw:
        scheme, _, raw = raw.partition("://")
        scheme = scheme.lower()
        if scheme not in SCHEMES:
            raise EndpointError(f"{text!r}: scheme {scheme}:// is not http:// or https://")
    try:
        parts = urlsplit("//" + raw)
        port = parts.port
    except ValueError as err:
        raise EndpointError(f"{text!r}: {err}") from None
    if "@" in parts.netloc:
        raise EndpointError(f"{text!r}: user information (user@host) is not allowed in an endpoint")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in raw or "#" in raw:
        raise EndpointError(f"{text!r}: an endpoint is host:port, without a path, query or fragment")
    host = (parts.hostname or "").lower()
    if not host:
        raise EndpointError(f"{text!r}: no host")
    return Endpoint(host=host, port=port, scheme=scheme)


def unsafe_address(endpoint: Endpoint) -> str | None:
    """Why an allowed-list entry must not be used (a link-local, unspecified or multicast IP
    literal, e.g. the cloud metadata address 169.254.169.254), or None."""
    try:
        ip = ipaddress.ip_address(endpoint.host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_link_local or ip.is_unspecified or ip.is_multicast:
        return f"{endpoint.host} is a link-local, unspecified or multicast address"
    return None


def allows(allowed: Endpoint, wanted: Endpoint, secure: bool) -> bool:
    """Whether the allowed entry covers the wanted endpoint used with TLS `secure`."""
    scheme = wanted.effective_scheme(secure)
    if allowed.scheme and allowed.scheme != scheme:
        return False
    allowed_port = allowed.port or DEFAULT_PORTS[scheme]
    return allowed.host == wanted.host and allowed_port == wanted.effective_port(secure)


@dataclass(frozen=True)
class Target:
    """Where a job's storage requests go: the checked endpoint and whether TLS is used."""

    address: str
    """host:port."""
    secure: bool


def job_endpoint(requested: str | None, secure: bool, default: str, allowed: tuple[str, ...]) -> Target:
    """The endpoint a job's requests go to, checked against the platform's list.

    Args:
        requested: spec.storage.endpoint, or None for the platform default.
        secure: TLS wanted (spec.storage.secure, else the operator's setting); a scheme in the
            endpoint overrides it.
        default: The platform's default endpoint (always allowed); empty means AWS S3.
        allowed: The other endpoints the platform allows.

    Raises:
        EndpointError: The requested endpoint is malformed or not allowed; the message names
            spec.storage.endpoint and the allowed list.
    """
    platform = [e for e in (default or DEFAULT_ENDPOINT, *allowed) if e]
    if not requested:
        chosen = parse_endpoint(platform[0])
    else:
        listed = ", ".join(platform)
        try:
            chosen = parse_endpoint(requested)
        except EndpointError as err:
            raise EndpointError(f"spec.storage.endpoint: {err}; allowed: {listed}") from None
        if not any(allows(parse_endpoint(e), chosen, secure) for e in platform):
            raise EndpointError(f"spec.storage.endpoint: {requested!r} is not an endpoint this platform allows; "
                                f"allowed: {listed}")
    secure = chosen.effective_scheme(secure) == "https"
    return Target(address=chosen.address(secure), secure=secure)
