"""worldmodel.recording: `root` only ever holds what was committed; a rerun repairs what a hard kill left."""

import pytest

from worldmodel.recording import CommittedDataset, recover, siblings


def test_recover_restores_a_half_done_swap_and_drops_the_unfinished_copy(tmp_path):
    root = tmp_path / "ds"
    work, old = siblings(root)
    old.mkdir()
    (old / "committed").write_text("episodes 0-3")
    work.mkdir()
    (work / "torn").write_text("episode 4, half written")
    recover(root)  # killed between root -> old and copy -> root
    assert (root / "committed").read_text() == "episodes 0-3"
    assert not old.exists() and not work.exists()
    old.mkdir()
    recover(root)  # killed after both renames, before the old version was deleted
    assert (root / "committed").exists() and not old.exists()


class FakeDataset:
    """Stands in for a LeRobotDataset: episodes are files, finalize marks the folder readable."""

    def __init__(self, path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.meta = type("Meta", (), {"total_episodes": len(list(path.glob("episode_*")))})()

    def add_frame(self, frame):
        self.frames = getattr(self, "frames", []) + [frame]

    def save_episode(self):
        (self.path / f"episode_{self.meta.total_episodes}").write_text(str(len(self.frames)))
        self.meta.total_episodes += 1
        self.frames = []

    def clear_episode_buffer(self):
        self.frames = []

    def finalize(self):
        (self.path / "meta").mkdir(exist_ok=True)
        (self.path / "meta" / "info.json").write_text("{}")


def test_episodes_reach_root_only_by_commits(tmp_path):
    root = tmp_path / "ds"
    recording = CommittedDataset(root, FakeDataset, commit_every=2)
    assert recording.write([{"x": 1}], "t") == 0
    recording.commit_if_due()
    assert not root.exists()  # one episode waits in the working copy
    assert recording.write([{"x": 1}, {"x": 2}], "t") == 1
    recording.commit_if_due()
    assert sorted(p.name for p in root.glob("episode_*")) == ["episode_0", "episode_1"]
    assert recording.write([{"x": 1}], "t") == 2  # the next copy starts from what was committed
    again = CommittedDataset(root, FakeDataset, commit_every=2)  # a new writer: the uncommitted episode is gone
    assert again.total_episodes == 2 and len(list(root.glob("episode_*"))) == 2
    with pytest.raises(ValueError, match="commit_every"):
        CommittedDataset(root, FakeDataset, commit_every=0)
