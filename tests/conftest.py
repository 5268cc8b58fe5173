import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    from data.phantoms import write_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out, n=6, seed=1, shape=(40, 40, 32))
    return out


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory, phantom_dir) -> Path:
    """Phantoms (labels excluded) sharded once for the whole session."""
    from data.ingest import run_shard

    images = tmp_path_factory.mktemp("images")
    for p in phantom_dir.glob("*.nii.gz"):
        if "_label" not in p.name:
            (images / p.name).symlink_to(p)
    out = tmp_path_factory.mktemp("shards")
    report = run_shard(str(images), str(out), {}, progress=False)
    assert report["n_sharded"] == 6
    return out


@pytest.fixture
def real_data() -> Path:
    path = os.environ.get("VOXFM_REAL_DATA")
    if not path:
        pytest.skip("VOXFM_REAL_DATA is not set")
    return Path(path)
