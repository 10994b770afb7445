"""Tags: a label convention over LoraTrainingJobs, and the label selector ``list`` sends.

A tag is a label whose key is ``tag.lora-operator.io/<tag>`` (the value is free, usually empty):
``kubectl label ltj corgi tag.lora-operator.io/portrait=``. A label rather than an annotation so
the API server filters by it (``list --tag portrait`` is ``-l tag.lora-operator.io/portrait``),
and one label per tag so a job carries several without a list syntax in one value.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .errors import CliError

TAG_PREFIX = "tag.lora-operator.io/"
TAG_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
"""The name part of a label key (Kubernetes' rule): the tag itself."""


def tag_label(tag: str) -> str:
    """The label key of ``tag``.

    Raises:
        CliError: ``tag`` is not a valid label name (63 characters at most, alphanumerics, ``-_.``).
    """
    if not TAG_NAME.match(tag):
        raise CliError(f"--tag {tag!r}: a tag is a label name: up to 63 letters, digits, '-', '_' or '.', "
                       "starting and ending with a letter or digit")
    return TAG_PREFIX + tag


def selector(labels: str | None, tags: Sequence[str]) -> str | None:
    """``-l`` and every ``--tag`` joined into one label selector (all must match); None for none."""
    parts = [labels.strip()] if labels and labels.strip() else []
    parts += [tag_label(t) for t in tags]
    return ",".join(parts) or None
