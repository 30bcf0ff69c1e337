"""`metadata_tracker.py --label --relabel`: conversations labelled by another detector (or
another version of it) than the default are labelled again, with the speech totals, flags and
the dataset export following; plain `--label` leaves them as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli_helpers import use_settings
from support.speech_calls import leg_files, make_call
from support.stores import make_settings, stored_wav

from diarization_audio.cli import export as export_dataset
from diarization_audio.cli import store as metadata_tracker
from diarization_audio.labels.activity import analyse_call, label_legs
from diarization_audio.labels.labeller import label_conversation, thresholds_of
from diarization_audio.labels.params import DEFAULT_PARAMS, VadParams, provenance
from diarization_audio.settings import Settings
from diarization_audio.store.speech_labels import encode_segments, speech_micros_of
from diarization_audio.store.tracker import MetadataTracker

# Whatever the default becomes, the labels made "before" come from another detector.
OLD_PARAMS = VadParams(method="energy" if DEFAULT_PARAMS.method != "energy" else "webrtc")
CALLS = {"first": 3, "second": 4, "current": 5}  # conversation id -> seed of its spoken call


def detectors(settings: Settings) -> dict[str, tuple[object, object]]:
    """Conversation id -> (detector, version) of its stored labels."""
    tracker = MetadataTracker.from_settings(settings)
    try:
        found = {}
        for conversation in tracker.stored_conversations():
            made = json.loads(conversation.labeller or "{}")
            found[conversation.conversation_id] = (made["detector"], made["version"])
        return found
    finally:
        tracker.close()


@pytest.fixture
def labelled_by_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Three two-leg calls spoken by espeak-ng, converted by the service's ffmpeg and stored:
    "first" and "second" labelled with OLD_PARAMS, "current" with the default."""
    settings = make_settings(tmp_path / "collection")
    store = Path(settings.audio_storage_dir)
    tracker = MetadataTracker.from_settings(settings)
    for cid, seed in CALLS.items():
        legs = leg_files(make_call(seed, seconds=12.0), "clean", tmp_path / cid)
        for label, made in legs.items():
            store.mkdir(parents=True, exist_ok=True)
            kept = made.rename(store / f"{cid}_{label}.wav")
            tracker.record_file(cid, label, stored_wav(kept))
        params = DEFAULT_PARAMS if cid == "current" else OLD_PARAMS
        assert label_conversation(tracker, cid, thresholds_of(settings), params) is not None
    tracker.close()
    use_settings(monkeypatch, settings)
    return settings


def test_relabel_labels_again_what_another_detector_labelled_and_the_rest_follows(
    labelled_by_old: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Plain --label keeps the old labels; --label --relabel labels the two old conversations
    again with the default detector (exactly as it labels on its own), the speech totals are
    the sum of the new segments, the export rewrites those two, and a second run finds none."""
    settings = labelled_by_old
    old, new = provenance(OLD_PARAMS), provenance(DEFAULT_PARAMS)
    assert (old["detector"], old["version"]) != (new["detector"], new["version"])
    out = tmp_path / "set"
    assert export_dataset.main([str(out), "--no-progress"]) == 0
    assert "3 written, 0 unchanged" in capsys.readouterr().out

    assert metadata_tracker.main(["--label"]) == 0
    assert capsys.readouterr().out == "labelled 0 conversations\n"
    old_made, new_made = (old["detector"], old["version"]), (new["detector"], new["version"])
    assert detectors(settings) == {"first": old_made, "second": old_made, "current": new_made}

    assert metadata_tracker.main(["--label", "--relabel"]) == 0
    assert capsys.readouterr().out == (
        "labelled 0 conversations\nrelabelled 2 conversations labelled by another detector "
        f"than {new['detector']} version {new['version']}\n"
    )
    assert detectors(settings) == dict.fromkeys(CALLS, new_made)
    tracker = MetadataTracker.from_settings(settings)
    try:
        conversations = list(tracker.stored_conversations())
        totals = tracker.speech_summary()["speaker_micros"]
    finally:
        tracker.close()
    for conversation in conversations:
        assert conversation.labeller == json.dumps(new, sort_keys=True, separators=(",", ":"))
        analyses = analyse_call(
            {leg.speaker_label: Path(leg.filepath) for leg in conversation.legs}
        )
        fresh = label_legs(analyses, DEFAULT_PARAMS)
        for leg in conversation.legs:  # what the default detector makes of the files today
            assert encode_segments(leg.segments) == encode_segments(fresh[leg.speaker_label])
    assert totals == {
        label: sum(
            speech_micros_of(leg.segments)
            for conversation in conversations
            for leg in conversation.legs
            if leg.speaker_label == label
        )
        for label in ("agent", "customer")
    }

    assert export_dataset.main([str(out), "--no-progress"]) == 0
    assert "2 written, 1 unchanged" in capsys.readouterr().out
    assert metadata_tracker.main(["--label", "--relabel"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("relabelled 0 conversations")


def test_relabel_without_label_is_refused(
    labelled_by_old: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """--relabel alone is a usage error (exit 2) that changes nothing."""
    with pytest.raises(SystemExit) as stopped:
        metadata_tracker.main(["--relabel"])
    assert stopped.value.code == 2
    assert "--relabel goes with --label" in capsys.readouterr().err
    assert set(detectors(labelled_by_old).values()) == {
        (provenance(OLD_PARAMS)["detector"], provenance(OLD_PARAMS)["version"]),
        (provenance()["detector"], provenance()["version"]),
    }
