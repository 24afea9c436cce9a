"""Tasks: prompts with gold answers and exact verifiers (synthetic tasks, math datasets)."""

from rlentropy.data.tasks import DataConfig, Example, Task, available_tasks, build_task, register_task

__all__ = ["DataConfig", "Example", "Task", "available_tasks", "build_task", "register_task"]
