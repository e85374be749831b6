"""Settings: defaults, .env loading, and every problem reported at once."""

from pathlib import Path

import pytest

import config


def test_defaults_need_no_environment(clean_env):
    settings = config.load_settings(None)
    assert settings.embedded_database
    assert settings.face_engine == "insightface"
    assert settings.min_faces_for_person == 3
    assert settings.hub_posts_per_minute == 20
    assert settings.sessions_path == Path("data") / "sessions"
    assert settings.update_flag_path == Path("data") / "update_flag" / "update_available"


def test_environment_beats_env_file(clean_env, tmp_path):
    (tmp_path / ".env").write_text("NUM_WORKERS=3\nLOG_LEVEL=debug\n")
    clean_env.setenv("NUM_WORKERS", "5")
    settings = config.load_settings(tmp_path / ".env")
    assert settings.num_workers == 5
    assert settings.log_level == "DEBUG"


def test_every_problem_is_listed_at_once(clean_env, tmp_path):
    (tmp_path / ".env").write_text(
        "TG_API_ID=12345678\n"                       # the seed template's placeholder
        "TG_API_HASH=not-a-hash\n"
        "POSTGRES_HOST=db.internal\n"                # without a password
        "HUB_GROUP_ID=-4567\n"                       # a basic group, not a forum supergroup
        "SIMILARITY_THRESHOLD=1.5\n"
        "NUM_WORKERS=many\n"
        "FACE_ENGINE=facenet\n"
    )
    with pytest.raises(config.ConfigError) as caught:
        config.load_settings(tmp_path / ".env")
    problems = caught.value.problems
    named = {p.split(":", 1)[0] for p in problems}
    assert named == {"TG_API_ID", "TG_API_HASH", "POSTGRES_PASSWORD", "HUB_GROUP_ID",
                     "SIMILARITY_THRESHOLD", "NUM_WORKERS", "FACE_ENGINE"}
    assert any("placeholder" in p for p in problems if p.startswith("TG_API_ID"))


def test_secrets_are_never_echoed(clean_env):
    clean_env.setenv("POSTGRES_PASSWORD", "your_secure_password_here")
    clean_env.setenv("TG_API_HASH", "s3cret-but-malformed")
    clean_env.setenv("TG_API_ID", "1111")
    with pytest.raises(config.ConfigError) as caught:
        config.load_settings(None)
    text = str(caught.value)
    assert "s3cret-but-malformed" not in text
    assert "POSTGRES_PASSWORD" in text and "TG_API_HASH" in text
    settings = config.load_settings(None, tg_api_hash="0123456789abcdef0123456789abcdef",
                                    postgres_password="a-real-one")
    assert "a-real-one" not in repr(settings) and "0123456789abcdef" not in repr(settings)


def test_half_of_the_telegram_credentials_is_a_problem(clean_env):
    clean_env.setenv("TG_API_ID", "2040")
    with pytest.raises(config.ConfigError) as caught:
        config.load_settings(None)
    assert any("TG_API_ID and TG_API_HASH" in p for p in caught.value.problems)


def test_seed_threshold_may_not_be_laxer_than_joining(clean_env):
    with pytest.raises(config.ConfigError) as caught:
        config.load_settings(None, similarity_threshold=0.6, seed_similarity_threshold=0.5)
    assert caught.value.problems[0].startswith("SEED_SIMILARITY_THRESHOLD")


def test_empty_values_mean_unset(clean_env):
    clean_env.setenv("POSTGRES_HOST", "")
    clean_env.setenv("HUB_GROUP_ID", "")
    settings = config.load_settings(None)
    assert settings.embedded_database and settings.hub_group_id is None


def test_env_var_names_cover_the_seed_template():
    seed_vars = {"TG_API_ID", "TG_API_HASH", "POSTGRES_PASSWORD", "HUB_GROUP_ID", "SIMILARITY_THRESHOLD",
                 "MIN_QUALITY_THRESHOLD", "MAX_MEDIA_SIZE_MB", "VIDEO_FRAME_RATE", "GITHUB_REPO",
                 "GITHUB_BRANCH", "UPDATE_CHECK_INTERVAL", "LOG_LEVEL"}
    design_vars = {"DATA_DIR", "SESSIONS_DIR", "MODELS_DIR", "FACE_ENGINE", "NUM_WORKERS",
                   "MIN_FACES_FOR_PERSON", "HUB_POSTS_PER_MINUTE", "DASHBOARD_PASSWORD"}
    assert seed_vars | design_vars <= set(config.env_var_names())
