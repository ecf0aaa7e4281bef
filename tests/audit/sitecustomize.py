"""Audits the files every Python process opens (``tests/audit_open.py``) when this folder is on
``PYTHONPATH`` and ``SEPID_AUDIT_OPEN`` names a report folder: each process writes the files it
opened outside the allowed folders to ``<SEPID_AUDIT_OPEN>/<pid>.txt`` when it ends."""

import os

if os.environ.get("SEPID_AUDIT_OPEN"):
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "audit_open", os.path.join(os.path.dirname(os.path.dirname(__file__)), "audit_open.py")
    )
    _audit = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_audit)
    _audit.install(lambda pid: os.path.join(os.environ["SEPID_AUDIT_OPEN"], f"{pid}.txt"))

    def _write_command():
        import sys

        path = os.path.join(os.environ["SEPID_AUDIT_OPEN"], f"{os.getpid()}.cmd")
        with open(path, "w", encoding="utf-8") as fout:  # which process a report is from
            fout.write(" ".join(sys.argv) + "\n")

    import atexit

    atexit.register(_write_command)
