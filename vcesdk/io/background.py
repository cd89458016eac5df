"""A writer thread: slices handed over while the synthesis still runs are written behind it."""
from __future__ import annotations

import queue
import threading
from typing import Callable

import numpy as np

_STOP = object()


class SliceWriterThread:
    """Runs ``write(k0, hu)`` for each handed-over run of slices in a thread of its own, in
    the order they were handed over.

    Pydicom encodes and writes a slice while the model runs (ONNX Runtime releases the GIL), so
    the files of a series are on disk when the last window is done. The first error stops the
    thread; the next :meth:`put` or :meth:`close` raises it in the caller.

    Args:
        write: e.g. :meth:`vcesdk.io.dicom.DicomSeriesWriter.write`.
    """

    def __init__(self, write: Callable[[int, np.ndarray], object]) -> None:
        self._write = write
        self._queue: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._cancel = False
        self._thread = threading.Thread(target=self._run, name="vcesdk-slice-writer",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is None and not self._cancel:
                try:
                    self._write(*item)
                except BaseException as exc:  # handed to the caller by put() / close()
                    self._error = exc

    def put(self, k0: int, hu: np.ndarray) -> None:
        """Queue slices k0 .. k0 + n - 1. `hu` is not copied: the caller must not change it
        afterwards (the runtime hands over views of finished slices of its result, which are
        never written again, so the queue costs no memory of its own).

        Raises:
            Exception: the error a previous write raised.
        """
        if self._error is not None:
            raise self._error
        self._queue.put((int(k0), hu))

    def close(self, cancel: bool = False) -> None:
        """Wait until every queued slice is written (`cancel`: skip those not yet written, for
        an output that is being abandoned).

        Raises:
            Exception: the error a write raised.
        """
        self._cancel = cancel
        self._queue.put(_STOP)
        self._thread.join()
        if self._error is not None:
            raise self._error
