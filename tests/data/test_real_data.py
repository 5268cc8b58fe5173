"""The real scans in $VOXFM_REAL_DATA (CT head RAS, MRI T1 RAS, MRI T1 LSA, each with a label map)."""

import json

import pytest

from voxfm.data.ingest.run import run_shard
from voxfm.data.stream.samples import decode_sample
from voxfm.data.stream.shards import shard_urls

PAIRS = [
    ("ct_head_invesalius", "CT"),
    ("mri_t1_colin27_ch2", "MR"),
    ("mri_t1_itk_kmeans", "MR"),
]
LABELS = {
    "ct_head_invesalius": "ct_head_invesalius_label",
    "mri_t1_colin27_ch2": "mri_t1_colin27_ch2_aal_label",
    "mri_t1_itk_kmeans": "mri_t1_itk_kmeans_label",
}


pytestmark = pytest.mark.slow


def test_real_scans_shard_to_ras_at_target_spacing_and_a_bad_file_is_rejected(tmp_path, real_data):
    broken = tmp_path / "truncated.nii.gz"
    broken.write_bytes((real_data / "mri_t1_itk_kmeans.nii.gz").read_bytes()[:5000])
    rows = ["path,modality,label"]
    rows += [f"{real_data / (n + '.nii.gz')},{m},{real_data / (LABELS[n] + '.nii.gz')}" for n, m in PAIRS]
    rows.append(f"{broken},MR,")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")

    report = run_shard(str(tmp_path / "manifest.csv"), str(tmp_path / "shards"), {}, progress=False)
    assert report["n_sharded"] == 3 and report["n_rejected"] == 1
    assert report["n_inputs"] == report["n_sharded"] + report["n_rejected"] == 4
    assert report["rejected"][0]["path"] == broken.name and report["rejected"][0]["reason"]  # relative: shareable

    # subjects are salted hashes: the samples are told apart by their (relative) source paths
    index = json.loads((tmp_path / "shards" / "index.json").read_text())["samples"]
    samples = {s["source_path"].removesuffix(".nii.gz"): s for s in index}
    assert set(samples) == {n for n, _ in PAIRS}
    assert samples["mri_t1_itk_kmeans"]["original_orientation"] == "LSA"
    for name, modality in PAIRS:
        s = samples[name]
        assert s["orientation"] == "RAS" and s["spacing"] == [1.5, 1.5, 1.5] and s["modality"] == modality
        assert len(s["label_classes"]) > 2

    import tarfile

    from voxfm.data.ingest import payload

    with tarfile.open(shard_urls(tmp_path / "shards")[0]) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    for key in (s["key"] for s in samples.values()):
        vol, meta = decode_sample({"json": files[f"{key}.json"], "image.b2": files[f"{key}.image.b2"]})
        label = payload.decode(files[f"{key}.label.b2"])
        assert vol.shape == label.shape == tuple(meta["shape"])
        assert 0.0 <= vol.min() and vol.max() <= 1.0
    assert len(json.loads(files[f"{samples['mri_t1_colin27_ch2']['key']}.json"])["label_classes"]) == 117
