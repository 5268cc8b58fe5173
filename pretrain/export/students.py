"""Which network a distillation run's export holds: `model` by default, or one of `objective.loss.students` named by
`voxfm export ... student=<name>` (its config stands in for `model`, its weights are under
`objective.students.<name>.backbone.`)."""

from __future__ import annotations

from voxfm.pretrain.errors import ConfigError


def student_config(config: dict, student: str | None, where: str, export_format: str) -> dict:
    """The stored config with `model` replaced by the named student of a distillation run (`objective.loss.students`,
    built there as `model` is), so that the export is that student's; the config itself without `student`."""
    if not student:
        return config
    students = config["objective"]["loss"].get("students") or {}
    if export_format == "full":
        raise ConfigError(f"student={student}: format=full keeps the whole module, every student in it")
    if not isinstance(students, dict) or student not in students or not isinstance(students[student], dict):
        named = ", ".join(students) if isinstance(students, dict) and students else "none"
        raise ConfigError(f"student={student}: {where} has no such student (objective.loss.students: {named})")
    return {**config, "model": students[student]}
