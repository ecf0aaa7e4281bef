"""Audio I/O shared by data prep, recipes and interfaces.

Every signal is read through :func:`read_audio`: mono (stereo is downmixed), float32, at an explicit
sample rate (resampled once through a cached ``torchaudio`` resampler, with a log line the first
time a rate pair is met). Unreadable, empty or too short files raise an error naming the file and
the fix, never a silent zero tensor.

Data prep checks every file once with :func:`check_audio`: header, the end decodes (truncation),
no NaN or infinite sample, and whether the file is digitally silent (:data:`SILENT_PEAK`).
"""

import functools
import logging
import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class AudioError(ValueError):
    """An audio file that cannot be used as it is; the message names the file and the fix."""


# A file whose every sample is below this magnitude is "digitally silent": it is all zeros once
# written as 16-bit PCM (half of the 16-bit step, about -96 dBFS).
SILENT_PEAK = 2.0**-16
# Frames decoded at a time by check_audio: memory stays bounded whatever the file's length.
# Integer files start with smaller blocks (x4 each time): usually the first is not silent.
CHECK_BLOCK_FRAMES = 1 << 16
CHECK_FIRST_BLOCK_FRAMES = 1 << 10
# soundfile subtypes whose samples are integers: they cannot hold NaN or infinity.
INTEGER_SUBTYPE_PREFIXES = ("PCM_", "ULAW", "ALAW")
FIX_BAD_FILE = (
    "Remove the file (or re-export it), or run data prep with skip_bad_files=True "
    "(--skip_bad_files=True for a recipe, --skip_bad_files for data_prep/*.py) to leave it out "
    "and list it in bad_files.txt."
)


@dataclass(frozen=True)
class AudioCheck:
    """What :func:`check_audio` found in a readable file.

    Attributes
    ----------
    frames, sample_rate, channels : int
        As :func:`audio_info`.
    silent : bool
        Every sample's magnitude is below :data:`SILENT_PEAK`.
    full_decode : bool
        Whether every sample was decoded (float and lossy files), or only the blocks up to the
        first non-silent one and the end (integer files, which cannot hold NaN).
    """

    frames: int
    sample_rate: int
    channels: int
    silent: bool
    full_decode: bool


def _check_exists(path):
    """libsndfile reports a missing file as a generic "System error": check first."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Audio file not found: {path}. Check the data folder and rerun data prep."
        )


def _raise_if_unreadable(path):
    """libsndfile reports a file the user may not read as a generic "System error", which the
    callers would word as "truncated or not audio": raises the permission error instead (only
    called once libsndfile has failed, so a readable file costs nothing)."""
    try:
        with open(path, "rb"):
            pass
    except PermissionError as denied:
        raise AudioError(
            f"Cannot read audio file {path}: permission denied (the user running this process "
            "may not read it). Make it readable (chmod a+r, or fix its owner), run as a user "
            "who can read it, or run data prep with skip_bad_files=True to leave it out."
        ) from denied


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
        _raise_if_unreadable(path)
        raise AudioError(
            f"Cannot read audio file {path}: {str(err).rstrip('.')}. Convert it to wav/flac (e.g. "
            f"`ffmpeg -i {path} out.wav`) or run data prep with skip_bad_files=True."
        ) from err
    return info.frames, info.samplerate, info.channels


def probe_audio(path, tail_frames=160):
    """Like :func:`audio_info`, and also decodes the last ``tail_frames`` frames, which catches
    truncated files whose header still announces the full length (a cut flac, for example).

    Costs about one seek and one small read per file. Data prep uses :func:`check_audio`, which
    also checks the samples (NaN, infinity, silence).

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
        _raise_if_unreadable(path)
        raise AudioError(
            f"Cannot read audio file {path}: {str(err).rstrip('.')}. The file is truncated or not audio; "
            "re-extract or re-download it, or run data prep with skip_bad_files=True."
        ) from err
    return num_frames, sample_rate, channels


def _truncated(path, num_frames):
    return AudioError(
        f"Audio file {path} announces {num_frames} frames but its end cannot be read "
        "(truncated?). Re-extract or re-download it, or run data prep with skip_bad_files=True."
    )


def check_audio(path, tail_frames=160, block_frames=CHECK_BLOCK_FRAMES):
    """Checks a file as data prep needs: it opens, its end decodes, no sample is NaN or
    infinite, and whether it is digitally silent.

    The samples are streamed in blocks of ``block_frames`` (memory bounded, ``numpy.isfinite``
    and the peak per block). Files with integer samples (PCM wav, flac: the usual corpora) cannot
    hold NaN, so decoding stops at the first block with a sample at or above
    :data:`SILENT_PEAK` (usually the first), then the last ``tail_frames`` frames are decoded as
    in :func:`probe_audio`; float and lossy files are decoded entirely. Both answers are exact:
    a NaN anywhere in a float file, and a silent file of any format, are found.

    Returns
    -------
    AudioCheck

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    AudioError
        The file cannot be opened or decoded, is empty or truncated, or holds a NaN or infinite
        sample (the message gives the time of the first one and the fix).
    """
    path = str(path)
    _check_exists(path)
    try:
        with sf.SoundFile(path) as f:
            num_frames, sample_rate, channels = f.frames, f.samplerate, f.channels
            if num_frames == 0:
                raise AudioError(f"Audio file {path} is empty (0 samples). " + FIX_BAD_FILE)
            full = not f.subtype.startswith(INTEGER_SUBTYPE_PREFIXES)
            buffer = np.empty((min(block_frames, num_frames), channels), dtype="float32")
            # Integer files: small blocks first (speech is rarely silent for long), growing.
            step = buffer.shape[0] if full else min(CHECK_FIRST_BLOCK_FRAMES, buffer.shape[0])
            position, loud = 0, False
            while position < num_frames:
                block = f.read(out=buffer[:step])
                step = min(4 * step, buffer.shape[0])
                if block.shape[0] == 0:
                    raise _truncated(path, num_frames)
                finite = np.isfinite(block)
                if not finite.all():
                    first = position + int(np.flatnonzero(~finite.all(axis=1))[0])
                    raise AudioError(
                        f"Audio file {path} holds NaN or infinite samples (the first at "
                        f"{first / sample_rate:.3f} s, frame {first}): it would poison training. "
                        + FIX_BAD_FILE
                    )
                position += block.shape[0]
                if not loud and float(np.abs(block).max()) >= SILENT_PEAK:
                    loud = True
                    if not full:
                        break
            if position < num_frames:
                f.seek(max(0, num_frames - tail_frames))
                if f.read(tail_frames, dtype="float32", always_2d=True).shape[0] == 0:
                    raise _truncated(path, num_frames)
    except (sf.LibsndfileError, RuntimeError) as err:
        _raise_if_unreadable(path)
        raise AudioError(
            f"Cannot read audio file {path}: {str(err).rstrip('.')}. The file is truncated or not "
            "audio; re-extract or re-download it, or run data prep with skip_bad_files=True."
        ) from err
    return AudioCheck(num_frames, sample_rate, channels, not loud, full)


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
        _raise_if_unreadable(path)
        raise AudioError(
            f"Cannot decode audio file {path}: {str(err).rstrip('.')}. The file is truncated or corrupt; "
            "re-extract it, or rerun data prep with skip_bad_files=True to leave it out."
        ) from err
    if data.shape[1] > 1:
        data = data.mean(axis=1, keepdims=True)
    signal = torch.from_numpy(np.ascontiguousarray(data[:, 0]))
    if not torch.isfinite(signal).all():
        raise AudioError(f"Audio file {path} contains NaN or infinite samples. " + FIX_BAD_FILE)
    if sample_rate is not None and file_rate != sample_rate:
        signal = resample(signal, file_rate, sample_rate)
    return signal


def write_audio(path, signal, sample_rate):
    """Writes a mono ``[time]`` tensor or array as 16-bit PCM (wav) or flac, by extension."""
    if isinstance(signal, torch.Tensor):
        signal = signal.detach().cpu().numpy()
    sf.write(str(path), np.asarray(signal, dtype=np.float32), int(sample_rate), subtype="PCM_16")
