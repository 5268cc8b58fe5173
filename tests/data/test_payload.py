import numpy as np
import pytest

from voxfm.data.ingest import payload


@pytest.mark.parametrize("codec", ["zstd", "lz4hc"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_roundtrip_is_exact(codec, dtype):
    arr = (np.random.default_rng(0).normal(0, 100, (17, 23, 9))).astype(dtype)
    out = payload.decode(payload.encode(arr, codec))
    assert out.dtype == arr.dtype and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


def test_compresses_smooth_volumes():
    arr = np.zeros((64, 64, 64), np.int16)
    arr[16:48, 16:48, 16:48] = 40
    assert len(payload.encode(arr)) < arr.nbytes / 50


def test_unknown_codec_names_the_choices():
    with pytest.raises(ValueError, match="codec='gzip'.*zstd"):
        payload.encode(np.zeros(3), "gzip")


def _forged(arr: np.ndarray, shape=None, dtype=None) -> bytes:
    """A real frame of `arr` whose header claims another shape or dtype (what a crafted shard would carry)."""
    import blosc2

    schunk = blosc2.schunk_from_cframe(payload.encode(arr), True)
    kind, stored, descr = schunk.vlmeta["__pack_tensor__"]
    schunk.vlmeta["__pack_tensor__"] = (kind, shape or stored, dtype or descr)
    return schunk.to_cframe()


def test_an_object_dtype_frame_is_refused_without_crashing(tmp_path):
    """blosc2 would write raw bytes into object pointers (a segfault on first use): run it where a crash shows."""
    import subprocess
    import sys

    frame = tmp_path / "object.b2"
    frame.write_bytes(_forged(np.arange(8**3, dtype=np.int64).reshape(8, 8, 8), dtype="|O"))
    code = (
        "import sys; from pathlib import Path; from voxfm.data.ingest import payload\n"
        "try:\n    a = payload.decode(Path(sys.argv[1]).read_bytes()); print(a.flat[5])\n"
        "except ValueError as err:\n    print(err)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(frame)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "dtype '|O' refused" in done.stdout


def test_a_decompression_bomb_is_refused_by_the_budget_before_decoding():
    frame = payload.encode(np.zeros((512, 512, 512), np.int16))  # 256 MiB of zeros
    assert len(frame) < 20_000
    with pytest.raises(ValueError, match="decodes to 256 MiB, over the budget of 64 MiB"):
        payload.decode(frame, max_mb=64)
    assert payload.MAX_SAMPLE_MB >= 1024  # the default budget takes real CT volumes


def test_a_shape_the_frame_does_not_hold_or_the_metadata_does_not_say_is_refused():
    lie = _forged(np.arange(64, dtype=np.int16).reshape(4, 4, 4), shape=(100, 100, 100))
    with pytest.raises(ValueError, match=r"needs 2000000 bytes but the frame holds 128"):
        payload.decode(lie)
    with pytest.raises(ValueError, match=r"shape \[4, 4, 4\] differs from the sample's metadata shape \[4, 4, 5\]"):
        payload.decode(payload.encode(np.zeros((4, 4, 4), np.int16)), shape=[4, 4, 5])
    with pytest.raises(ValueError, match=r"shape \(2, 4, 4, 4\) refused; expected 3"):
        payload.decode(payload.encode(np.zeros((2, 4, 4, 4), np.int16)))
    with pytest.raises(ValueError, match="not a blosc2 array frame"):
        payload.decode(b"not blosc2" * 10)
