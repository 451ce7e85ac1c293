"""Settings from the environment. Each service subclasses ``CommonSettings``."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", populate_by_name=True)

    nats_url: str = Field(default="nats://127.0.0.1:4222", alias="NATS_URL")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", alias="REDIS_URL")
    # empty: ClickHouse runs in-process (chDB) with its data under the state dir
    clickhouse_url: str = Field(default="", alias="CLICKHOUSE_URL")
    config_path: Path = Field(default=Path("llmgw.yaml"), alias="LLMGW_CONFIG")
    state_dir: Path = Field(default=Path(".state"), alias="LLMGW_STATE_DIR")
    log_level: str = Field(default="INFO", alias="LLMGW_LOG_LEVEL")
