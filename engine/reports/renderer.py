"""The headless Chromium that renders charts as PNG/SVG: one kaleido browser kept for all renders, every step bounded in time.

kaleido's own sync server waits without a limit (a browser that never finishes opening hangs the caller for good), and
its page loads MathJax from a CDN by default. ClinBench owns the browser instead: kaleido runs on an event loop in a
daemon thread, each call from the caller's thread waits at most START_TIMEOUT_S (opening) or RENDER_TIMEOUT_S (one
chart), and a browser that failed or overran is killed and the next render opens a fresh one. The page kaleido renders
in loads only files from this machine (plotly.js from the plotly package, no MathJax: no chart uses LaTeX), so a render
sends nothing anywhere and does not wait on a network.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import os
import signal
import threading

START_TIMEOUT_S = 60.0  # opening the browser: ~2 s on an idle 2-core machine
RENDER_TIMEOUT_S = 60.0  # one chart: ~0.2 s once the browser is open


class RenderTimeout(TimeoutError):
    """The browser did not open, or a chart did not render, within its time."""


class Renderer:
    """One kaleido browser on its own event loop; `render` is safe to call from any thread (one render at a time)."""

    def __init__(self, start_timeout: float = START_TIMEOUT_S, render_timeout: float = RENDER_TIMEOUT_S):
        self.start_timeout, self.render_timeout = start_timeout, render_timeout
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kaleido = None
        self._opening = None  # the browser being opened, so an open that overruns can still be killed

    def render(self, fig, fmt: str, width: int, height: int, scale: float) -> bytes:
        """The figure as `fmt` ('png' or 'svg') bytes. Raises RenderTimeout, or kaleido's error, after closing the browser."""
        opts = {"format": fmt, "width": width, "height": height, "scale": scale}
        with self._lock:
            try:
                if self._kaleido is None:
                    self._kaleido = self._call(self._open(), self.start_timeout, "opening the browser")
                return self._call(self._kaleido.calc_fig(fig, opts=opts), self.render_timeout, "rendering the chart")
            except BaseException:
                self._close()  # a failed or overrun browser is not reused: the next render opens a fresh one
                raise

    def close(self) -> None:
        """Close the browser (kill it if it does not close); the next render opens a new one."""
        with self._lock:
            self._close()

    async def _open(self):
        import kaleido

        browser = kaleido.Kaleido(mathjax=False, timeout=self.render_timeout)  # (no catch_warnings: not thread-safe)
        self._opening = browser
        await browser.open()
        return browser

    def _call(self, coro, timeout: float, what: str):
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="clinbench-renderer", daemon=True).start()
            self._loop = loop
        abandoned = threading.Event()
        future = asyncio.run_coroutine_threadsafe(_settled(coro, abandoned), self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            abandoned.set()
            future.cancel()
            raise RenderTimeout(f"{what} took longer than {timeout:.0f} s") from None

    def _close(self) -> None:
        browser, self._kaleido, self._opening = self._kaleido or self._opening, None, None
        if browser is None:
            return
        try:
            self._call(browser.close(), 15, "closing the browser")
        except BaseException:  # a browser that does not close is killed below
            pass
        _kill(getattr(browser, "subprocess", None))


async def _settled(coro, abandoned: threading.Event):
    """`coro`, except that once the caller has given up on it, how it ends is nobody's news (no "exception never
    retrieved" on stderr from a cancelled open)."""
    try:
        return await coro
    except BaseException:
        if abandoned.is_set():
            return None
        raise


def _kill(process) -> None:
    """Kill a browser process and its children (choreographer starts it as the leader of its own process group)."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
    try:
        process.wait(timeout=5)
    except Exception:  # a zombie is the OS's to reap
        pass


RENDERER = Renderer()
atexit.register(RENDERER.close)
