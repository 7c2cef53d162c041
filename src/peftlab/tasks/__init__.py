"""Task registry: ``build_task(cfg.task)`` → a configured :class:`Task`.

Each sub-module registers its task class (a task *family*) with ``@TASKS.register(family)``;
``conf/task/*.yaml`` picks the family and the task's own settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from peftlab.registry import Registry
from peftlab.tasks.base import Task, TaskConfig

TASKS: Registry[type[Task]] = Registry("task family", __name__, "task")


def build_task(cfg: Mapping[str, Any]) -> Task:
    """The task described by ``cfg`` with its config validated."""
    return TASKS.build(cfg, "family")


__all__ = ["TASKS", "Task", "TaskConfig", "build_task"]
