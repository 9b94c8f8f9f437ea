"""Background jobs for the web app: one heavy (GPU) job at a time across every session, with progress, messages,
per-epoch records and cancellation. The job itself is an engine stage; this module only runs and watches it."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from ..engine.context import Hooks
from ..errors import UserError

log = logging.getLogger("air_app.ui")


@dataclass
class Job:
    name: str
    workspace: str
    fn: Callable[[Hooks], Any]
    state: str = "running"  # running | done | failed | cancelled
    progress: tuple[str, int, int] | None = None
    messages: list[str] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    result: Any = None
    error: str | None = None
    started: float = field(default_factory=time.time)
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def hooks(self) -> Hooks:
        return Hooks(say=self.messages.append, progress=lambda what, d, t: setattr(self, "progress", (what, d, t)),
                     should_stop=self.stop.is_set, on_epoch=self.epochs.append)

    def run(self) -> None:
        try:
            self.result = self.fn(self.hooks())
            self.state = "done"
        except UserError as exc:
            self.state, self.error = "failed", str(exc)
        except InterruptedError:
            self.state = "cancelled"
        except Exception as exc:  # a bug: keep the traceback in the server log, show one line in the page
            log.error("job %s failed:\n%s", self.name, traceback.format_exc())
            self.state, self.error = "failed", f"{self.name} failed: {type(exc).__name__}: {exc}"
        finally:
            self.done.set()

    def status(self) -> str:
        """A short Markdown status line for the page."""
        elapsed = time.time() - self.started
        if self.state == "running":
            line = f"**{self.name}** running ({elapsed:.0f} s)"
            if self.progress:
                what, d, t = self.progress
                line += f" — {what} {d}/{t}"
        elif self.state == "done":
            line = f"**{self.name}** finished in {elapsed:.0f} s" + (f": {self.result}" if isinstance(self.result, str)
                                                                     else "")
        elif self.state == "cancelled":
            line = f"**{self.name}** cancelled — the workspace is consistent; start it again to resume"
        else:
            line = f"**{self.name}** failed: {self.error}"
        tail = [m for m in self.messages[-3:]]
        return line + ("\n\n" + "\n\n".join(f"`{m}`" for m in tail) if tail else "")


class JobSlot:
    """The shared queue slot: at most one heavy job runs in this process, whatever the session or workspace."""

    def __init__(self):
        self._lock = threading.Lock()
        self.current: Job | None = None

    def start(self, name: str, workspace: str, fn: Callable[[Hooks], Any]) -> Job:
        with self._lock:
            cur = self.current
            if cur is not None and not cur.done.is_set():
                where = "this workspace" if cur.workspace == workspace else f"workspace {cur.workspace}"
                raise UserError(f"another job is running ({cur.name} on {where}); wait for it to finish or cancel it "
                                "before starting a new one")
            job = Job(name, workspace, fn)
            self.current = job
        threading.Thread(target=job.run, name=f"air-job-{name}", daemon=True).start()
        return job

    def running(self, workspace: str | None = None) -> Job | None:
        cur = self.current
        if cur is None or cur.done.is_set():
            return None
        return cur if workspace is None or cur.workspace == workspace else None

    def cancel(self, workspace: str) -> bool:
        cur = self.running(workspace)
        if cur is None:
            return False
        cur.stop.set()
        return True


SLOT = JobSlot()
