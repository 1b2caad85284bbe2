"""What the conductor reads: one pinned commit of the repository, handed to it.

The conductor never opens files itself; it reads through this protocol, so every rule of a flow
runs the same over a git commit (``actors.snapshot``) or an in-memory tree (tests).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Snapshot(Protocol):
    commit: str

    def paths(self) -> tuple[str, ...]:
        """Every file in the snapshot: sorted, POSIX, relative to the repository root."""
        ...

    def read(self, path: str) -> bytes | None:
        """A file's bytes, or None when it is not a file inside the snapshot.

        Paths that are absolute, climb with ``..``, or resolve through a link to a place
        outside the tree give None without reading anything.
        """
        ...

    def read_head(self, path: str, limit: int | None) -> tuple[bytes, int] | None:
        """The first ``limit`` bytes of a file (all when None) and its full size, or None as
        ``read`` gives it; a bounded read, so a huge file costs no more than ``limit``."""
        ...

    def size(self, path: str) -> int | None:
        """A file's size in bytes without reading it, or None as ``read`` gives it."""
        ...

    def changed(self) -> tuple[str, ...]:
        """The files this run considers: the diff against the base, the uncommitted changes
        pinned into the commit, the paths given, or (with none of those) every file."""
        ...

    def diff(self) -> str:
        """The unified diff of the considered change, or '' when the run is not about a diff."""
        ...

    def messages(self) -> tuple[str, ...]:
        """Commit messages of the considered change (untrusted text, fenced before use)."""
        ...


class MemorySnapshot:
    """A snapshot held in memory; the reference implementation used by tests."""

    def __init__(
        self,
        files: dict[str, bytes | str],
        *,
        commit: str = "0" * 40,
        changed: tuple[str, ...] | None = None,
        diff: str = "",
        messages: tuple[str, ...] = (),
    ):
        self.commit = commit
        self._files = {
            p: (v.encode() if isinstance(v, str) else v) for p, v in sorted(files.items())
        }
        self._changed = tuple(sorted(changed)) if changed is not None else tuple(self._files)
        self._diff = diff
        self._messages = messages

    def paths(self) -> tuple[str, ...]:
        return tuple(self._files)

    def read(self, path: str) -> bytes | None:
        if path.startswith("/") or ".." in path.split("/"):
            return None
        return self._files.get(path)

    def read_head(self, path: str, limit: int | None) -> tuple[bytes, int] | None:
        data = self.read(path)
        if data is None:
            return None
        return (data if limit is None else data[:limit]), len(data)

    def size(self, path: str) -> int | None:
        data = self.read(path)
        return None if data is None else len(data)

    def changed(self) -> tuple[str, ...]:
        return self._changed

    def diff(self) -> str:
        return self._diff

    def messages(self) -> tuple[str, ...]:
        return self._messages
