"""`python -m diarization_audio COMMAND ...`: the same as the installed `diarization-audio`."""

from diarization_audio.cli.main import main

raise SystemExit(main())
