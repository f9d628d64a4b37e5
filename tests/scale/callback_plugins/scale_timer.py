# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Wall time of every task of a playbook run, written as JSON lines to $SCALE_TIMER_FILE (make scale)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: scale_timer
type: aggregate
short_description: wall time of every task, as JSON lines (tests/scale)
description:
  - Appends one JSON object per task (play, task, seconds) to the file named by C(SCALE_TIMER_FILE).
requirements:
  - enabled with ANSIBLE_CALLBACKS_ENABLED=scale_timer and ANSIBLE_CALLBACK_PLUGINS=tests/scale/callback_plugins
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    """Times each task from its start to the next task's start (or the end of the run)."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "scale_timer"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self._path = os.environ.get("SCALE_TIMER_FILE")
        self._play = None
        self._current = None

    def _close(self):
        if self._current and self._path:
            play, task, started = self._current
            with open(self._path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"play": play, "task": task, "seconds": round(time.monotonic() - started, 3)}) + "\n")
        self._current = None

    def v2_playbook_on_play_start(self, play):
        self._close()
        self._play = play.get_name()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self._current = (self._play, task.get_name(), time.monotonic())

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats):
        self._close()
