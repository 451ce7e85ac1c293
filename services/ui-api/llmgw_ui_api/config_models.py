"""The config editor's request and reply shapes (the admin API's OpenAPI document shows them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import MAX_BODY_BYTES, ErrorBody

VERSION_PATTERN = r"^\d{8}T\d{6}\.\d{6}Z-[0-9a-f]{8}$"  # <UTC time>-<etag8>, see config_store


class Problem(BaseModel):
    path: str = Field(description="field path (providers[1].base_url), 'line L, column C' for YAML syntax, "
                                  "'' for the whole document")
    message: str


class ConfigView(BaseModel):
    yaml: str = Field(description="the file as on disk, literal secrets as \"********\"")
    etag: str = Field(description="SHA-256 (hex) of the file's bytes: send it as If-Match to save")
    path: str
    masked: dict[str, Any] | None = Field(description="the parsed config, secrets masked (null: the file is invalid)")
    config: dict[str, Any] | None = Field(default=None, description="the same as masked (the earlier name)")
    version: str | None = Field(default=None, description="the file's version (null: no file yet)")
    exists: bool = True
    problems: list[Problem] = Field(default_factory=list, description="what is wrong with the file on disk")


class ConfigText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    yaml: str = Field(max_length=MAX_BODY_BYTES, description="the whole file; \"********\" keeps a current secret")


class ValidateReply(BaseModel):
    ok: bool
    problems: list[Problem]
    diff: str = Field(description="unified diff, running file → this text, secrets masked on both sides")


class SaveReply(BaseModel):
    etag: str
    changed: bool = Field(description="false: the text was the file's own, nothing was written")
    version: str
    announced: bool = Field(default=True, description="llmgw.config.changed was published (false: NATS is "
                                                      "away; services pick the file up at their next reload)")


class ProblemsResponse(BaseModel):
    """A 400 of PUT /api/config and rollback: the error shape plus every problem found."""

    error: ErrorBody
    problems: list[Problem] = Field(default_factory=list, description="empty when the body itself was refused")


class VersionInfo(BaseModel):
    version: str
    at: datetime
    etag: str
    size: int


class HistoryReply(BaseModel):
    versions: list[VersionInfo] = Field(description="kept previous versions, newest first")
    current: VersionInfo | None = Field(default=None, description="the file as it is now")


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(pattern=VERSION_PATTERN, max_length=64)

