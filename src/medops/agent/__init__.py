"""The agent: durable events, the retraining policy, schedules, feeds and notifications."""

from medops.agent.loop import Agent, AgentWorkspace, MonitorJob, request_run, run_summary
from medops.agent.notify import Notification, Notifier, notification_for
from medops.agent.policy import Decision, Outcome, Policy, Verdict
from medops.agent.schedule import Schedule, ScheduledJob, slot_key

__all__ = [
    "Agent",
    "AgentWorkspace",
    "Decision",
    "MonitorJob",
    "Notification",
    "Notifier",
    "Outcome",
    "Policy",
    "Schedule",
    "ScheduledJob",
    "Verdict",
    "notification_for",
    "request_run",
    "run_summary",
    "slot_key",
]
