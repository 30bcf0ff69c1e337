"""The service: `python main.py` serves it (HOST, PORT from the settings); `uvicorn main:app`
imports `app` from here. The code is in diarization_audio/service/app.py and
diarization_audio/cli/serve.py."""

from diarization_audio.cli.serve import main


def __getattr__(name: str) -> object:
    """`app` is built when uvicorn asks for it, not when this module is imported."""
    if name == "app":
        from diarization_audio.service import app as service

        return service.app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    raise SystemExit(main())
