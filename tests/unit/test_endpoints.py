"""spec.storage.endpoint: a job may name only an endpoint the platform allows (issue 26, finding 1).

Every spelling below either names an allowed endpoint exactly or is refused with a message that
names spec.storage.endpoint and the allowed list; nothing here connects anywhere (the cluster test
tests/cluster/test_tenant_storage.py shows that a refused endpoint is never contacted)."""

from __future__ import annotations

import pytest

from lora_operator.config import ConfigError, OperatorConfig
from lora_operator.endpoints import EndpointError, job_endpoint

DEFAULT = "minio.storage.svc:9000"
ALLOWED = ("https://s3.eu.example.com", "minio-b.storage.svc:9000")


def pick(requested: str | None, secure: bool = False):
    return job_endpoint(requested, secure, DEFAULT, ALLOWED)


@pytest.mark.parametrize(("requested", "secure", "address", "tls"), [
    (None, False, "minio.storage.svc:9000", False),
    ("minio.storage.svc:9000", False, "minio.storage.svc:9000", False),
    ("MINIO.Storage.svc:9000", False, "minio.storage.svc:9000", False),
    ("http://minio.storage.svc:9000", True, "minio.storage.svc:9000", False),
    ("https://minio-b.storage.svc:9000", False, "minio-b.storage.svc:9000", True),
    ("s3.eu.example.com", True, "s3.eu.example.com:443", True),
    ("https://s3.eu.example.com:443/", False, "s3.eu.example.com:443", True),
])
def test_allowed_endpoints_are_used_in_their_parsed_form(requested, secure, address, tls):
    target = pick(requested, secure)
    assert (target.address, target.secure) == (address, tls)


@pytest.mark.parametrize("requested", [
    "evil.example.com:9000",
    "169.254.169.254", "169.254.169.254:80", "http://169.254.169.254/latest/meta-data",
    "[fe80::1]:9000", "[::ffff:169.254.169.254]:80", "2852039166", "0xa9fea9fe",
    "minio.storage.svc:9001",  # another port of an allowed host
    "minio.storage.svc.:9000",  # a trailing dot is another name to a resolver's search list
    "minio.storage.svc",  # port 80, not 9000
    "http://s3.eu.example.com",  # the platform allows that host with https only
    "s3.eu.example.com",  # ... and without TLS it would be http
    "user:pw@minio.storage.svc:9000", "minio.storage.svc:9000@evil.example.com",
    "evil.example.com#@minio.storage.svc:9000", "minio.storage.svc:9000/path", "minio.storage.svc:9000?x=1",
    "ftp://minio.storage.svc:9000", "file:///etc/passwd", "minio.storage.svc:99999", " ", "minio storage:9000",
    "minio.storage.svc:9000\\@evil",
])
def test_any_other_endpoint_is_refused_naming_the_field_and_the_allowed_list(requested):
    with pytest.raises(EndpointError, match=r"^spec\.storage\.endpoint: .*allowed: minio\.storage\.svc:9000, "
                                            r"https://s3\.eu\.example\.com, minio-b\.storage\.svc:9000$"):
        pick(requested)


def test_the_operator_refuses_an_allow_list_it_cannot_use():
    config = OperatorConfig.from_env({"LORA_STORAGE_ALLOWED_ENDPOINTS": " a:1, https://b:2 ,,"})
    assert config.storage_allowed_endpoints == ("a:1", "https://b:2")
    for bad in ("169.254.169.254:80", "u@host:1", "ftp://x:1", "[fe80::1]:9000"):
        with pytest.raises(ConfigError, match="^LORA_STORAGE_ALLOWED_ENDPOINTS: "):
            OperatorConfig.from_env({"LORA_STORAGE_ALLOWED_ENDPOINTS": bad})
    with pytest.raises(ConfigError, match="^LORA_STORAGE_ENDPOINT: "):
        OperatorConfig.from_env({"LORA_STORAGE_ENDPOINT": "http://x:1/path"})
