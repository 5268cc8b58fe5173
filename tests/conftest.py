import os
import random
import socket
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    from voxfm.data.phantoms import write_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out, n=6, seed=1, shape=(40, 40, 32))
    return out


def labelled_shards(phantoms: list[Path], out: Path) -> Path:
    """`voxfm shard` of these phantom images with their label maps (0 background, 1 body, 2 organ, 3 lesion), one
    subject each, from a manifest in `out`; returns the shard set, out/shards."""
    from voxfm.data.ingest.run import run_shard

    rows = ["path,label,subject"] + [
        f"{p},{str(p).replace('.nii.gz', '_label.nii.gz')},{p.name[:10]}" for p in phantoms
    ]
    out.mkdir(parents=True, exist_ok=True)
    (out / "m.csv").write_text("\n".join(rows) + "\n")
    assert run_shard(str(out / "m.csv"), str(out / "shards"), {}, progress=False)["n_sharded"] == len(phantoms)
    return out / "shards"


def phantom_images(phantom_dir: Path) -> list[Path]:
    return sorted(phantom_dir.glob("phantom*_??.nii.gz"))


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, phantom_dir) -> Path:
    """Three phantoms sharded with their label maps (tests/finetune/test_finetune.py uses all six, its own)."""
    return labelled_shards(phantom_images(phantom_dir)[:3], tmp_path_factory.mktemp("labelled"))


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory, phantom_dir) -> Path:
    """Phantoms (labels excluded) sharded once for the whole session."""
    from voxfm.data.ingest.run import run_shard

    images = tmp_path_factory.mktemp("images")
    for p in phantom_dir.glob("*.nii.gz"):
        if "_label" not in p.name:
            (images / p.name).symlink_to(p)
    out = tmp_path_factory.mktemp("shards")
    report = run_shard(str(images), str(out), {}, progress=False)
    assert report["n_sharded"] == 6
    return out


def _two_step_run(tmp_path_factory, shard_dir, experiment: str) -> Path:
    from voxfm.pretrain.cli.compose import load_config
    from voxfm.pretrain.launch.run import run_pretrain

    run = tmp_path_factory.mktemp(f"{experiment}_run")
    run_pretrain(
        load_config(
            "pretrain",
            [
                f"experiment={experiment}",
                f"data.shards={shard_dir}",
                f"run_dir={run}",
                "trainer.max_steps=2",
                "trainer.progress_bar=false",
                "trainer.images_every_n_steps=0",
                "data.num_workers=0",
            ],
        )
    )
    return run


@pytest.fixture(scope="session")
def mim_run(tmp_path_factory, shard_dir) -> Path:
    """A tiny ResEnc (demo_mim) pretrained 2 steps on the phantom shards, for the export and fine-tune tests."""
    return _two_step_run(tmp_path_factory, shard_dir, "demo_mim")


@pytest.fixture(scope="session")
def primus_run(tmp_path_factory, shard_dir) -> Path:
    """A tiny Primus (demo_primus) pretrained 2 steps, for the nnssl export and fine-tune tests."""
    return _two_step_run(tmp_path_factory, shard_dir, "demo_primus")


@pytest.fixture
def real_data() -> Path:
    path = os.environ.get("VOXFM_REAL_DATA")
    if not path:
        pytest.skip("VOXFM_REAL_DATA is not set")
    return Path(path)


def free_port() -> int:
    """A free port below the ephemeral range, for MASTER_PORT of multi-process tests. Lightning's own pick is an
    ephemeral port, and a rank that retries connecting before rank 0 listens can, when its retry's own source port
    equals the target, connect to itself (TCP self-connect) and hang the run."""
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    for port in random.Random().sample(range(20000, min(low, 32000)), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")
