import pytest

from billing.adapters.memory import InMemoryStore, ManualClock, RecordingNotifier
from billing.domain.errors import StoreUnavailable, TransientConflict
from billing.ports import UnitOfWork
from billing.use_cases._unit import UnitRunner


def test_a_lost_race_reruns_the_whole_unit_and_publishes_only_the_committed_run():
    runner = UnitRunner(InMemoryStore(), ManualClock(), notifier := RecordingNotifier())
    runs: list[int] = []

    def work(unit: UnitOfWork) -> str:
        runs.append(len(runs))
        unit.events.append(f"event {len(runs)}")  # type: ignore[arg-type]
        if len(runs) < 3:
            raise TransientConflict("serialization failure")
        return "done"

    assert runner.run(work) == "done"
    assert runs == [0, 1, 2]
    assert notifier.published == ["event 3"]


def test_a_unit_that_keeps_losing_gives_up_as_store_unavailable():
    runner = UnitRunner(InMemoryStore(), ManualClock(), RecordingNotifier(), max_attempts=2)

    def work(unit: UnitOfWork) -> None:
        raise TransientConflict("deadlock")

    with pytest.raises(StoreUnavailable, match="retry"):
        runner.run(work)


def test_an_uncommitted_unit_leaves_nothing_behind():
    store = InMemoryStore()
    with store() as unit:
        unit.accounts.save(unit.accounts.lock("alice"))
    with store(read_only=True) as unit:
        assert unit.accounts.get("alice") is None
