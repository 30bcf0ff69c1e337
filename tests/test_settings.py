"""Settings: .env.example documents every field, and ffmpeg is found on a fresh machine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from diarization_audio.errors import StorageError
from diarization_audio.ingest.ffmpeg import resolve_ffmpeg
from diarization_audio.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_env_example_lists_every_setting_with_its_default() -> None:
    """Each Settings field appears in .env.example under its upper-case name, with its default."""
    text = (ROOT / ".env.example").read_text()
    documented = dict(re.findall(r"^([A-Z_]+)=(.*)$", text, flags=re.MULTILINE))
    fields = Settings.model_fields
    assert set(documented) == {name.upper() for name in fields}
    loaded = Settings(_env_file=ROOT / ".env.example")  # type: ignore[call-arg]
    assert loaded.model_dump() == Settings(_env_file=None).model_dump()  # type: ignore[call-arg]


def test_env_file_and_environment_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .env file sets values and the environment overrides it."""
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9000\nMAX_DOWNLOAD_MB=5\n")
    monkeypatch.setenv("PORT", "9100")
    settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    assert settings.port == 9100
    assert settings.max_download_bytes == 5 * 1024 * 1024


def test_ffmpeg_falls_back_to_the_bundled_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no FFMPEG_BINARY and no ffmpeg on PATH, the imageio-ffmpeg binary is used."""
    import imageio_ffmpeg

    monkeypatch.setenv("PATH", "/nonexistent")
    resolve_ffmpeg.cache_clear()
    try:
        assert resolve_ffmpeg(None) == imageio_ffmpeg.get_ffmpeg_exe()
    finally:
        resolve_ffmpeg.cache_clear()


def test_a_configured_ffmpeg_that_does_not_exist_is_an_error() -> None:
    """FFMPEG_BINARY pointing nowhere fails clearly instead of falling back silently."""
    with pytest.raises(StorageError, match="FFMPEG_BINARY"):
        resolve_ffmpeg("/nonexistent/ffmpeg")
