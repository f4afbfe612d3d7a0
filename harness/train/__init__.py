"""The training engine a strategy drives: model, data, task, schedules, the loop."""
