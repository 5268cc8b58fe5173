import numpy as np
import pytest

from data import payload


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
