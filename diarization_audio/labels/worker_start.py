"""Start-up of the speech labelling process; it is imported first by the fork server that
LabelWorker (labels/labeller.py) starts its process from, and by nothing else.

It makes that fork server, and the labelling process forked from it, ignore stop signals sent to
the whole process group (as systemd sends SIGTERM): the service decides when they end, by
shutting its pool down after the jobs in flight, and a fork server ended by a stray SIGTERM would
take its children's exit reports with it, so the service would count a healthy labeller as dead.

However the service ends (a graceful stop, SIGKILL, a crash), they end with it within moments:
the kernel kills the fork server when the thread that started it ends (LabelWorker.start starts
it from the event loop's thread, which lives as long as the service), and each labelling
process when the fork server or the service ends (labeller._start). Without that, a
labelling process whose service was killed would wait for jobs forever, and keep the fork
server alive through the pipe they share.
"""

from __future__ import annotations

import signal

from diarization_audio.processes import signal_on_parent_death

signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal_on_parent_death(signal.SIGKILL)
