"""test_single_download.py end to end: a real service process and the real audio server."""

from __future__ import annotations

import wave
from pathlib import Path

import pytest
from support.cli_helpers import write_csv
from support.server_process import ServerProcess
from support.source_server import SourceServer

from diarization_audio.cli.check import main
from diarization_audio.service.process import free_port
from diarization_audio.settings import Settings

pytestmark = pytest.mark.usefixtures("script_settings")


def test_first_csv_row_passes_every_check(
    tmp_path: Path,
    settings: Settings,
    server_process: ServerProcess,
    source: SourceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The CSV's first row is downloaded and both stored files are verified 16 kHz mono WAVs."""
    csv_path = write_csv(tmp_path / "c.csv", [
        ["first", source.file_url("m4a.m4a"), source.file_url("opus.opus")],
        ["second", source.file_url("mp3.mp3"), ""],
    ])  # fmt: skip
    assert main([str(csv_path), "--server", server_process.base_url]) == 0
    out = capsys.readouterr().out
    assert "service  " in out and ": healthy" in out
    assert out.count(" OK\n") == 2 and out.rstrip().endswith("RESULT: PASS")
    store = Path(settings.audio_storage_dir)
    assert sorted(p.name for p in store.glob("*.wav")) == ["first_agent.wav", "first_customer.wav"]
    with wave.open(str(store / "first_customer.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 1, 2)


def test_options_instead_of_csv(
    server_process: ServerProcess, source: SourceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """--conversation-id and --agent-url download just that conversation."""
    args = ["--server", server_process.base_url, "--conversation-id", "solo",
            "--agent-url", source.file_url("flac.flac")]  # fmt: skip
    assert main(args) == 0
    assert "solo_agent.wav  2.00 s  16000 Hz  1 ch" in capsys.readouterr().out


def test_file_changed_behind_the_services_back_fails(
    tmp_path: Path,
    server_process: ServerProcess,
    source: SourceServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stored file that is not what the service reported makes the check fail (exit 1)."""
    args = ["--server", server_process.base_url, "--conversation-id", "c",
            "--agent-url", source.file_url("wav.wav")]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with wave.open(str(elsewhere / "c_agent.wav"), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44100)
        wav.writeframes(b"\0" * 4 * 100)
    assert main([*args, "--storage-dir", str(elsewhere)]) == 1
    captured = capsys.readouterr()
    assert "is 44100 Hz, 2 channel(s), 16-bit, not 16000 Hz, 1 channel(s), 16-bit" in captured.err
    assert "RESULT: FAIL" in captured.out


def test_undecodable_audio_fails_with_the_services_reason(
    server_process: ServerProcess, source: SourceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source that is a web page, not audio, is exit 1 with the service's not_audio reason."""
    args = ["--server", server_process.base_url, "--conversation-id", "web",
            "--agent-url", source.url("/html")]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: web was not stored: ") and "not decodable audio" in err
    assert len(err.splitlines()) == 1


def test_unreachable_service_and_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    """No service is exit 3 in one line; --conversation-id without --agent-url is a usage error."""
    args = ["--server", f"http://127.0.0.1:{free_port()}", "--conversation-id", "x",
            "--agent-url", "http://127.0.0.1:9/a.mp3"]  # fmt: skip
    assert main(args) == 3
    assert capsys.readouterr().err.startswith("error: cannot reach the service")
    with pytest.raises(SystemExit) as usage:
        main(["--conversation-id", "x"])
    assert usage.value.code == 2
