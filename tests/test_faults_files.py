"""Damaged and mistaken files: embedding caches, exports, checkpoints, archives, averaging diverged weights, and a
folder or wav.scp with one file. Each is an error that names the file and says what to do, never a traceback."""

import io
import json
import logging
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import soundfile
import torch

import averageCheckpoints
import scoreSpeakers
from config import Config
from dtdysv.errors import UserError
from dtdysv.evaluation import embed as embedding
from dtdysv.evaluation import results
from dtdysv.prep.archives import ArchiveError, extract_archive
from dtdysv.runtime import checkpoint as ckpt
from speakerapi import ApiError, SpeakerVerifier

# ---- embedding caches --------------------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path):
    path = tmp_path / "result" / "embeddings.npz"
    results.save_npz(path, {"format": results.CACHE_FORMAT}, names=np.array(["a.wav", "b.wav"]),
                       embeddings=np.random.default_rng(0).normal(size=(2, 1, 64)).astype(np.float32))
    return path


def test_an_intact_cache_loads(cache):
    meta, arrays = results.load_npz(cache)
    assert meta == {"format": results.CACHE_FORMAT} and arrays["embeddings"].shape == (2, 1, 64)
    assert results.load_npz(cache.parent / "absent.npz") is None


@pytest.mark.parametrize("damage", ["truncated", "random", "no_meta"])
def test_a_damaged_cache_is_an_error_naming_it(cache, damage):
    data = cache.read_bytes()
    if damage == "truncated":
        cache.write_bytes(data[:len(data) // 2])
    elif damage == "random":
        cache.write_bytes(os.urandom(len(data)))
    else:
        np.savez(cache, names=np.array(["a.wav"]))
    with pytest.raises(embedding.EvalError, match=r"'.*embeddings.npz' is damaged or truncated .* Delete it and "
                                                  r"rerun"):
        results.load_npz(cache)


# ---- exports -----------------------------------------------------------------------------------------------------


class FirstSamples(torch.nn.Module):
    """A stand-in model: the first 8 samples of each waveform as its 'embedding'."""

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return wave[:, :8]


def write_export(folder, embedding_size=8, description=None):
    folder.mkdir(parents=True, exist_ok=True)
    torch.jit.script(FirstSamples()).save(str(folder / "model.pt"))
    info = {"sample_rate": 16000, "embedding_size": embedding_size, "files": {"torchscript": "model.pt"}}
    (folder / "export.json").write_text(description if description is not None else json.dumps(info))
    return folder


def test_a_working_export_for_reference(tmp_path):
    sv = SpeakerVerifier.from_export(write_export(tmp_path / "exp"), prefer="torchscript")
    wave = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)
    np.testing.assert_array_equal(sv.embed(wave), wave[:8])


@pytest.mark.parametrize("description, message", [
    ("{\"sample_rate\": 16000, ", "is not valid JSON"),
    ("[1, 2]", "is not export.py's description of an export"),
    ("{\"sample_rate\": 16000, \"files\": {\"torchscript\": \"model.pt\"}}", "is not export.py's description"),
    ("{\"sample_rate\": 16000, \"embedding_size\": \"8\", \"files\": {}}", "is not export.py's description"),
    ("{\"sample_rate\": 16000, \"embedding_size\": 8, \"files\": \"model.pt\"}", "is not export.py's description"),
])
def test_a_malformed_export_description_is_refused(tmp_path, description, message):
    folder = write_export(tmp_path / "exp", description=description)
    with pytest.raises(ApiError, match=rf"'.*export.json' {message}"):
        SpeakerVerifier.from_export(folder)


def test_an_export_description_that_does_not_fit_its_model_is_refused(tmp_path):
    sv = SpeakerVerifier.from_export(write_export(tmp_path / "exp", embedding_size=4), prefer="torchscript")
    with pytest.raises(ApiError, match=r"shape \(1, 8\) .* but '.*export.json' says 4 values each"):
        sv.embed(np.zeros(1600, dtype=np.float32))
    with pytest.raises(ApiError, match="do not belong together"):
        sv.embed_many([np.zeros(1600, dtype=np.float32)] * 2)


@pytest.mark.parametrize("fmt, name", [("torchscript", "model.pt"), ("onnx", "model.onnx")])
def test_a_damaged_model_file_is_refused(tmp_path, fmt, name):
    pytest.importorskip("onnxruntime") if fmt == "onnx" else None
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / name).write_bytes(os.urandom(2000))
    (folder / "export.json").write_text(json.dumps({"sample_rate": 16000, "embedding_size": 8, "files": {fmt: name}}))
    with pytest.raises(ApiError, match=rf"Cannot load the {fmt} export '.*{name}': .*damaged or truncated: export "
                                       rf"again"):
        SpeakerVerifier.from_export(folder, prefer=fmt)


# ---- checkpoints -------------------------------------------------------------------------------------------------


def states(value=1.0):
    return {"w": torch.full((3,), value), "n": torch.tensor(2)}


def our_checkpoint(path, value=1.0, **drop):
    obj = {"format": ckpt.FORMAT, "version": 1, "epoch": 1, "model": states(value), "loss": states(value),
           "config": Config().to_dict()}
    ckpt.atomic_save({k: v for k, v in obj.items() if k not in drop}, path)
    return path


def test_a_checkpoint_that_is_a_list_is_refused(tmp_path):
    torch.save([states()], tmp_path / "list.model")
    with pytest.raises(ckpt.CheckpointError, match=r"'.*list.model' holds a list, not a checkpoint"):
        ckpt.read(tmp_path / "list.model")


def test_a_checkpoint_without_its_config_is_refused(tmp_path):
    path = our_checkpoint(tmp_path / "noconfig.model", config=None)
    with pytest.raises(ckpt.CheckpointError, match=r"Checkpoint '.*noconfig.model' lacks 'config'"):
        ckpt.split_weights(ckpt.read(path), path, states())
    with pytest.raises(ckpt.CheckpointError, match="lacks 'config'"):
        averageCheckpoints.average_checkpoints([our_checkpoint(tmp_path / "a.model"), path], tmp_path / "avg.model")
    path = our_checkpoint(tmp_path / "nomodel.model", model=None)
    with pytest.raises(ckpt.CheckpointError, match="lacks 'model'"):
        ckpt.read(path)


def test_a_folder_given_as_checkpoint_says_so(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match=r"Checkpoint '.*exp' is a folder; give a checkpoint file \(e\.g"):
        ckpt.read(tmp_path / "exp" if (tmp_path / "exp").mkdir() is None else None)
    our_checkpoint(tmp_path / "exp" / "model" / "last.model")
    with pytest.raises(ckpt.CheckpointError, match=r"is a folder; give a checkpoint file, e\.g\. '.*last.model'"):
        ckpt.read(tmp_path / "exp")


class Foreign:
    pass


@pytest.mark.parametrize("content", ["random", "truncated", "pickle", "object"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # "pickle" writes protocol 4 on purpose
def test_an_unreadable_checkpoint_never_suggests_loading_it_unsafely(tmp_path, content):
    path = tmp_path / "bad.model"
    if content == "random":
        path.write_bytes(os.urandom(3000))
    elif content == "truncated":
        our_checkpoint(path)
        path.write_bytes(path.read_bytes()[:500])
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"a": Foreign}))
    else:
        buffer = io.BytesIO()
        torch.save({"model": Foreign()}, buffer)
        path.write_bytes(buffer.getvalue())
    with pytest.raises(ckpt.CheckpointError, match=r"Cannot read checkpoint '.*bad.model': it ") as err:
        ckpt.read(path)
    message = str(err.value)
    assert "weights_only" not in message and "Re-running" not in message and "trusted" not in message
    assert "\n" not in message


def test_averaging_a_diverged_checkpoint_is_refused(tmp_path):
    good = our_checkpoint(tmp_path / "model000000001.model")
    diverged = our_checkpoint(tmp_path / "model000000002.model", value=float("nan"))
    with pytest.raises(ckpt.CheckpointError, match=r"The model of '.*model000000002.model' holds NaN or infinite "
                                                   r"values \(w\)"):
        averageCheckpoints.average_checkpoints([good, diverged], tmp_path / "avg.model")
    assert not (tmp_path / "avg.model").exists()
    our_checkpoint(diverged, value=float("inf"))
    assert averageCheckpoints.main(["--checkpoints", str(good), str(diverged), "--out", str(tmp_path / "a")]) == 2


# ---- archives ----------------------------------------------------------------------------------------------------


def test_a_zip_with_a_bad_crc_is_an_error_and_keeps_what_was_good(tmp_path):
    archive = tmp_path / "vox.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("vox/a.txt", b"A" * 1000)
        zf.writestr("vox/b.txt", b"B" * 1000)
    data = bytearray(archive.read_bytes())
    data[data.find(b"B" * 1000) + 500] = ord("C")  # one byte of b.txt changes: its CRC no longer fits
    archive.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"--extract .*vox.zip: the archive is damaged or truncated \(BadZipFile: "
                                           r"Bad CRC-32 for file 'vox/b.txt'\)"):
        extract_archive(archive, out)
    assert sorted(p.name for p in (out / "vox").iterdir()) == ["a.txt"]  # no half-written b.txt, no temporary


def test_a_truncated_tar_gz_is_an_error(tmp_path):
    archive = tmp_path / "musan.tar.gz"
    rng = np.random.default_rng(0)
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("musan/a.bin", "musan/b.bin"):
            data = rng.bytes(50_000)  # incompressible: the cut falls inside b.bin
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    archive.write_bytes(archive.read_bytes()[:75_000])
    out = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"musan.tar.gz: the archive is damaged or truncated .* download the "
                                           r"archive again"):
        extract_archive(archive, out)
    assert sorted(p.name for p in (out / "musan").iterdir()) == ["a.bin"]


# ---- scoring one file --------------------------------------------------------------------------------------------


def test_a_folder_or_wav_scp_with_one_file_explains_that_pairs_need_two(tmp_path, caplog):
    export = write_export(tmp_path / "exp")
    clips = tmp_path / "clips"
    clips.mkdir()
    soundfile.write(clips / "only.wav", np.zeros(3200), 16000, subtype="PCM_16")
    scp = tmp_path / "wav.scp"
    scp.write_text(f"u1 {clips / 'only.wav'}\n")
    for source in (["--folder", str(clips)], ["--wav_scp", str(scp)]):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert scoreSpeakers.main(["--model", str(export), "--format", "torchscript", *source]) == 2
        assert "holds one audio file" in caplog.text and "no pair to score" in caplog.text
    from dtdysv.data.lists import DataError

    assert issubclass(DataError, UserError)
