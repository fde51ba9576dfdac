"""LeRobotDatasets that survive a hard kill: `root` only ever holds a finalised dataset.

A LeRobotDataset is only readable once `finalize()` has closed its parquet files, so a writer killed with
-9 mid-way leaves a folder lerobot cannot open. Here episodes go into a working copy beside `root`
(<root>.recording); every `commit_every` episodes the copy is finalised and swapped in by two renames
(root -> <root>.old, copy -> root). A hard kill therefore loses at most the episodes of the unfinished
copy, and the next writer drops that copy, restores a half-done swap and continues from what `root`
holds. Files that must agree with the episodes (a ledger of finished jobs) are written into the working
copy (`CommittedDataset.folder`) and are committed with them.

Used by the MetaWorld recorder (data/metaworld/record.py), `wm imagine` and teleop recording.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from worldmodel.dataset import write_episode


def siblings(root: Path) -> tuple[Path, Path]:
    """The working copy and the previous version of `root` during a swap."""
    return root.with_name(root.name + ".recording"), root.with_name(root.name + ".old")


def recover(root: Path) -> None:
    """Bring `root` back to its last committed state after a hard kill."""
    work, old = siblings(root)
    if not root.exists() and old.exists():  # killed between the two renames of a commit
        old.rename(root)
    shutil.rmtree(old, ignore_errors=True)
    if work.exists():
        print(f"{work}: dropping the episodes a hard kill left unfinalised")
        shutil.rmtree(work)


class CommittedDataset:
    """Writes whole episodes through lerobot into a working copy and commits it every `commit_every` episodes.

    open_dataset(path) opens the LeRobotDataset at `path`, or creates it there when the folder does not hold
    one yet (the caller checks features); it is called on the working copy only."""

    def __init__(self, root, open_dataset: Callable, commit_every: int):
        if commit_every < 1:
            raise ValueError(f"commit_every: expected >= 1, got {commit_every}")
        self.root = Path(root)
        self.work, _ = siblings(self.root)
        self.open_dataset, self.commit_every = open_dataset, commit_every
        recover(self.root)
        self.dataset = None  # the working copy's LeRobotDataset while it is open
        self.uncommitted = 0

    @property
    def folder(self) -> Path:
        """Where files committed with the episodes go: the working copy (opened on first use)."""
        self.open()
        return self.work

    @property
    def total_episodes(self) -> int:
        return self.open().meta.total_episodes

    def open(self):
        """The working copy: everything committed so far, ready for more episodes."""
        if self.dataset is None:
            if (self.root / "meta" / "info.json").exists():
                shutil.copytree(self.root, self.work)
            self.dataset = self.open_dataset(self.work)
        return self.dataset

    def write(self, frames, task: str) -> int:
        """One whole episode (see `write_episode`); commits when `commit_every` are waiting. -> its index."""
        dataset = self.open()
        index = dataset.meta.total_episodes
        write_episode(dataset, frames, task)
        self.uncommitted += 1
        return index

    def commit_if_due(self) -> None:
        if self.uncommitted >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """Finalise the working copy and swap it in (also with nothing new: companion files may have changed)."""
        if self.dataset is None:
            return
        self.dataset.finalize()
        self.dataset = None
        _, old = siblings(self.root)
        if self.root.exists():
            self.root.rename(old)
        self.work.rename(self.root)
        shutil.rmtree(old, ignore_errors=True)
        self.uncommitted = 0
