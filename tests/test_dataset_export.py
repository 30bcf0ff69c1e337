"""export_dataset.py: the training set, loaded by each toolkit's own reader where it installs
without torch (pyannote.database and pyannote.core, Hugging Face datasets), checked field by
field against the documented formats otherwise (NeMo manifests, lhotse manifests)."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support.cli_helpers import use_settings
from support.labelled_calls import Call, add_call, voice, write_leg
from support.stores import make_settings

from diarization_audio.cli.export import main
from diarization_audio.dataset.export import split_of
from diarization_audio.objects import Folder
from diarization_audio.settings import Settings
from diarization_audio.store.tracker import MetadataTracker

RATE = 16000
# (conversation id, agent id, seconds, agent turns, customer turns); "flat" has a silent customer,
# "noisy" a customer who speaks barely above the noise of the line.
CALLS: list[Call] = [
    ("call-a", "agent-1", 12.0, [(0.5, 4.0), (7.0, 9.0)], [(3.5, 6.5), (9.5, 11.5)]),
    ("call-b", "agent-1", 9.0, [(0.2, 3.0)], [(3.4, 8.5)]),
    ("call-c", None, 10.0, [(1.0, 5.0)], [(5.5, 9.5)]),
    ("call-d", "agent-2", 8.0, [(0.5, 7.5)], [(2.0, 3.6)]),
    ("flat", None, 8.0, [(0.5, 7.5)], []),
    ("noisy", None, 8.0, [(0.5, 3.5)], [(4.0, 7.5)]),
]


@pytest.fixture
def collection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A store with four clean two-leg calls, a flagged one and a one-leg one, all labelled."""
    settings = make_settings(tmp_path / "collection")
    store = Path(settings.audio_storage_dir)
    store.mkdir(parents=True)
    tracker = MetadataTracker.from_settings(settings)
    for call in CALLS:
        add_call(tracker, settings, call)
    tracker.record_file(
        "lonely", "agent", write_leg(store / "lonely_agent.wav", voice(4, [(0, 3)], 150, 0.5))
    )
    tracker.close()
    use_settings(monkeypatch, settings)
    yield settings


def export(out: Path, *extra: str) -> None:
    assert main([str(out), "--no-progress", *extra]) == 0


def read_rttm(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_rttm_uem_and_mixed_audio_follow_the_formats(collection: Settings, tmp_path: Path) -> None:
    """RTTM: 10 fields, 3 decimals, uri = audio stem; UEM covers the call; the mix is the sum."""
    out = tmp_path / "set"
    export(out)
    uris = sorted(p.stem for p in (out / "audio").glob("*.wav"))
    assert uris == ["call-a", "call-b", "call-c", "call-d"]  # flagged and one-leg left out
    for uri in uris:
        rows = read_rttm(out / "rttm" / f"{uri}.rttm")
        assert rows and all(len(r) == 10 and r[0] == "SPEAKER" and r[1] == uri for r in rows)
        assert all(
            r[2] == "1" and r[5:7] == ["<NA>", "<NA>"] and r[8:] == ["<NA>", "<NA>"] for r in rows
        )
        assert all(
            float(r[3]) >= 0 and float(r[4]) > 0 and len(r[3].split(".")[1]) == 3 for r in rows
        )
        assert {r[7] for r in rows} == {"agent", "customer"}
    with wave.open(str(out / "audio" / "call-a.wav")) as wav:
        mixed = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.int32)
        assert (wav.getframerate(), wav.getnchannels()) == (RATE, 1)
    legs = []
    for label in ("agent", "customer"):
        with wave.open(str(Path(collection.audio_storage_dir) / f"call-a_{label}.wav")) as wav:
            legs.append(np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.int32))
    assert len(mixed) == max(map(len, legs))  # the longer leg sets the length
    total = np.zeros(len(mixed), np.int32)
    for leg in legs:
        total[: len(leg)] += leg
    if np.abs(total).max() <= 32767:
        assert np.array_equal(mixed, total)
    else:  # scaled down as a whole, never clipped
        scale = 32767 / np.abs(total).max()
        assert np.abs(mixed - np.round(total * scale)).max() <= 1
    assert (out / "uem" / "call-a.uem").read_text() == f"call-a 1 0.000 {len(mixed) / RATE:.3f}\n"


def test_pyannote_loads_the_protocol_even_after_the_folder_moves(
    collection: Settings, tmp_path: Path
) -> None:
    """pyannote.database reads database.yml (paths relative to it), iterates every subset and
    gets back the exported annotation and annotated region of each file."""
    from pyannote.database import FileFinder, registry
    from pyannote.database.util import load_rttm, load_uem

    export(tmp_path / "set")
    moved = tmp_path / "elsewhere" / "set"
    moved.parent.mkdir()
    shutil.move(tmp_path / "set", moved)
    registry.load_database(str(moved / "database.yml"))
    protocol = registry.get_protocol(
        "CallCenter.SpeakerDiarization.Calls",
        preprocessors={"audio": FileFinder(registry=registry)},
    )
    seen = []
    for subset in ("train", "development", "test"):
        for file in getattr(protocol, subset)():
            uri = file["uri"]
            seen.append(uri)
            assert Path(file["audio"]) == moved / "audio" / f"{uri}.wav"
            expected = load_rttm(moved / "rttm" / f"{uri}.rttm")[uri]
            assert file["annotation"] == expected
            assert set(file["annotation"].labels()) == {"agent", "customer"}
            assert file["annotated"] == load_uem(moved / "uem" / f"{uri}.uem")[uri]
    assert sorted(seen) == ["call-a", "call-b", "call-c", "call-d"]


def test_hugging_face_audiofolder_loads_with_the_diarization_columns(
    collection: Settings, tmp_path: Path
) -> None:
    """datasets' audiofolder builder reads every split with timestamps and speakers."""
    import datasets
    import soundfile

    out = tmp_path / "set"
    export(out)
    loaded = datasets.load_dataset("audiofolder", data_dir=str(out / "huggingface"))
    loaded = loaded.cast_column("audio", datasets.Audio(decode=False))
    rows = [row for split in loaded.values() for row in split]
    assert len(rows) == 4
    for row in rows:
        assert (
            len(row["timestamps_start"]) == len(row["timestamps_end"]) == len(row["speakers"]) > 0
        )
        assert all(
            a < b for a, b in zip(row["timestamps_start"], row["timestamps_end"], strict=True)
        )
        data, rate = soundfile.read(row["audio"]["path"])
        assert rate == RATE and data.ndim == 1
        uri = Path(row["audio"]["path"]).stem
        rttm = read_rttm(out / "rttm" / f"{uri}.rttm")
        assert row["speakers"] == [r[7] for r in rttm]
        assert row["timestamps_start"] == [float(r[3]) for r in rttm]


def test_nemo_and_lhotse_manifests_match_their_documented_fields(
    collection: Settings, tmp_path: Path
) -> None:
    """NeMo: one JSON line per call with its fields and existing paths; lhotse: recordings on
    channel 0 with a file source, one supervision per RTTM line."""
    out = tmp_path / "set"
    export(out)
    entries = [json.loads(line) for name in ("train", "dev", "test")
               for line in (out / "nemo" / f"{name}.json").read_text().splitlines()]  # fmt: skip
    assert len(entries) == 4
    for entry in entries:
        assert set(entry) == {"audio_filepath", "offset", "duration", "label", "text",
                              "num_speakers", "rttm_filepath", "uem_filepath", "flags",
                              "snr_db_agent", "snr_db_customer", "music_share_agent",
                              "music_share_customer"}  # fmt: skip
        assert (entry["offset"], entry["label"], entry["text"], entry["num_speakers"]) == (
            0,
            "infer",
            "-",
            2,
        )
        audio = Path(entry["audio_filepath"])
        assert audio.is_file() and Path(entry["rttm_filepath"]).stem == audio.stem
        with wave.open(str(audio)) as wav:
            assert entry["duration"] == round(wav.getnframes() / RATE, 3)
    recordings, supervisions = [], []
    for split in ("train", "development", "test"):
        folder = out / "lhotse" / split
        recordings += [
            json.loads(x)
            for x in gzip.decompress((folder / "recordings.jsonl.gz").read_bytes()).splitlines()
        ]
        supervisions += [
            json.loads(x)
            for x in gzip.decompress((folder / "supervisions.jsonl.gz").read_bytes()).splitlines()
        ]
    assert sorted(r["id"] for r in recordings) == ["call-a", "call-b", "call-c", "call-d"]
    for rec in recordings:
        assert rec["sources"] == [
            {
                "type": "file",
                "channels": [0],
                "source": str((out / "audio" / f"{rec['id']}.wav").resolve()),
            }
        ]
        assert rec["sampling_rate"] == RATE and rec["channel_ids"] == [0]
        assert rec["duration"] == pytest.approx(rec["num_samples"] / RATE)
        mine = [s for s in supervisions if s["recording_id"] == rec["id"]]
        assert len(mine) == len(read_rttm(out / "rttm" / f"{rec['id']}.rttm"))
        assert all(
            s["channel"] == 0 and s["duration"] > 0 and s["speaker"] in ("agent", "customer")
            for s in mine
        )


def test_splits_are_deterministic_and_keep_an_agent_together(
    collection: Settings, tmp_path: Path
) -> None:
    """Each call is in exactly one split, decided by its agent id (else its own id)."""
    out = tmp_path / "set"
    export(out, "--split", "50/25/25")
    lists = {
        s: (out / "lists" / f"{s}.txt").read_text().split()
        for s in ("train", "development", "test")
    }
    where = {uri: split for split, uris in lists.items() for uri in uris}
    assert sorted(where) == ["call-a", "call-b", "call-c", "call-d"]
    assert where["call-a"] == where["call-b"] == split_of("agent-1", (50, 25, 25))
    assert where["call-c"] == split_of("call-c", (50, 25, 25))


def test_a_rerun_rewrites_nothing_and_adds_only_what_is_new(
    collection: Settings, tmp_path: Path
) -> None:
    """Nothing changes on a second run; a new call adds its files; flagged ones come on request."""
    out = tmp_path / "set"
    export(out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    export(out)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    tracker = MetadataTracker.from_settings(collection)
    add_call(tracker, collection, ("call-e", None, 6.0, [(0.5, 2.5)], [(3.0, 5.5)]))
    tracker.close()
    export(out)
    changed = {p for p in out.rglob("*") if p.is_file() and before.get(p) != p.stat().st_mtime_ns}
    assert {p.relative_to(out).as_posix() for p in changed if "call-" in p.name} <= {
        "audio/call-e.wav", "rttm/call-e.rttm", "uem/call-e.uem",
        *(f"huggingface/{s}/call-e.wav" for s in ("train", "validation", "test")),
    }  # fmt: skip
    assert (out / "audio" / "call-a.wav").stat().st_mtime_ns == before[out / "audio" / "call-a.wav"]
    export(out, "--include-flagged")
    assert (out / "rttm" / "flat.rttm").exists()
    export(out)
    assert not (out / "rttm" / "flat.rttm").exists() and not (out / "audio" / "flat.wav").exists()


def test_exported_files_get_the_usual_permissions(collection: Settings, tmp_path: Path) -> None:
    """Files are readable as the umask allows, like any file the user writes, not private."""
    import os

    old = os.umask(0o022)
    try:
        export(tmp_path / "set")
    finally:
        os.umask(old)
    for name in ("audio/call-a.wav", "rttm/call-a.rttm", "database.yml", "nemo/train.json"):
        assert (tmp_path / "set" / name).stat().st_mode & 0o777 == 0o644, name


def test_a_second_export_into_a_busy_folder_stops_with_one_line(
    collection: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While an export holds the folder, another exits 1 with one error line and writes nothing."""
    from filelock import FileLock

    out = tmp_path / "set"
    out.mkdir()
    with FileLock(out / ".export.lock"):
        assert main([str(out), "--no-progress"]) == 1
    assert (
        capsys.readouterr().err
        == f"error: another export is writing to {out}; try again when it ends\n"
    )
    assert sorted(p.name for p in out.iterdir()) == [".export.lock"]


def test_every_conversation_left_out_is_counted_by_reason_and_waiting_ones_are_labelled_first(
    collection: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A duplicate, a silent leg, a lone leg and a leg whose file is gone are each left out and
    counted under every reason it has in the printed summary; a call stored but not labelled
    yet is labelled by the export and exported."""
    store = Path(collection.audio_storage_dir)
    tracker = MetadataTracker.from_settings(collection)
    add_call(tracker, collection, ("copy-a", *CALLS[0][1:]))  # call-a's audio again: a duplicate
    for cid in ("waiting", "gone"):
        for label, turn, pitch in (("agent", (0.5, 2.5), 150), ("customer", (3.0, 5.5), 230)):
            leg = write_leg(store / f"{cid}_{label}.wav", voice(6, [turn], pitch, 0.5))
            tracker.record_file(cid, label, leg)
    (store / "gone_customer.wav").unlink()
    assert sorted(tracker.unlabelled()) == ["gone", "lonely", "waiting"]
    tracker.close()

    out = tmp_path / "set"
    assert main([str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"exported 5 conversations to {out} (")
    assert printed.endswith(
        "5 written, 0 unchanged, 0 removed; left out 5 (duplicate 2, labels missing 1, "
        "low_snr 1, no_speech 1, without two legs 1); labelled 2 first\n"
    )  # "flat" counts under both its flags: duplicate (its agent is call-d's) and no_speech
    exported = sorted(p.stem for p in (out / "audio").glob("*.wav"))
    assert exported == ["call-a", "call-b", "call-c", "call-d", "waiting"]
    assert {r[7] for r in read_rttm(out / "rttm" / "waiting.rttm")} == {"agent", "customer"}
    tracker = MetadataTracker.from_settings(collection)
    assert tracker.unlabelled() == ["gone"]  # the export labelled every other one
    assert [(cid, reason) for cid, reason, _ in tracker.flags()] == [
        ("copy-a", "duplicate"), ("flat", "duplicate"), ("flat", "no_speech"),
        ("noisy", "low_snr"),
    ]  # fmt: skip
    tracker.close()


def test_each_format_carries_the_legs_measures_and_the_flags(
    collection: Settings, tmp_path: Path
) -> None:
    """With --include-flagged, NeMo entries, the audiofolder (read by datasets) and lhotse
    supervisions carry each leg's SNR and music share and the call's flags: the noisy call is
    `low_snr` with its customer under LOW_SNR_DB, the clean ones unflagged and well above it,
    and the silent customer of "flat" has no SNR."""
    import datasets

    out = tmp_path / "set"
    export(out, "--include-flagged", "--split", "10/45/45")  # flagged and clean in each split
    threshold = collection.low_snr_db
    nemo = {
        Path(entry["audio_filepath"]).stem: entry
        for name in ("train", "dev", "test")
        for entry in map(json.loads, (out / "nemo" / f"{name}.json").read_text().splitlines())
    }
    assert set(nemo) == {"call-a", "call-b", "call-c", "call-d", "flat", "noisy"}
    assert nemo["noisy"]["flags"] == ["low_snr"]
    assert nemo["noisy"]["snr_db_customer"] < threshold < nemo["noisy"]["snr_db_agent"]
    assert "no_speech" in nemo["flat"]["flags"] and nemo["flat"]["snr_db_customer"] is None
    for uri in ("call-a", "call-b", "call-c", "call-d"):
        entry = nemo[uri]
        assert entry["flags"] == []
        assert min(entry["snr_db_agent"], entry["snr_db_customer"]) > threshold + 10
        assert entry["music_share_agent"] == entry["music_share_customer"] == 0.0

    loaded = datasets.load_dataset("audiofolder", data_dir=str(out / "huggingface"))
    loaded = loaded.cast_column("audio", datasets.Audio(decode=False))
    rows = {Path(r["audio"]["path"]).stem: r for split in loaded.values() for r in split}
    assert set(rows) == set(nemo)
    assert len(loaded) == 2
    for uri, row in rows.items():
        assert row["flags"] == ",".join(nemo[uri]["flags"])
        assert row["leg_speakers"] == ["agent", "customer"]
        snr = [nemo[uri]["snr_db_agent"], nemo[uri]["snr_db_customer"]]
        assert [None if math.isnan(x) else x for x in row["leg_snr_db"]] == snr
        assert row["leg_music_share"] == [0.0, 0.0]

    supervisions = [
        json.loads(line)
        for split in ("train", "development", "test")
        for line in gzip.decompress(
            (out / "lhotse" / split / "supervisions.jsonl.gz").read_bytes()
        ).splitlines()
    ]
    assert {s["recording_id"] for s in supervisions} == set(nemo)
    for s in supervisions:
        entry = nemo[s["recording_id"]]
        assert s["custom"] == {
            "snr_db": entry[f"snr_db_{s['speaker']}"],
            "music_share": entry[f"music_share_{s['speaker']}"],
            "flags": entry["flags"],
        }


def test_a_rerun_takes_an_erased_conversation_out_and_says_so(
    collection: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After an erase, the next export into the same folder removes the conversation's audio,
    labels and manifest lines, and its summary counts it as erased."""
    out = tmp_path / "set"
    export(out)
    assert (out / "audio" / "call-b.wav").exists()
    capsys.readouterr()
    tracker = MetadataTracker.from_settings(collection)
    tracker.erase("call-b", "consent withdrawn", Folder(Path(collection.audio_storage_dir)))
    tracker.close()
    export(out)
    printed = capsys.readouterr().out
    assert ", 1 removed (1 erased); " in printed
    assert not any(out.rglob("call-b*"))
    manifests = [p for p in out.rglob("*") if p.is_file() and p.suffix in {".txt", ".json",
                 ".jsonl", ".csv", ".lst", ".yml", ".yaml"}]  # fmt: skip
    assert manifests
    assert [p for p in manifests if "call-b" in p.read_text()] == []
    export(out)  # nothing more to take out
    assert ", 0 removed; " in capsys.readouterr().out
