"""Ctrl-C stops sampling at the next step, also in the worker threads that run Snakemake's jobs.

With the profile's force-use-threads, jobs run in threads of the Snakemake process; SIGINT raises KeyboardInterrupt
in the main thread only, and Snakemake then waits for running jobs to finish ("this might take some time"). The
handler installed here also sets STOP, which every sampling step checks, so an interrupted job ends within one
denoiser call and writes nothing (outputs are written atomically).
"""

import signal
import threading

STOP = threading.Event()


class Interrupted(KeyboardInterrupt):
    pass


def install(signum: int = signal.SIGINT) -> None:
    """In the main thread: on SIGINT (or `signum`) set STOP, then do what the signal did before (Snakemake's own
    handling). The Snakefile installs it for SIGINT as it is parsed, and for SIGTERM once Snakemake's scheduler has
    set its own SIGTERM handler (onstart), so that a plain kill also stops the jobs at their next step.

    An ignored SIGINT (a build that a script started in the background, `snakemake ... &`) stays ignored: there
    Snakemake's scheduler would not stop, and it drops a job that raised KeyboardInterrupt without waking up, so a
    stopped job would leave the build waiting for ever."""
    previous = signal.getsignal(signum)
    if threading.current_thread() is not threading.main_thread() or previous == signal.SIG_IGN:
        return
    if signum != signal.SIGINT and not callable(previous):
        return  # only chained in front of a handler (Snakemake's): the default action of SIGTERM stays as it is

    def handler(signum, frame):
        STOP.set()
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise KeyboardInterrupt

    signal.signal(signum, handler)


def check() -> None:
    """Raise Interrupted if Ctrl-C was pressed."""
    if STOP.is_set():
        raise Interrupted("interrupted by Ctrl-C: nothing was written")
