"""The base every API model shares: camelCase in the resource, strict, documented."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """A part of the LoraTrainingJob API.

    Attribute docstrings become the JSON-schema descriptions, which become the
    CRD's ``kubectl explain`` text. Unknown fields are refused so a typo is an
    error, not a silently ignored setting.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    def to_resource(self, exclude: set[str] | None = None) -> dict:
        """The object as it is written into a resource: camelCase, no unset optionals (nor the
        fields named in `exclude`, by their Python names)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=exclude)
