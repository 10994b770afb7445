"""The syntax of the storage URIs and image sizes a job may name, as schema patterns.

Patterns (not validators) so that the CRD carries them and the apiserver refuses a bad value
at ``kubectl apply``, before the job is ever queued; pydantic checks the same pattern for
local runs. They must stay within RE2 (no look-around): the apiserver compiles them with Go.
"""

from __future__ import annotations

_SEGMENT = r"(\.?[^/.][^/]*|\.\.[^/]+)"
"""One path segment other than ``.`` and ``..``: a URI cannot climb out of the prefix it names."""
_BUCKET = r"[a-z0-9][a-z0-9.-]{0,62}"
"""An S3 bucket name: lowercase letters, digits, dots and hyphens, at most 63 characters."""
_S3 = rf"s3://{_BUCKET}(/{_SEGMENT})*/?"
_FILE = rf"file://(/{_SEGMENT})+/?"
_HF_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_HF = rf"hf://({_HF_NAME}/)?{_HF_NAME}(/{_SEGMENT})*(@[A-Za-z0-9._/-]+)?"
"""hf://org/name[/path/in/repo][@revision]: a path names one file of the repository."""

URI_PATTERN = rf"^({_S3}|{_FILE}|{_HF})$"
"""An input URI: s3://bucket/prefix, file:///path or hf://org/name[/file][@revision]."""
OUTPUT_URI_PATTERN = rf"^({_S3}|{_FILE})$"
"""An output URI: s3://bucket/prefix or file:///path (hf:// is read-only)."""
MAX_IMAGE_SIDE = 4096
"""Largest side of a crop or preview size: 4096x4096 is 16 MP, beyond what SD1.5, SDXL or
Flux are trained at; a larger size only exhausts the GPU's memory after the job got a node."""
_SIDE = r"([1-9][0-9]{1,2}|[1-3][0-9]{3}|40[0-8][0-9]|409[0-6])"
"""10 to 4096."""
SIZE_PATTERN = rf"^{_SIDE}x{_SIDE}$"
"""WIDTHxHEIGHT, each side 10 to MAX_IMAGE_SIDE pixels."""

