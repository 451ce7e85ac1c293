"""The config editor's request and reply shapes (the admin API's OpenAPI document shows them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import MAX_BODY_BYTES, ErrorBody

VERSION_PATTERN = r"^[0-9]{1,19}$"  # a revision of the config bucket, see config_store


class Problem(BaseModel):
    path: str = Field(description="field path (providers[1].base_url), 'line L, column C' for YAML syntax, "
                                  "'' for the whole document")
    message: str


class ConfigView(BaseModel):
    yaml: str = Field(description="the current revision's text, literal secrets as \"********\"")
    etag: str = Field(description="the current revision (of the config bucket): send it as If-Match to save")
    path: str = Field(description="where the config is kept: <bucket>/<key>")
    masked: dict[str, Any] | None = Field(description="the parsed config, secrets masked (null: the file is invalid)")
    config: dict[str, Any] | None = Field(default=None, description="the same as masked (the earlier name)")
    version: str | None = Field(default=None, description="the current revision (null: none stored yet)")
    exists: bool = True
    problems: list[Problem] = Field(default_factory=list, description="what is wrong with the stored text")


class ConfigText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    yaml: str = Field(max_length=MAX_BODY_BYTES, description="the whole file; \"********\" keeps a current secret")


class ValidateReply(BaseModel):
    ok: bool
    problems: list[Problem]
    diff: str = Field(description="unified diff, current revision → this text, secrets masked on both sides")


class SaveReply(BaseModel):
    etag: str
    changed: bool = Field(description="false: the text was the current revision's own, nothing was written")
    version: str
    announced: bool = Field(default=True, description="llmgw.config.changed was published (informational: "
                                                      "the services follow the config bucket itself)")


class ProblemsResponse(BaseModel):
    """A 400 of PUT /api/config and rollback: the error shape plus every problem found."""

    error: ErrorBody
    problems: list[Problem] = Field(default_factory=list, description="empty when the body itself was refused")


class VersionInfo(BaseModel):
    version: str
    at: datetime | None
    etag: str
    size: int


class HistoryReply(BaseModel):
    versions: list[VersionInfo] = Field(description="kept previous revisions, newest first")
    current: VersionInfo | None = Field(default=None, description="the current revision")


class ReplicaRevision(BaseModel):
    service: str
    instance: str
    revision: int = Field(description="the config revision this process runs (0: none stored, defaults)")


class ReplicasReply(BaseModel):
    latest: int = Field(description="the config bucket's current revision")
    replicas: list[ReplicaRevision]
    all_latest: bool = Field(description="every process that answered runs the latest revision")


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=VERSION_PATTERN, max_length=64)

