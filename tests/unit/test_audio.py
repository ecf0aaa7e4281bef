"""Tests of sepid.data.audio: downmix, resampling, and clear errors on bad files."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from sepid.data.audio import (
    SILENT_PEAK,
    AudioError,
    audio_info,
    check_audio,
    get_resampler,
    probe_audio,
    read_audio,
    resample,
    write_audio,
)

SAMPLE = str(
    Path(__file__).resolve().parents[1]
    / "samples/librispeech-mini/test-other/1688/1688-142285-0002.flac"
)


def _sine(n, rate, freq=440.0):
    t = np.arange(n) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_stereo_is_downmixed_to_mean(tmp_path):
    left = _sine(1600, 16000, 440)
    right = _sine(1600, 16000, 1000) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    signal = read_audio(path)
    assert signal.dtype == torch.float32
    assert signal.shape == (1600,)
    np.testing.assert_allclose(signal.numpy(), (left + right) / 2, atol=1e-6)
    assert audio_info(path) == (1600, 16000, 2)


def test_8k_is_resampled_to_16k(tmp_path):
    path = tmp_path / "low.wav"
    sf.write(path, _sine(8000, 8000), 8000)
    signal = read_audio(path, sample_rate=16000)
    assert signal.shape == (16000,)
    native = read_audio(path)
    assert native.shape == (8000,)


def test_resampler_is_cached():
    first = get_resampler(8000, 16000)
    assert get_resampler(8000, 16000) is first
    assert get_resampler(16000, 8000) is not first
    x = torch.randn(100)
    assert resample(x, 16000, 16000) is x


def test_write_read_roundtrip(tmp_path):
    path = tmp_path / "out.flac"
    x = _sine(4000, 16000)
    write_audio(path, torch.from_numpy(x), 16000)
    y = read_audio(path, sample_rate=16000)
    np.testing.assert_allclose(y.numpy(), x, atol=1e-3)


def test_empty_file_raises_naming_path(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="empty.wav"):
        read_audio(path)


@pytest.mark.parametrize("content", [b"", b"not audio at all" * 50])
def test_garbage_file_raises_naming_path(tmp_path, content):
    path = tmp_path / "garbage.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match="garbage.wav"):
        read_audio(path)
    with pytest.raises(AudioError, match="garbage.wav"):
        probe_audio(path)


def test_too_short_file_raises_naming_path(tmp_path):
    path = tmp_path / "short.wav"
    sf.write(path, _sine(800, 16000), 16000)
    with pytest.raises(AudioError, match="short.wav"):
        read_audio(path, min_duration=1.0)
    assert read_audio(path, min_duration=0.01).shape == (800,)


def test_truncated_flac_raises_naming_path(tmp_path):
    data = open(SAMPLE, "rb").read()
    path = tmp_path / "cut.flac"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match="cut.flac"):
        probe_audio(path)
    with pytest.raises(AudioError, match="cut.flac"):
        read_audio(path)


def test_missing_file_raises_file_not_found(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        read_audio(path)
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        probe_audio(path)


def test_probe_matches_info():
    assert probe_audio(SAMPLE) == audio_info(SAMPLE) == (45360, 16000, 1)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("block_frames", [256, 1 << 16])
def test_check_audio_finds_non_finite_samples_anywhere(tmp_path, value, block_frames):
    sig = _sine(16000, 16000)
    sig[12345] = value  # the middle of a block, far from the last frames
    path = tmp_path / "nan.wav"
    sf.write(path, sig, 16000, subtype="FLOAT")
    assert probe_audio(path) == (16000, 16000, 1)  # the end-only probe does not see it
    with pytest.raises(AudioError, match=rf"{path} holds NaN.*0\.772 s, frame 12345"):
        check_audio(path, block_frames=block_frames)
    with pytest.raises(AudioError, match="skip_bad_files=True"):
        read_audio(path)


@pytest.mark.parametrize("subtype", ["PCM_16", "FLOAT"])
def test_check_audio_silence(tmp_path, subtype):
    rate = 16000
    path = tmp_path / "x.wav"
    sf.write(path, np.zeros(3 * rate, dtype=np.float32), rate, subtype=subtype)
    assert check_audio(path).silent
    below = np.full(rate, 0.5 * SILENT_PEAK, dtype=np.float32)
    sf.write(path, below, rate, subtype=subtype)
    assert check_audio(path).silent  # zero in 16-bit PCM
    late = np.zeros(3 * rate, dtype=np.float32)
    late[-100] = 0.1  # silent but for one sample near the end
    sf.write(path, late, rate, subtype=subtype)
    result = check_audio(path, block_frames=1000)
    assert not result.silent and result.full_decode == (subtype == "FLOAT")
    assert (result.frames, result.sample_rate, result.channels) == (3 * rate, rate, 1)


def test_check_audio_stops_early_on_integer_files():
    result = check_audio(SAMPLE)
    assert not result.silent and not result.full_decode
    assert (result.frames, result.sample_rate, result.channels) == probe_audio(SAMPLE)


def test_check_audio_empty_and_truncated(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=f"{empty} is empty"):
        check_audio(empty)
    flac = Path(SAMPLE).read_bytes()
    cut = tmp_path / "cut.flac"
    cut.write_bytes(flac[: len(flac) // 2])
    with pytest.raises(AudioError, match=str(cut)):
        check_audio(cut)
