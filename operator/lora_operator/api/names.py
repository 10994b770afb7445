"""Kubernetes' own rules for the names and labels a spec passes on to the trainer pod (a Secret's
name, node-selector labels, toleration keys): the same regular expressions as
k8s.io/apimachinery's validation, bounded so RE2 (CEL's `matches`) can check lengths too.

The models check them (a template's values, objects stored before the CRD carried the rules),
and `crdgen.rules` turns the same expressions into CEL rules, so the apiserver refuses at
`kubectl apply` what the Pod API would refuse later (a 422 on the trainer pod).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = rf"^{_LABEL}(\.{_LABEL})*$"
"""A Secret's, a template's name: lowercase RFC 1123 labels joined by dots."""
DNS1123_SUBDOMAIN_MAX = 253
_NAME_PART = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = rf"^({_LABEL}(\.{_LABEL})*/)?{_NAME_PART}$"
"""A label key (a qualified name): an optional DNS-1123 subdomain prefix and '/', then a name of
at most 63 characters: alphanumerics, '-', '_', '.', starting and ending alphanumeric."""
LABEL_KEY_MAX = DNS1123_SUBDOMAIN_MAX + 1 + 63
LABEL_VALUE = rf"^({_NAME_PART})?$"
"""A label value: empty or at most 63 characters, as a label key's name part."""

SUBDOMAIN_TEXT = ("a lowercase RFC 1123 subdomain: a-z, 0-9, '-' and '.', starting and ending with a letter "
                  "or digit, at most 253 characters")
LABEL_KEY_TEXT = ("a label key: an optional DNS subdomain prefix and '/', then at most 63 characters of "
                  "letters, digits, '-', '_' and '.', starting and ending with a letter or digit")
LABEL_VALUE_TEXT = ("a label value: empty, or at most 63 characters of letters, digits, '-', '_' and '.', "
                    "starting and ending with a letter or digit")


def is_subdomain(value: str) -> bool:
    return len(value) <= DNS1123_SUBDOMAIN_MAX and re.fullmatch(DNS1123_SUBDOMAIN, value) is not None


def is_label_key(value: str) -> bool:
    prefix = value.rpartition("/")[0]
    return len(prefix) <= DNS1123_SUBDOMAIN_MAX and re.fullmatch(LABEL_KEY, value) is not None


def is_label_value(value: str) -> bool:
    return re.fullmatch(LABEL_VALUE, value) is not None


def _subdomain(value: str) -> str:
    if not is_subdomain(value):
        raise ValueError(f"{value!r} is not {SUBDOMAIN_TEXT}")
    return value


def _label_value(value: str) -> str:
    if not is_label_value(value):
        raise ValueError(f"{value!r} is not {LABEL_VALUE_TEXT}")
    return value


def _label_key(value: str) -> str:
    if not is_label_key(value):
        raise ValueError(f"{value!r} is not {LABEL_KEY_TEXT}")
    return value


def _labels(value: dict[str, str]) -> dict[str, str]:
    for key, item in value.items():
        _label_key(key)
        _label_value(item)
    return value


ObjectName = Annotated[str, AfterValidator(_subdomain)]
"""The name of a namespaced object the pod refers to (a Secret) or the operator reads (a template)."""
LabelKey = Annotated[str, AfterValidator(_label_key)]
LabelValue = Annotated[str, AfterValidator(_label_value)]
Labels = Annotated[dict[str, Annotated[str, Field(max_length=63)]], AfterValidator(_labels)]
"""Labels (a node selector): keys and values checked; values bounded in the schema so the CEL
rule over them stays within the apiserver's cost budget (map keys cannot be bounded there)."""
