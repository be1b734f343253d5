"""The on-disk engine registry: install, activate, roll back (shared/DESIGN.md, invariant 5).

Layout under ``root`` (``data_dir/engines``)::

    root/TASK/VERSION/            the verified bundle files, never modified after install
    root/TASK/.installed/VERSION.json   who installed it, when, signer, manifest sha256
    root/TASK/active.json         {"version": ..., "history": [older active versions], ...}
    root/audit.jsonl              one JSON line per action (append-only, fsync'd)
    root/.staging/                where installs are assembled; a refused bundle leaves nothing

``install`` stages the bundle, verifies signature and every hash on the staged
copy, checks the compatibility record against this machine and runs the golden
set on the backend that will serve it, then renames the staged directory into
place. ``activate`` and ``rollback`` replace ``active.json`` with ``os.replace``:
a reader sees the old or the new pointer, never a mix, and version directories
are immutable, so a reader never sees a half-written engine. Writers hold an
``flock`` on ``root/.lock``.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.files import atomic_write, fsync_dir
from engines.backends import Engine, load_engine
from engines.bundle import VerifiedBundle, read_golden, stage_bundle, verify_directory
from engines.versions import is_downgrade, newest
from engines.compat import check_compat
from engines.errors import BundleRejected, EngineError, RuntimeMissing
from engines.manifest import MANIFEST_NAME, TASK_RE, VERSION_RE, Manifest, parse_manifest_bytes

__all__ = ["AuditFn", "EngineRecord", "Registry", "golden_error", "run_golden"]

logger = logging.getLogger(__name__)

#: ``(actor, action, subject, detail)``, the signature of ``appliance.state.StateStore.audit``
AuditFn = Callable[[str, str, str, dict[str, Any]], None]
HISTORY_LIMIT = 20
ACTIVE_NAME = "active.json"


@dataclass(frozen=True)
class EngineRecord:
    """One installed version as ``Registry.list`` reports it."""

    task: str
    version: str
    state: str  # active | previous | installed | invalid
    installed_by: str
    installed_at: float
    backend: str
    precision: str
    vendor: str
    demo: bool
    signer: str
    sha256: str


def run_golden(engine: Engine, bundle: VerifiedBundle) -> dict[str, float]:
    """Run the bundle's golden set; return the max abs error per output or raise BundleRejected.

    An engine served by a pool (Triton) runs it on every endpoint it reaches (``infer_each``),
    so no server of the pool answers differently.
    """
    inputs, expected = read_golden(bundle)
    golden = bundle.manifest.golden
    atol, rtol = float(golden.get("atol", 0.0)), float(golden.get("rtol", 0.0))
    each = getattr(engine, "infer_each", None)
    try:
        runs = each(inputs) if each is not None else {engine.backend: engine.infer(inputs)}
    except EngineError as exc:
        raise BundleRejected(f"golden set of {bundle.manifest.key} could not run on {engine.backend}: {exc}") from None
    errors: dict[str, float] = {}
    for where, actual in runs.items():
        for name, want in expected.items():
            err = golden_error(bundle.manifest.key, where, name, actual, want, atol, rtol)
            errors[name] = max(err, errors.get(name, 0.0))
    return errors


def golden_error(key: str, where: str, name: str, actual: dict[str, np.ndarray], want: np.ndarray,
                 atol: float, rtol: float) -> float:
    """Max abs error of output ``name`` against the golden ``want``; BundleRejected naming ``where`` if out of tolerance."""
    if name not in actual:
        raise BundleRejected(f"golden set of {key} expects output {name!r}, which the engine lacks")
    got = actual[name]
    if got.shape != want.shape:
        raise BundleRejected(
            f"golden set failed on {where}: output {name!r} has shape {list(got.shape)}, expected {list(want.shape)}"
        )
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    err = float(np.max(np.abs(got64 - want64))) if got.size else 0.0
    if not np.allclose(got64, want64, atol=atol, rtol=rtol):
        raise BundleRejected(
            f"golden set failed on {where}: output {name!r} differs from the expected values by up to "
            f"{err:.3g} (tolerance atol {atol:g}, rtol {rtol:g})"
        )
    return err


class Registry:
    """Engines installed under ``root``, trusted against the ``*.pub`` keys in ``trusted_keys_dir``.

    ``audit`` (optional) receives every action too, e.g. ``StateStore.audit``.
    ``options`` go to the backends (``device``, ``triton_endpoints``, ``triton_max_inflight``, ``triton_timeout``).
    """

    def __init__(
        self, root: Path, trusted_keys_dir: Path, audit: AuditFn | None = None, **options: Any
    ) -> None:
        self.root = Path(root)
        self.trusted_keys_dir = Path(trusted_keys_dir)
        self._audit_fn = audit
        self.options = options

    # ------------------------------------------------------------------ reading

    def _task_dir(self, task: str) -> Path:
        if not TASK_RE.match(task):
            raise EngineError(f"task {task!r} must match {TASK_RE.pattern}")
        return self.root / task

    def _version_dir(self, task: str, version: str) -> Path:
        if not VERSION_RE.match(version):
            raise EngineError(f"version {version!r} must match {VERSION_RE.pattern}")
        return self._task_dir(task) / version

    def _pointer(self, task: str) -> dict[str, Any]:
        path = self._task_dir(task) / ACTIVE_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"version": None, "history": []}
        except (OSError, ValueError) as exc:
            raise EngineError(f"active pointer {str(path)!r} is unreadable: {exc}") from None
        return data if isinstance(data, dict) else {"version": None, "history": []}

    def tasks(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and TASK_RE.match(p.name))

    def versions(self, task: str) -> list[str]:
        task_dir = self._task_dir(task)
        if not task_dir.is_dir():
            return []
        return sorted(p.name for p in task_dir.iterdir() if p.is_dir() and VERSION_RE.match(p.name))

    def active_version(self, task: str) -> str | None:
        """The active version of ``task`` (one small file read: cheap to poll)."""
        version = self._pointer(task).get("version")
        return str(version) if version else None

    def active_versions(self) -> dict[str, str]:
        """Task -> active version; {} when nothing is installed or the root does not exist."""
        result = {}
        for task in self.tasks():
            version = self.active_version(task)
            if version:
                result[task] = version
        return result

    def list(self) -> list[EngineRecord]:
        """Every installed version with its state and who installed it when."""
        records = []
        for task in self.tasks():
            pointer = self._pointer(task)
            history = pointer.get("history") or []
            for version in self.versions(task):
                state = "installed"
                if version == pointer.get("version"):
                    state = "active"
                elif history and version == history[-1]:
                    state = "previous"
                meta = self._installed_meta(task, version)
                try:
                    manifest = Manifest.from_dict(parse_manifest_bytes((self.root / task / version / MANIFEST_NAME).read_bytes()))
                    backend, precision, vendor, demo = manifest.backend_name, manifest.precision, manifest.vendor, manifest.demo
                except (OSError, EngineError):
                    state, backend, precision, vendor, demo = "invalid", "", "", "", False
                records.append(EngineRecord(
                    task=task, version=version, state=state, installed_by=str(meta.get("actor", "")),
                    installed_at=float(meta.get("at", 0.0)), backend=backend, precision=precision,
                    vendor=vendor, demo=demo, signer=str(meta.get("signer", "")), sha256=str(meta.get("sha256", "")),
                ))
        return records

    def _installed_meta(self, task: str, version: str) -> dict[str, Any]:
        try:
            data = json.loads((self.root / task / ".installed" / f"{version}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def verify_installed(self, task: str, version: str) -> VerifiedBundle:
        """Re-verify an installed version's signature and every hash (tampering on disk is refused)."""
        path = self._version_dir(task, version)
        if not path.is_dir():
            installed = ", ".join(self.versions(task)) or "none"
            raise EngineError(f"{task} version {version!r} is not installed; installed: {installed}")
        bundle = verify_directory(path, self.trusted_keys_dir)
        if (bundle.manifest.task, bundle.manifest.version) != (task, version):
            raise BundleRejected(f"{path} holds {bundle.manifest.key}, not {task}/{version}")
        return bundle

    def active_manifest(self, task: str) -> Manifest | None:
        """The manifest of the active version of ``task`` as installed (not re-verified: for scheduling only)."""
        version = self.active_version(task)
        if version is None:
            return None
        try:
            data = parse_manifest_bytes((self._version_dir(task, version) / MANIFEST_NAME).read_bytes())
            return Manifest.from_dict(data)
        except (OSError, EngineError):
            return None

    def load_active(self, task: str, cpu_threads: int = 0, device: str | None = None) -> Engine:
        """Verify and load the active engine of ``task``; RuntimeMissing if its runtime is absent.

        ``device`` (``"cpu"``, ``"cuda:N"``) overrides the registry's ``device`` option: the
        scheduling slot that will run it.
        """
        version = self.active_version(task)
        if version is None:
            installed = ", ".join(self.versions(task)) or "none"
            raise EngineError(f"no active engine for task {task!r} (installed versions: {installed})")
        bundle = self.verify_installed(task, version)
        options = dict(self.options)
        if device is not None:
            options["device"] = device
        check_compat(bundle.manifest, **options)
        return load_engine(bundle.root, bundle.manifest, cpu_threads=cpu_threads, **options)

    # ------------------------------------------------------------------ writing

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _audit(self, actor: str, action: str, subject: str, detail: dict[str, Any]) -> None:
        line = json.dumps({"at": time.time(), "actor": actor, "action": action, "subject": subject, "detail": detail},
                          sort_keys=True)
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "audit.jsonl", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if self._audit_fn is not None:
            try:
                self._audit_fn(actor, action, subject, detail)
            except Exception:  # the jsonl line is written; never undo an action over a side channel
                logger.exception("audit callback failed for %s %s", action, subject)

    def install(self, bundle_path: Path, actor: str, allow_downgrade: bool = False) -> Manifest:
        """Verify, check compatibility, run the golden set, then install; refuse leaving nothing behind.

        A version older than the newest installed one of its task is refused unless
        ``allow_downgrade`` (then audited with ``downgrade_from``).
        """
        bundle_path = Path(bundle_path)
        try:
            with self._locked():
                return self._install(bundle_path, actor, allow_downgrade)
        except EngineError as exc:
            self._audit(actor, "engine_install_refused", bundle_path.name, {"reason": str(exc)})
            logger.warning("refused bundle %s: %s", bundle_path.name, exc)
            raise

    def _downgrade_from(self, task: str, version: str, over: str | None, allow: bool) -> str | None:
        """The newer version ``version`` would replace (None: no downgrade); refused unless ``allow``."""
        if over is None or not is_downgrade(version, over):
            return None
        if not allow:
            raise BundleRejected(
                f"{task}/{version} is older than {task}/{over}: versions of a task only move forward; "
                "force a downgrade with --allow-downgrade (web: allow_downgrade=1), which is audited"
            )
        logger.warning("downgrade of %s from %s to %s forced", task, over, version)
        return over

    def _install(self, bundle_path: Path, actor: str, allow_downgrade: bool = False) -> Manifest:
        staging_root = self.root / ".staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="install-", dir=staging_root))
        try:
            bundle = stage_bundle(bundle_path, staging / "bundle", self.trusted_keys_dir)
            manifest = bundle.manifest
            target = self._version_dir(manifest.task, manifest.version)
            if target.exists():
                existing = self.verify_installed(manifest.task, manifest.version).manifest
                if existing.sha256 == manifest.sha256:
                    logger.info("%s is already installed with the same manifest", manifest.key)
                    return existing
                raise BundleRejected(
                    f"{manifest.key} is already installed with a different manifest "
                    f"({existing.sha256[:12]}… vs {manifest.sha256[:12]}…); give the new bundle a new version"
                )
            newest_installed = newest(self.versions(manifest.task))
            downgrade_from = self._downgrade_from(manifest.task, manifest.version, newest_installed, allow_downgrade)
            try:
                check_compat(manifest, **self.options)
            except RuntimeMissing as exc:
                raise BundleRejected(f"refused: {exc}") from None
            engine = load_engine(bundle.root, manifest, **self.options)
            try:
                errors = run_golden(engine, bundle)
            finally:
                engine.close()
            meta = {"actor": actor, "at": time.time(), "signer": bundle.signer, "sha256": manifest.sha256,
                    "source": bundle_path.name, "golden_max_abs_error": errors}
            meta_dir = target.parent / ".installed"
            meta_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(meta_dir / f"{manifest.version}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
            os.rename(bundle.root, target)
            fsync_dir(target.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._audit(actor, "engine_install", manifest.key, {
            "sha256": manifest.sha256, "signer": bundle.signer, "backend": manifest.backend_name,
            "precision": manifest.precision, "golden_max_abs_error": errors,
            **({"downgrade_from": downgrade_from} if downgrade_from else {}),
        })
        logger.info("installed %s (%s, %s) signed by %s", manifest.key, manifest.backend_name, manifest.precision,
                    bundle.signer)
        return manifest

    def _write_pointer(self, task: str, version: str, history: builtins.list[str], actor: str) -> None:
        data = {"version": version, "history": history[-HISTORY_LIMIT:], "actor": actor, "at": time.time()}
        atomic_write(self._task_dir(task) / ACTIVE_NAME, json.dumps(data, sort_keys=True).encode("utf-8"))

    def activate(self, task: str, version: str, actor: str, allow_downgrade: bool = False) -> None:
        """Make ``version`` the active engine of ``task`` (atomic pointer swap; the old one kept for rollback).

        Activating a version older than the active one is refused unless ``allow_downgrade``.
        """
        with self._locked():
            self.verify_installed(task, version)
            pointer = self._pointer(task)
            previous = pointer.get("version")
            downgrade_from = self._downgrade_from(task, version, previous if isinstance(previous, str) else None,
                                                  allow_downgrade)
            history = [v for v in (pointer.get("history") or []) if isinstance(v, str)]
            if previous == version:
                self._audit(actor, "engine_activate", f"{task}/{version}", {"previous": previous, "unchanged": True})
                return
            if previous:
                history.append(previous)
            self._write_pointer(task, version, history, actor)
        self._audit(actor, "engine_activate", f"{task}/{version}",
                    {"previous": previous, **({"downgrade_from": downgrade_from} if downgrade_from else {})})
        logger.info("activated %s/%s (previous %s)", task, version, previous)

    def rollback(self, task: str, actor: str) -> str:
        """Return ``task`` to the version active before the current one; returns that version."""
        with self._locked():
            pointer = self._pointer(task)
            current = pointer.get("version")
            history = [v for v in (pointer.get("history") or []) if isinstance(v, str)]
            while history and not self._version_dir(task, history[-1]).is_dir():
                history.pop()
            if not history:
                raise EngineError(f"no previous version of {task!r} to roll back to (active: {current or 'none'})")
            target = history.pop()
            self.verify_installed(task, target)
            self._write_pointer(task, target, history, actor)
        self._audit(actor, "engine_rollback", f"{task}/{target}", {"from": current})
        logger.info("rolled back %s from %s to %s", task, current, target)
        return target
