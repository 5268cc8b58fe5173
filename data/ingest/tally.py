"""What a shard set holds, or a dry run would shard, counted per dataset: inputs by modality and how it was
decided (`modality_source`), label pairs. `voxfm shard` (and its report.json) and `dry_run=true` print these same
lines, so a dry run can be checked against the run that follows it.
"""

from __future__ import annotations

from collections.abc import Iterable

UNDECIDED = "?"  # a dry run's modality for an input whose intensities will decide it


def source_of(meta: dict) -> str:
    """How a sample's modality was decided; shard sets from before `modality_source` say only whether inferred."""
    source = meta.get("modality_source")
    if isinstance(source, str):
        return source
    return "intensities" if meta.get("modality_inferred") else "unrecorded"


def tally(entries: Iterable[tuple[str, str, str, bool]], layouts: dict[str, str]) -> dict:
    """(dataset, modality, modality source, has a label) per input → {"by_dataset": {name: {"layout", "n",
    "modalities": {"MR (bids)": n}, "with_label"}}, "modality_sources": {source: n}}, sorted by name."""
    datasets: dict[str, dict] = {}
    sources: dict[str, int] = {}
    for dataset, modality, source, labelled in entries:
        entry = datasets.setdefault(
            dataset, {"layout": layouts.get(dataset, "plain"), "n": 0, "modalities": {}, "with_label": 0}
        )
        entry["n"] += 1
        key = f"{modality} ({source})"
        entry["modalities"][key] = entry["modalities"].get(key, 0) + 1
        entry["with_label"] += bool(labelled)
        sources[source] = sources.get(source, 0) + 1
    for entry in datasets.values():
        entry["modalities"] = dict(sorted(entry["modalities"].items()))
    return {"by_dataset": dict(sorted(datasets.items())), "modality_sources": dict(sorted(sources.items()))}


def tally_index(index: dict, layouts: dict[str, str]) -> dict:
    """The tally of a shard set's inputs (a 4D series split into frames counts once), from its index."""
    seen, entries = set(), []
    for s in index["samples"]:
        key = (s.get("content_hash"), s.get("source_path"))
        if key in seen:
            continue
        seen.add(key)
        dataset = str(s.get("dataset", ""))
        entries.append((dataset, str(s.get("modality")), source_of(s), bool(s.get("label_path"))))
    return tally(
        entries, {**{str(s.get("dataset", "")): s.get("layout", "plain") for s in index["samples"]}, **layouts}
    )


def format_tally(counts: dict) -> list[str]:
    """One line per dataset, e.g. `Dataset001_Liver (nnunet): 4 inputs: CT (dataset.json) 4; 4 with a label`."""
    lines = []
    for name, entry in counts["by_dataset"].items():
        modalities = ", ".join(f"{k} {n}" for k, n in entry["modalities"].items())
        labelled = f"; {entry['with_label']} with a label" if entry["with_label"] else ""
        lines.append(f"  {name} ({entry['layout']}): {entry['n']} input(s): {modalities}{labelled}")
    return lines


def intensities_warning(counts: dict, decided: bool = True) -> str | None:
    """The line `voxfm shard` ends with when any modality came from intensities alone."""
    n = counts["modality_sources"].get("intensities", 0)
    if not n:
        return None
    when = "was decided" if decided else "will be decided when sharded"
    return (
        f"warning: the modality of {n} input(s) {when} from intensities alone (no manifest column, DICOM tag or "
        "dataset metadata named it): check them with `voxfm inspect`, or give it in a manifest (column modality)"
    )
