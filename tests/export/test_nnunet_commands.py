"""The nnU-Net fine-tuning steps a format=nnunet model card prints, run as printed with nnU-Net 2.8.1's own
commands on a tiny phantom dataset, on CPU: plan and preprocess, merge the plans fragment, preprocess the voxfm
configuration, and train from the exported weights through the first epoch."""

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from voxfm.data.phantoms import write_phantoms
from voxfm.pretrain.export.run import run_export

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent  # nnU-Net's entry points, installed beside this interpreter
PLACEHOLDERS = {"<ID>": "501", "<name>": "Voxfm", "<fold>": "0"}
LABELS = {"background": 0, "body": 1, "organ": 2, "lesion": 3}  # the phantoms' label values


def _filled(text: str) -> str:
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    assert not re.search(r"<\w+>", text), f"a placeholder this test does not fill: {text}"
    return text


def _card_steps(readme: str) -> tuple[dict, str, list[str]]:
    """The card's fine-tuning section, as printed: the dataset.json entry, the plans file and the nnU-Net commands."""
    section = readme.split("## Fine-tuning with nnU-Net v2\n", 1)[1].split("\n## ", 1)[0]
    entry = json.loads("{" + re.search(r'`("[^"`]+": "[^"`]+")`', section)[1] + "}")
    plans_file = re.search(r"`(\$nnUNet_preprocessed/[^`]+)`", section)[1]
    return entry, plans_file, re.findall(r"`(nnUNetv2_[^`]+)`", section)


def _raw_dataset(raw: Path, phantoms: Path, entry: dict) -> list[str]:
    """nnU-Net's raw layout of Dataset<ID>_<name> from the CT phantoms and their label maps; returns the case names.
    Five cases: fold 0 of nnU-Net's 5-fold split needs at least five. CT only: the one channel is normalised as CT."""
    folder = raw / _filled("Dataset<ID>_<name>")
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    cases = []
    for image in write_phantoms(phantoms, n=10, seed=3, shape=(32, 32, 24)):
        case = image.name.removesuffix(".nii.gz")
        if case.endswith("_ct"):
            image.rename(folder / "imagesTr" / f"{case}_0000.nii.gz")
            image.with_name(f"{case}_label.nii.gz").rename(folder / "labelsTr" / f"{case}.nii.gz")
            cases.append(case)
    dataset = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": len(cases), "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(dataset | entry, indent=1))
    return cases


def _run(command: list[str]) -> None:
    done = subprocess.run([str(BIN / command[0]), *command[1:]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{shlex.join(command)}:\n{(done.stdout + done.stderr)[-3000:]}"


def _train_until(command: list[str], cwd: Path, log: Path, line: str, timeout: float) -> tuple[int, str]:
    """nnU-Net's training (1000 epochs) until its output shows `line`; then it and its data-augmentation workers are
    stopped. Returns its exit status (-SIGKILL: still training when stopped) and its output."""
    with log.open("w") as out:  # a file, not a pipe nobody reads: a full pipe would stall the trainer
        proc = subprocess.Popen(
            [str(BIN / command[0]), *command[1:]], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + timeout
    while line not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: the trainer and its workers, nothing else
    except ProcessLookupError:  # it had ended, workers and all
        pass
    proc.wait()
    return proc.returncode, log.read_text()


def _case_arrays(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.b2nd"))}


def test_the_cards_nnunet_commands_fine_tune_from_the_exported_weights(mim_run, tmp_path, monkeypatch):
    pytest.importorskip("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints")  # its commands' own imports
    pytest.importorskip("nnunetv2.run.run_training")
    import blosc2
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    export = run_export(str(mim_run), str(tmp_path / "export"), export_format="nnunet")
    entry, plans_file, commands = _card_steps((export / "README.md").read_text())
    assert entry == {"overwrite_image_reader_writer": "NibabelIOWithReorient"} and len(commands) == 3
    plan_and_preprocess, preprocess, train = (shlex.split(_filled(c)) for c in commands)
    for folder in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(folder, str(tmp_path / folder))
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")  # the trainer's lines reach its log as they are printed
    cases = _raw_dataset(tmp_path / "nnUNet_raw", tmp_path / "phantoms", entry)
    raw = tmp_path / "nnUNet_raw" / _filled("Dataset<ID>_<name>")

    _run(plan_and_preprocess)  # step 1
    plans_path = Path(os.path.expandvars(_filled(plans_file)))
    planned = PlansManager(str(plans_path))
    # seed 3's CT spacings: the median is coarsest along A-P, so nnU-Net's planner puts that axis first
    assert planned.transpose_forward == [1, 0, 2]
    base = planned.get_configuration("3d_fullres")
    base_data = _case_arrays(plans_path.parent / base.data_identifier)
    assert len(base_data) == 2 * len(cases)  # an image and a segmentation per case

    fragment = json.loads((export / "nnunet_plans_fragment.json").read_text())["plans"]  # step 2, as the card says
    plans = json.loads(plans_path.read_text())
    plans |= {k: v for k, v in fragment.items() if k != "configurations"}
    plans["configurations"] |= fragment["configurations"]
    voxfm_path = plans_path.with_name("nnUNetPlans_voxfm.json")
    assert plans["plans_name"] == voxfm_path.stem
    voxfm_path.write_text(json.dumps(plans, indent=1))
    _run(preprocess)
    voxfm_plans = PlansManager(str(voxfm_path))
    assert voxfm_plans.transpose_forward == [0, 1, 2]  # the axis order the weights were transposed for
    voxfm = voxfm_plans.get_configuration("3d_fullres_voxfm")
    assert voxfm.spacing == [1.5, 1.5, 1.5] != base.spacing and voxfm.patch_size == [32, 32, 32]
    # nnU-Net writes a configuration's data to the folder its data_identifier names: step 2 must leave step 1's alone
    assert _case_arrays(plans_path.parent / base.data_identifier) == base_data, (
        f"nnUNetv2_preprocess -c 3d_fullres_voxfm overwrote 3d_fullres's preprocessed data in {base.data_identifier}"
    )
    for case in cases:  # what the network is fed: [Z, Y, X] of the RAS image, the order the weights were transposed to
        ras = nib.as_closest_canonical(nib.load(raw / "imagesTr" / f"{case}_0000.nii.gz"))
        shape = np.round(np.array(ras.shape[::-1]) * ras.header.get_zooms()[::-1] / voxfm.spacing).astype(int)
        preprocessed = blosc2.open(str(plans_path.parent / voxfm.data_identifier / f"{case}.b2nd"))
        assert preprocessed.shape == (1, *shape), f"{case}: [C, Z, Y, X] at 1.5 mm would be {(1, *shape)}"

    # step 3; -device cpu: nnUNetv2_train's default is cuda, and this runs without a GPU
    status, output = _train_until([*train, "-device", "cpu"], export, tmp_path / "train.log", "train_loss", 300)
    assert status == -signal.SIGKILL, output[-3000:]  # still training when stopped: no error on the way
    assert "Loading pretrained weights from file  nnunet_pretrained.pth" in output
    listed = output.split("overlapping blocks in pretrained model and nnUNet architecture:\n", 1)[1]
    loaded = {line.split(" shape ")[0] for line in listed.split("\n###", 1)[0].splitlines()}
    weights = torch.load(export / "nnunet_pretrained.pth", weights_only=True)["network_weights"]
    assert loaded == {k for k in weights if ".seg_layers." not in k}  # every exported weight but the task head
    assert "Configuration name: 3d_fullres_voxfm" in output and "This split has 4 training and 1 validation" in output
    loss = re.search(r"Epoch 0\n.*?train_loss (\S+)", output, re.S)
    assert loss and np.isfinite(float(loss[1])), output[-3000:]  # nnU-Net's 250 training iterations of epoch 0 ran
