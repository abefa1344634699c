"""Typed application keys shared by the gateway's route modules."""

from __future__ import annotations

from aiohttp import web
from nats.js import JetStreamContext

from infra.kv import TaskRepo
from infra.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
JS = web.AppKey("js", JetStreamContext)
TASKS = web.AppKey("tasks", TaskRepo)
CONNECTED = web.AppKey("connected", object)
