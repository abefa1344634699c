"""Fault tests with real servers (issue 7). Each is bounded in time.

The "kill -9 a runner mid-training" fault lives with the runner's resume
tests: tests/e2e/test_resume.py::test_kill_9_then_a_second_runner_finishes_from_the_checkpoint
(a second runner finishes the task, exactly one task.completed).
"""
