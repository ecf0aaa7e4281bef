"""Audio I/O shared by data prep, recipes and interfaces.

Every signal is read through :func:`read_audio`: mono (stereo is downmixed), float32, at an explicit
sample rate (resampled once through a cached ``torchaudio`` resampler, with a log line the first
time a rate pair is met). Unreadable, empty or too short files raise an error naming the file and
the fix, never a silent zero tensor.
"""

import functools
import logging
import os

import numpy as np
import soundfile as sf
import torch
import torchaudio

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class AudioError(ValueError):
    """An audio file that cannot be used as it is; the message names the file and the fix."""


def _check_exists(path):
    """libsndfile reports a missing file as a generic "System error": check first."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Audio file not found: {path}. Check the data folder and rerun data prep."
        )


def audio_info(path):
    """Returns ``(num_frames, sample_rate, channels)`` of an audio file without reading it.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    AudioError
        The file cannot be decoded.
    """
    path = str(path)
    _check_exists(path)
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(
            f"Cannot read audio file {path}: {str(err).rstrip('.')}. Convert it to wav/flac (e.g. "
            f"`ffmpeg -i {path} out.wav`) or run data prep with skip_bad_files=True."
        ) from err
    return info.frames, info.samplerate, info.channels


def probe_audio(path, tail_frames=160):
    """Like :func:`audio_info`, and also decodes the last ``tail_frames`` frames, which catches
    truncated files whose header still announces the full length (a cut flac, for example).

    Costs about one seek and one small read per file, so data prep can check every file.

    Returns
    -------
    tuple
        ``(num_frames, sample_rate, channels)``.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    AudioError
        The file cannot be opened, or its end cannot be decoded.
    """
    path = str(path)
    _check_exists(path)
    try:
        with sf.SoundFile(path) as f:
            num_frames, sample_rate, channels = f.frames, f.samplerate, f.channels
            if num_frames > 0:
                f.seek(max(0, num_frames - tail_frames))
                tail = f.read(tail_frames, dtype="float32", always_2d=True)
                if tail.shape[0] == 0:
                    raise AudioError(
                        f"Audio file {path} announces {num_frames} frames but its end cannot "
                        "be read (truncated?). Re-extract or re-download it, or run data prep "
                        "with skip_bad_files=True."
                    )
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(
            f"Cannot read audio file {path}: {str(err).rstrip('.')}. The file is truncated or not audio; "
            "re-extract or re-download it, or run data prep with skip_bad_files=True."
        ) from err
    return num_frames, sample_rate, channels


@functools.lru_cache(maxsize=32)
def get_resampler(orig_freq, new_freq):
    """One cached resampler per rate pair, so filters are designed once."""
    logger.info("Resampling audio from %d Hz to %d Hz", orig_freq, new_freq)
    return torchaudio.transforms.Resample(orig_freq=orig_freq, new_freq=new_freq)


def resample(signal, orig_freq, new_freq):
    """Resamples a ``[..., time]`` tensor with the cached filter of that rate pair."""
    if orig_freq == new_freq:
        return signal
    resampler = get_resampler(int(orig_freq), int(new_freq)).to(signal.device)
    return resampler(signal)


def read_audio(path, sample_rate=None, min_duration=0.0, start=0, stop=None):
    """Reads one file as a mono float32 tensor ``[time]``.

    Arguments
    ---------
    path : str
        Audio file (any format libsndfile reads: wav, flac, ogg).
    sample_rate : int, optional
        Rate to return; the file is resampled when it differs. ``None`` keeps the file's rate.
    min_duration : float
        Seconds the file must last (at least one sample in any case).
    start, stop : int
        Frame range to read, in the file's own sample rate.

    Returns
    -------
    torch.Tensor
        The signal ``[time]`` at ``sample_rate`` (or the file's rate).
    """
    path = str(path)
    num_frames, file_rate, _ = audio_info(path)
    if num_frames == 0:
        raise AudioError(
            f"Audio file {path} is empty (0 samples). Remove it from the manifest or rerun "
            "data prep with skip_bad_files=True."
        )
    if num_frames < max(1, min_duration * file_rate):
        raise AudioError(
            f"Audio file {path} lasts {num_frames / file_rate:.3f} s, shorter than the "
            f"minimum {min_duration} s. Rerun data prep (it drops files under its min_duration)."
        )
    try:
        data, _ = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(
            f"Cannot decode audio file {path}: {str(err).rstrip('.')}. The file is truncated or corrupt; "
            "re-extract it, or rerun data prep with skip_bad_files=True to leave it out."
        ) from err
    if data.shape[1] > 1:
        data = data.mean(axis=1, keepdims=True)
    signal = torch.from_numpy(np.ascontiguousarray(data[:, 0]))
    if not torch.isfinite(signal).all():
        raise AudioError(f"Audio file {path} contains NaN or infinite samples.")
    if sample_rate is not None and file_rate != sample_rate:
        signal = resample(signal, file_rate, sample_rate)
    return signal


def write_audio(path, signal, sample_rate):
    """Writes a mono ``[time]`` tensor or array as 16-bit PCM (wav) or flac, by extension."""
    if isinstance(signal, torch.Tensor):
        signal = signal.detach().cpu().numpy()
    sf.write(str(path), np.asarray(signal, dtype=np.float32), int(sample_rate), subtype="PCM_16")
