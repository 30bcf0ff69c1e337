"""The demo `make demo` runs (diarization_audio/cli/demo.py): the whole workflow offline, on
temporary storage."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from support import ROOT


def test_demo_runs_every_step_and_cleans_up(tmp_path: Path) -> None:
    """The demo passes every step well within a minute and leaves no temporary files."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["TMPDIR"] = str(tmp_path)  # where its temporary folder goes, to check it is removed
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "diarization_audio.cli.demo"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert time.monotonic() - started < 60
    for expected in ("RESULT: PASS",
                     "succeeded 12, partial 0, failed 0, skipped 1 (already stored)",
                     "succeeded 0, partial 0, failed 0, skipped 13 (already stored)",
                     "stereo-call-1_agent.wav: success, 30.0 s",
                     "stereo-call-1_customer.wav: success, 30.0 s",
                     '"total_conversations": 14', "exported 14 conversations to",
                     '"labelled_files": 26', "Speech (26 files labelled, 0 waiting)",
                     "Progress toward 0.25 h of speech",
                     "SNR        median", "Flagged conversations: 1",
                     "stereo-call-1: music: agent: ",
                     "exported 11 conversations to",
                     "left out 3 (music 1, without two legs 2)",
                     "--erase conv_20251016_002 --reason 'consent withdrawn'",
                     "erased 1 conversations (2 files)",
                     "erased 1 (refused by the service; --allow-erased stores them again)",
                     "exported 10 conversations to",
                     "1 removed (1 erased); left out 3",
                     "/training_set/shards in 3 shards (",
                     "shards 3 written, 0 renumbered, 0 unchanged, 0 deleted; 0 removed;",
                     "shards/train/shard-000001.tar: 3 conversations",
                     "shards 1 written, 0 renumbered, 2 unchanged, 0 deleted; 1 removed (1 erased)",
                     "Demo finished in"):  # fmt: skip
        assert expected in run.stdout
    # 14 conversations of about 0.1975 h: the exact length of each sample depends on the
    # padding of the ffmpeg build that encoded it
    assert re.search(r"0\.197\d/0\.25 h \(79\.0\d%\), 14 conversations", run.stdout)
    # the last export takes the erased conversation out of the loose files and of its shard
    assert run.stdout.count("1 removed (1 erased); left out 3") == 2
    assert list(tmp_path.iterdir()) == []
