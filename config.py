"""Settings: read once from the environment (and `.env`) into one typed object.

Only entry points (`main.py`, `dashboard.py`, the helper scripts) call `load_settings()`; every
other module receives the `Settings` it needs. Nothing else in the project reads `os.environ`.

Validation reports every problem at once, each naming the variable and what to do about it,
so an operator fixes a broken `.env` in one pass instead of one restart per mistake.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Values that appear in the seed's `.env.template` or in our own template. A setting that still
# holds one of them was never filled in, and running with it would fail later and less clearly.
PLACEHOLDERS = frozenset({
    "12345678",
    "abcdef1234567890abcdef1234567890",
    "your_secure_password_here",
    "-1001234567890",
    "yourusername/face-archiver",
    "change-me",
    "changeme",
})

_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


class ConfigError(Exception):
    """The configuration has problems; `problems` lists every one of them."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


class Settings(BaseSettings):
    """Every setting of the daemon, the dashboard and the helper scripts.

    Field names are the environment variable names in lower case (`TG_API_ID` -> `tg_api_id`).
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,  # `POSTGRES_HOST=` in a .env or compose file means "not set"
        extra="ignore",
        validate_default=True,
    )

    # --- Telegram ---------------------------------------------------------------------------
    tg_api_id: int | None = Field(None, gt=0, description="API id from https://my.telegram.org/apps")
    tg_api_hash: SecretStr | None = Field(None, description="API hash from https://my.telegram.org/apps")
    hub_group_id: int | None = Field(None, description="Marked id of the forum supergroup (-100…)")
    hub_account: str | None = Field(
        None, description="Phone number or account id that posts into the hub (default: the first active account)")
    repost_protected_chats: bool = Field(
        False, description="Also re-post media from chats that forbid forwarding (noforwards)")
    hub_posts_per_minute: int = Field(20, ge=1, le=60, description="Upper bound of posts a minute into the hub")
    flood_sleep_threshold: int = Field(
        60, ge=0, le=3600, description="Flood waits up to this many seconds are slept through by Telethon")
    sweep_interval_seconds: int = Field(
        300, ge=10, le=86400, description="Seconds between history sweeps of a realtime chat")

    # --- Database ---------------------------------------------------------------------------
    postgres_host: str | None = Field(
        None, description="PostgreSQL host; unset: an embedded server under DATA_DIR/postgres")
    postgres_port: int = Field(5432, ge=1, le=65535)
    postgres_db: str = "face_archiver"
    postgres_user: str = "postgres"
    # (before postgres_password: its check reads this one)
    dashboard_db_password: SecretStr | None = Field(
        None, description="Password of the dashboard's own PostgreSQL role (face_archiver_dashboard); "
                          "required with POSTGRES_HOST, not with the embedded server. The app sets it on "
                          "the role; the dashboard logs in with it (and needs no POSTGRES_PASSWORD)")
    postgres_password: SecretStr | None = None

    # --- Faces and persons ------------------------------------------------------------------
    face_engine: Literal["insightface", "dlib"] = "insightface"
    similarity_threshold: float | None = Field(
        None, gt=0.0, lt=1.0, description="Cosine similarity to join a person (default: the engine's)")
    seed_similarity_threshold: float | None = Field(
        None, gt=0.0, lt=1.0, description="Stricter similarity among faces that found a new person")
    min_quality_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Faces below this are discarded")
    min_faces_for_person: int = Field(3, ge=2, le=50, description="Pending faces needed to create a person")
    person_suggestions_minutes: int = Field(
        60, ge=0, le=10080, description="Minutes between the passes that offer merges and splits of persons (0: never)")

    # --- Media and work ---------------------------------------------------------------------
    max_media_size_mb: int = Field(200, ge=1, le=4000, description="Larger media are skipped and recorded")
    video_frame_rate: float = Field(1.0, gt=0.0, le=30.0, description="Frames analysed per second of video")
    video_max_seconds: int = Field(600, ge=1, le=86400, description="Seconds of each video analysed at most")
    num_workers: int = Field(2, ge=1, le=64, description="Concurrent analysis jobs in this process")

    # --- Retention and health ---------------------------------------------------------------
    metrics_retention_days: int = Field(30, ge=1, le=3650, description="Processing metrics older than this are deleted")
    errors_retention_days: int = Field(
        90, ge=1, le=3650, description="Resolved errors older than this are deleted (those of failed work stay)")
    pending_face_days: int = Field(
        180, ge=0, le=36500, description="Pending faces that met nobody in this many days are deleted (0: never)")
    health_outage_seconds: int = Field(
        600, ge=10, le=86400, description="`main.py health` fails when Telegram or the database was unreachable this long")
    health_queue_seconds: int = Field(
        3600, ge=10, le=604800, description="... or the queue held due work but finished none this long")
    health_posts_seconds: int = Field(
        3600, ge=10, le=604800, description="... or posts have been failing (none succeeding) this long")

    # --- Notifications (notifications.py) ---------------------------------------------------
    notify_webhook_url: SecretStr | None = Field(
        None, description="POST a JSON notification here when the operator must act (it may hold a token)")
    notify_hub_digest: bool = Field(False, description="Also post the notifications into the hub's General topic")
    notify_review_above: int = Field(50, ge=0, le=1000000, description="Notify when more faces than this wait for review")
    notify_errors_per_hour: int = Field(20, ge=0, le=1000000, description="Notify when more errors than this in an hour")
    notify_interval_seconds: int = Field(
        3600, ge=60, le=604800, description="A lasting problem is notified again at most this often")

    # --- Files ------------------------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="Embedded database, staging area and update flag")
    sessions_dir: Path | None = Field(None, description="Telegram session files (default DATA_DIR/sessions)")
    models_dir: Path | None = Field(None, description="Face model weights (default DATA_DIR/models)")
    staging_dir: Path | None = Field(
        None, description="Downloaded media awaiting analysis; shared by all workers (default DATA_DIR/staging)")
    update_flag_file: Path | None = Field(
        None, description="The daemon exits at a safe point when this file appears "
                          "(default DATA_DIR/update_flag/update_available)")

    # --- Dashboard --------------------------------------------------------------------------
    dashboard_password: SecretStr | None = None
    dashboard_auth: bool = Field(
        True, description="false turns the password off; only for a dashboard bound to localhost")

    # --- Updater (read by update_checker.sh; validated here so `check` catches mistakes) -----
    github_repo: str | None = None
    github_branch: str = "main"
    github_token: SecretStr | None = None
    update_check_interval: int = Field(1800, ge=60, le=604800)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    # --- field checks -----------------------------------------------------------------------
    @field_validator("*", mode="before")
    @classmethod
    def _reject_placeholders(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in PLACEHOLDERS:
            raise ValueError(f"still holds the template's placeholder {value!r}; put your own value here")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("tg_api_hash")
    @classmethod
    def _api_hash(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _HEX32.match(value.get_secret_value()):
            raise ValueError("must be the 32 hexadecimal characters shown at https://my.telegram.org/apps")
        return value

    @field_validator("hub_group_id")
    @classmethod
    def _hub_id(cls, value: int | None) -> int | None:
        if value is not None and value > -1000000000000:
            raise ValueError("must be a supergroup's marked id, which starts with -100 (e.g. -1001987654321)")
        return value

    @field_validator("github_repo")
    @classmethod
    def _repo(cls, value: str | None) -> str | None:
        if value is not None and not _REPO.match(value):
            raise ValueError("must look like owner/repository")
        return value

    # Cross-field checks are field validators reading earlier fields (`info.data`), not a model
    # validator, so they are reported together with every other problem instead of after them.
    @field_validator("tg_api_hash")
    @classmethod
    def _both_telegram_ids(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if "tg_api_id" in info.data and (info.data["tg_api_id"] is None) != (value is None):
            raise ValueError("set TG_API_ID and TG_API_HASH together (both come from https://my.telegram.org/apps)")
        return value

    @field_validator("postgres_password")
    @classmethod
    def _password_with_host(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # An external server needs the owner's password, except in the dashboard's container: it
        # does not migrate, and logs in with its role's password only.
        if info.data.get("postgres_host") and value is None and info.data.get("dashboard_db_password") is None:
            raise ValueError("required when POSTGRES_HOST is set (generate one: openssl rand -base64 32)")
        return value

    @field_validator("seed_similarity_threshold")
    @classmethod
    def _seed_stricter(cls, value: float | None, info: ValidationInfo) -> float | None:
        join = info.data.get("similarity_threshold")
        if value is not None and join is not None and value < join:
            raise ValueError("must be at least SIMILARITY_THRESHOLD (creating a person is the stricter decision)")
        return value

    # --- derived values ---------------------------------------------------------------------
    @property
    def embedded_database(self) -> bool:
        """True when no POSTGRES_HOST is set and the app runs its own PostgreSQL."""
        return not self.postgres_host

    @property
    def sessions_path(self) -> Path:
        return self.sessions_dir or self.data_dir / "sessions"

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def staging_path(self) -> Path:
        return self.staging_dir or self.data_dir / "staging"

    @property
    def update_flag_path(self) -> Path:
        return self.update_flag_file or self.data_dir / "update_flag" / "update_available"

    @property
    def max_media_bytes(self) -> int:
        return self.max_media_size_mb * 1024 * 1024

    @property
    def telegram_configured(self) -> bool:
        return self.tg_api_id is not None and self.tg_api_hash is not None


def env_var_names() -> list[str]:
    """The environment variables that `Settings` reads, in upper case."""
    return [name.upper() for name in Settings.model_fields]


def _describe(error: dict) -> str:
    location = error.get("loc") or ("settings",)
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    name = str(location[0]).upper()
    if error.get("type") == "missing":
        return f"{name}: required but not set"
    given = error.get("input")
    shown = "" if name in _SECRET_NAMES or isinstance(given, dict) else f" (got {given!r})"
    return f"{name}: {message}{shown}"


_SECRET_NAMES = frozenset({"TG_API_HASH", "POSTGRES_PASSWORD", "DASHBOARD_PASSWORD", "DASHBOARD_DB_PASSWORD",
                           "GITHUB_TOKEN", "NOTIFY_WEBHOOK_URL"})


def load_settings(env_file: str | Path | None = ".env", **overrides: object) -> Settings:
    """Read the settings from the environment and `env_file`; raise `ConfigError` listing every problem.

    Environment variables win over the file. `overrides` (by field name) win over both; the
    command line and the tests use them.
    """
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems: list[str] = []
        for error in exc.errors(include_url=False):
            problems.append(_describe(error))
        raise ConfigError(problems) from None

