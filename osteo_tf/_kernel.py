"""The ``osteo-tf`` Jupyter kernel: ipykernel started with TensorFlow's native logging kept quiet.

TensorFlow's C++ libraries write start-up lines to file descriptor 2 ("oneDNN custom operations
are on", "Could not find cuda drivers", "failed call to cuInit", "All log messages before
absl::InitializeLog() is called are written to STDERR"). ipykernel copies whatever reaches fd 2
both into the notebook and onto the terminal that started the kernel, so ``osteo-tf run`` would
show them once per study. Two mechanisms keep them out:

- :data:`KERNEL_ENV`, the kernelspec's ``env`` (Jupyter sets it for the kernel process, over
  the caller's environment; :func:`main` sets it too when the kernel is started another way),
  so it holds before TensorFlow loads: ``TF_CPP_MIN_LOG_LEVEL=3`` silences TensorFlow's C++ log
  calls made after absl logging is initialised (the cuInit error, the CPU-instructions notice,
  graph warnings). oneDNN stays on: ``TF_ENABLE_ONEDNN_OPTS`` changes numerical results, so it
  is not touched.
- the lines printed while the shared libraries load, before absl logging is initialised, ignore
  every log level. :func:`main` imports TensorFlow once with fd 2 sent to a temporary file, then
  writes back every line that is not such a start-up line (:data:`NATIVE_LOG`), so a real error
  printed during the import still reaches the terminal.

``python -m osteo_tf._kernel -f CONNECTION_FILE`` is the kernelspec's command;
:func:`install_kernel` writes the kernelspec (``make install`` and ``osteo-tf run`` call it).
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence

__all__ = ["DISPLAY_NAME", "KERNEL_ENV", "KERNEL_NAME", "LAUNCHER", "NATIVE_LOG", "import_quietly", "install_kernel",
           "main"]

KERNEL_NAME = "osteo-tf"
DISPLAY_NAME = "Python (osteo-tf)"

KERNEL_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}
"""The kernel process's logging environment, set before TensorFlow loads (the kernelspec's ``env``)."""

NATIVE_LOG = re.compile(
    r"^(?:[IWE]\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] .*"
    r"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.)$"
)
"""One line of TensorFlow's C++ logging (absl format ``I0000 00:00:... file.cc:12] ...``), absl's
pre-initialisation notice, or the CPU-instructions notice's second line."""

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
"""ipykernel's matplotlib backend (figures shown in the notebook), set by :func:`main` when the
environment names none, before TensorFlow (and with it matplotlib) is imported."""

_TCP_NOTICE = "Kernel is running over TCP without encryption"
_SHUTDOWN_INTERRUPT = "KeyboardInterrupt caught in kernel"


class _KernelAppNotices(logging.Filter):
    """Drops two of ipykernel's terminal notices that carry no news for this kernel.

    - "Kernel is running over TCP without encryption", when the kernel listens on loopback only
      (papermill's and a local JupyterLab's kernels);
    - "KeyboardInterrupt caught in kernel", logged when an interrupt reaches the kernel between
      cells: jupyter_client interrupts every kernel it shuts down, so batch runs would print it
      at random at the end of a study. An interrupt during a cell still raises in that cell.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if message.startswith(_SHUTDOWN_INTERRUPT):
            return False
        if not message.startswith(_TCP_NOTICE):
            return True
        app = _kernel_app()
        return not (app is not None and str(getattr(app, "ip", "")) in ("127.0.0.1", "localhost", "::1"))


def _kernel_app():
    from ipykernel.kernelapp import IPKernelApp

    return IPKernelApp.instance() if IPKernelApp.initialized() else None


LAUNCHER = "osteo_tf._kernel"
"""The module the kernelspec runs (``python -m osteo_tf._kernel -f CONNECTION_FILE``)."""


def install_kernel(prefix: str | None = None, *, name: str = KERNEL_NAME) -> str:
    """Write the ``osteo-tf`` kernelspec into ``PREFIX/share/jupyter/kernels/NAME``.

    The spec is ipykernel's own for this interpreter (``ipykernel install --env``, with
    :data:`KERNEL_ENV` as the kernel's environment), with ``ipykernel_launcher`` replaced by this
    module, so the kernel starts through :func:`main`.

    Args:
        prefix: the environment prefix (default ``sys.prefix``, like ``ipykernel install --sys-prefix``).
        name: the kernel's name.

    Returns:
        The folder of the written kernelspec.
    """
    import json

    from ipykernel.kernelspec import install

    path = install(kernel_name=name, display_name=DISPLAY_NAME, prefix=prefix or sys.prefix, env=dict(KERNEL_ENV))
    spec_file = os.path.join(path, "kernel.json")
    with open(spec_file, encoding="utf-8") as fh:
        spec = json.load(fh)
    spec["argv"] = [LAUNCHER if arg == "ipykernel_launcher" else arg for arg in spec["argv"]]
    with open(spec_file, "w", encoding="utf-8") as fh:
        json.dump(spec, fh, indent=1)
        fh.write("\n")
    return path


def import_quietly(module: str = "tensorflow") -> bool:
    """Import ``module`` with fd 2 captured, then write back the lines that are not :data:`NATIVE_LOG`.

    Returns:
        Whether the import succeeded. A failure is not raised here: the notebook's own import
        raises the same error in its cell, where the reader sees it.
    """
    for var, value in KERNEL_ENV.items():
        os.environ.setdefault(var, value)
    sys.stderr.flush()
    saved = os.dup(2)
    ok = False
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            importlib.import_module(module)
            ok = True
        except Exception:  # noqa: BLE001 - re-raised by the notebook's own import
            ok = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("utf-8", errors="replace")
    kept = [ln for ln in text.splitlines(keepends=True) if not NATIVE_LOG.match(ln.rstrip("\r\n"))]
    if kept:
        os.write(2, "".join(kept).encode("utf-8"))
    return ok


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is at the time (in a kernel: the notebook)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _follow_sys_stderr(logger: logging.Logger) -> None:
    """Point the logger's handlers on the process's original stderr at :class:`_CurrentStderr`.

    TensorFlow's Python logger gets its handler while TensorFlow is imported, bound to the
    ``sys.stderr`` of that moment: imported by :func:`main`, before ipykernel replaces
    ``sys.stderr``, it would write its warnings to the terminal (fd 2) instead of the notebook.
    """
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.__stderr__:
            handler.setStream(_CurrentStderr())


def main(argv: Sequence[str] | None = None) -> None:
    """Start the kernel: environment defaults, TensorFlow imported quietly with its Python logger
    writing to the notebook, two of ipykernel's notices filtered (:class:`_KernelAppNotices`),
    then ipykernel's app."""
    if sys.path and sys.path[0] == "":  # as ipykernel_launcher: the cwd is not an import root
        del sys.path[0]
    # `import tensorflow` imports matplotlib.pyplot, which reads MPLBACKEND then: set it first,
    # as ipykernel would before the notebook's first import, or figures are not shown inline.
    if not os.environ.get("MPLBACKEND"):
        os.environ["MPLBACKEND"] = INLINE_BACKEND
    import_quietly("tensorflow")
    _follow_sys_stderr(logging.getLogger("tensorflow"))
    logging.getLogger("IPKernelApp").addFilter(_KernelAppNotices())
    from ipykernel import kernelapp

    kernelapp.launch_new_instance(argv=list(argv) if argv is not None else None)


if __name__ == "__main__":
    main()
