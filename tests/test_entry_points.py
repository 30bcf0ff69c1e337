"""The ways in: every root script answers --help, and the one console command runs the same
`main(argv)` as each of them."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest
from support import ROOT

import diarization_audio
from diarization_audio.cli import main as console

# root script -> the console command that runs the same main()
SCRIPTS = {
    "main.py": "serve",
    "batch_download_from_csv.py": "batch",
    "test_single_download.py": "check",
    "analyze_storage.py": "report",
    "metadata_tracker.py": "store",
    "export_dataset.py": "export",
}


def run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("script", [*SCRIPTS, "hourly_monitor.sh"])
def test_every_root_script_prints_its_usage_and_exits_0(script: str) -> None:
    """`python SCRIPT --help` (and `./hourly_monitor.sh --help`) prints its usage and exits 0."""
    argv = [str(ROOT / script)] if script.endswith(".sh") else [sys.executable, script]
    done = run(*argv, "--help")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.lower().startswith("usage:") or "crontab" in done.stdout, done.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_root_script_and_its_command_share_one_main(script: str) -> None:
    """The root script imports exactly the main() its console subcommand runs."""
    module, _, _ = console.COMMANDS[SCRIPTS[script]]
    root = importlib.import_module(script.removesuffix(".py"))
    assert root.main is importlib.import_module(module).main


def test_the_console_command_lists_every_subcommand() -> None:
    """`python -m diarization_audio --help` names every command; each answers its own --help
    under the console command's name; an unknown one is a usage error."""
    done = run(sys.executable, "-m", "diarization_audio", "--help")
    assert done.returncode == 0
    listed = done.stdout.split("commands:", 1)[1]
    for name in ("serve", "batch", "check", "report", "monitor", "store", "export"):
        assert f"\n  {name} " in listed
        sub = run(sys.executable, "-m", "diarization_audio", name, "--help")
        assert sub.returncode == 0, sub.stderr
        assert sub.stdout.startswith(f"usage: diarization-audio {name} ")
    unknown = run(sys.executable, "-m", "diarization_audio", "nope")
    assert unknown.returncode == 2 and "invalid choice: 'nope'" in unknown.stderr


def test_the_source_version_is_pyproject_s() -> None:
    """Run from a source tree, the service says the version pyproject.toml gives the package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["version"] == diarization_audio.SOURCE_VERSION
    assert project["name"] == diarization_audio.DISTRIBUTION


@pytest.mark.slow
def test_an_installed_package_puts_the_console_command_on_path(tmp_path: Path) -> None:
    """The built wheel declares requirements.txt's pins and holds only the package; installed
    in a fresh venv it gives `diarization-audio`, whose --help lists the subcommands and whose
    --version is the package's. Built and installed offline, without the dependencies (the
    console command loads a subcommand only when it runs)."""
    source, wheels = tmp_path / "source", tmp_path / "wheels"
    shutil.copytree(
        ROOT / "diarization_audio",
        source / "diarization_audio",
        ignore=shutil.ignore_patterns("__pycache__"),
    )  # built away from the tree
    for name in ("pyproject.toml", "requirements.txt"):
        shutil.copy(ROOT / name, source / name)
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                "--no-index", "--quiet", "--wheel-dir", str(wheels), str(source))  # fmt: skip
    assert built.returncode == 0, built.stderr
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [
            line.removeprefix("Requires-Dist: ")
            for line in archive.read(meta).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
    pins = [
        line.split("#", 1)[0].strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.split("#", 1)[0].strip()
    ]
    assert [r.replace(" ", "") for r in requires] == [p.replace(" ", "") for p in pins]
    assert {n.split("/", 1)[0] for n in names} == {"diarization_audio", meta.split("/", 1)[0]}
    home = tmp_path / "venv"
    venv.create(home, with_pip=False)
    python = home / "bin" / "python"
    installed = run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--no-index", "--quiet", str(wheel))  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    helped = run(str(home / "bin" / "diarization-audio"), "--help", cwd=tmp_path)
    assert helped.returncode == 0, helped.stderr
    for name in ("serve", "batch", "check", "report", "monitor", "store", "export"):
        assert f"\n  {name} " in helped.stdout
    version = run(str(home / "bin" / "diarization-audio"), "--version", cwd=tmp_path)
    assert version.stdout == f"diarization-audio {diarization_audio.SOURCE_VERSION}\n"


def test_the_console_command_loads_a_subcommand_only_when_it_runs() -> None:
    """Listing the commands imports none of them (only the packages that hold them): no
    server, store, numpy or ffmpeg code."""
    probe = (
        "import contextlib, io, sys\n"
        "from diarization_audio.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main.main(['--help'])\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith(('diarization_audio.',"
        " 'numpy', 'sqlalchemy', 'fastapi', 'httpx')))))\n"
    )
    done = run(sys.executable, "-c", probe)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == {"diarization_audio.cli", "diarization_audio.cli.main"}
