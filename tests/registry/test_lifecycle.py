"""Sign-off against a real MLflow registry (SQLite) and the real state store."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from medops.errors import ConfigError, NotFoundError, SignOffError
from medops.pipeline import PipelineRunner
from medops.project import Project
from medops.registry import AUTO_ACTOR, CHAMPION, ModelLifecycle
from medops.registry.lifecycle import parse_time

from ..conftest import TRAINED_OVERRIDES, TrainedProject

pytestmark = pytest.mark.slow

US = timedelta(microseconds=1)


def _lifecycle(trained: TrainedProject, name: str, versions: int) -> ModelLifecycle:
    return ModelLifecycle(trained.new_model(name, versions), trained.project.state)


def _champion(lc: ModelLifecycle) -> str | None:
    info = lc.registry.by_alias(CHAMPION)
    return info.version if info else None


def test_approve_reject_rollback_move_the_alias_and_answer_live_at_t(
        trained_project: TrainedProject) -> None:
    lc = _lifecycle(trained_project, "lc-main", 3)
    state = trained_project.project.state
    before = datetime.now().astimezone()
    assert lc.live_at(before) is None and _champion(lc) is None

    d1 = lc.approve("1", "alice", "reviewed on the site test set")
    assert _champion(lc) == "1"
    tags = lc.registry.get("1").tags
    assert tags["approval"] == "approved" and tags["approved_by"] == "alice"
    assert parse_time(tags["approved_at"]) == d1.live_from
    audit = state.audit_log(target="lc-main/1")[0]
    assert (audit.action, audit.actor, audit.details["note"]) == \
        ("model.approved", "alice", "reviewed on the site test set")

    d2 = lc.approve("2", "bob", "better AUC")
    assert _champion(lc) == "2"

    # The live champion cannot be rejected; another version can.
    with pytest.raises(SignOffError, match="roll back first"):
        lc.reject("2", "carol", "not convinced")
    assert lc.registry.get("2").tags["approval"] == "approved"
    rejected = lc.reject("3", "carol", "fails on AP views")
    assert rejected.tags["approval"] == "rejected" and rejected.tags["rejected_by"] == "carol"
    assert state.audit_log(target="lc-main/3")[0].action == "model.rejected"

    # Back to the version live before the current one.
    d3 = lc.rollback("dave", "drift on v2")
    assert _champion(lc) == "1" and d3.version == "1" and d3.action == "rollback"
    assert state.audit_log(target="lc-main/1")[0].action == "model.rolled_back"

    history = lc.history()
    assert [(d.version, d.action, d.actor) for d in history] == \
        [("1", "approve", "alice"), ("2", "approve", "bob"), ("1", "rollback", "dave")]
    assert history[0].live_until == d2.live_from and history[1].live_until == d3.live_from
    assert history[2].live_until is None

    # Which version was live at time T, on both sides of every boundary.
    assert lc.live_at(d1.live_from - US) is None
    assert lc.live_at(d1.live_from).version == "1"  # type: ignore[union-attr]
    assert lc.live_at(d2.live_from - US).version == "1"  # type: ignore[union-attr]
    assert lc.live_at(d2.live_from).version == "2"  # type: ignore[union-attr]
    assert lc.live_at(d3.live_from - US).version == "2"  # type: ignore[union-attr]
    assert lc.live_at(d3.live_from + timedelta(days=1)).version == "1"  # type: ignore[union-attr]
    # A naive time is UTC.
    naive = (d2.live_from + US).replace(tzinfo=None)
    assert lc.live_at(naive).version == "2"  # type: ignore[union-attr]

    # Every champion move is an event the server and the agent can react to.
    deployed = [e.payload for e in state.event_log("model.deployed")
                if e.payload["name"] == "lc-main"]
    assert [(p["version"], p["previous"], p["action"]) for p in reversed(deployed)] == \
        [("1", None, "approve"), ("2", "1", "approve"), ("1", "2", "rollback")]
    approved = [e.payload["version"] for e in state.event_log("model.approved")
                if e.payload["name"] == "lc-main"]
    assert sorted(approved) == ["1", "2"]

    # Approving the live champion again changes nothing.
    assert lc.approve("1", "alice", "again").id == d3.id and len(lc.history()) == 3
    # The next rollback skips rejected v3 and goes to v2, the one live before.
    assert lc.rollback("dave", "v2 was fine after all").version == "2"


def test_refused_sign_offs_say_why(trained_project: TrainedProject) -> None:
    lc = _lifecycle(trained_project, "lc-refusals", 3)
    with pytest.raises(NotFoundError, match="no version '9'"):
        lc.approve("9", "alice", "typo")
    with pytest.raises(SignOffError, match="no live champion"):
        lc.rollback("alice", "nothing is live")
    with pytest.raises(ConfigError, match="--by"):
        lc.approve("1", "  ", "a note")
    with pytest.raises(ConfigError, match="--note"):
        lc.approve("1", "alice", "")
    lc.approve("1", "alice", "first")
    with pytest.raises(SignOffError, match="no earlier live version"):
        lc.rollback("alice", "only one ever live")
    with pytest.raises(SignOffError, match="never live"):
        lc.rollback("alice", "skip the review", to="2")
    lc.approve("2", "alice", "second")
    lc.reject("1", "bob", "found a problem")
    with pytest.raises(SignOffError, match="was rejected"):
        lc.rollback("alice", "back", to="1")
    with pytest.raises(SignOffError, match="already the live champion"):
        lc.rollback("alice", "back", to="2")
    assert _champion(lc) == "2" and len(lc.history()) == 2


def test_versions_show_metrics_approval_and_live(trained_project: TrainedProject) -> None:
    lc = _lifecycle(trained_project, "lc-listing", 2)
    d = lc.approve("2", "alice", "ok")
    listing = {v.info.version: v for v in lc.versions()}
    assert listing["2"].live and listing["2"].live_since == d.live_from
    assert not listing["1"].live and listing["1"].approval == "pending"
    assert listing["2"].approval == "approved"
    expected = float(trained_project.project.registry.get("1").tags["test_auc"])
    assert listing["1"].metrics["test_auc"] == pytest.approx(expected)
    as_json = listing["2"].to_dict()
    assert as_json["live"] is True and as_json["approved_by"] == "alice"


def test_auto_approval_promotes_at_the_register_step(trained_project: TrainedProject) -> None:
    project = Project.load(trained_project.project.root, {
        **TRAINED_OVERRIDES, "registry.approval": "auto", "registry.name": "lc-auto"})
    record = PipelineRunner(project).run()  # reuses the finished checkpoint: no retraining
    register = next(s for s in record.steps if s.name == "register").outputs
    assert register["registered"] and register["approval"] == "approved"
    assert project.registry.by_alias(CHAMPION).version == register["version"]  # type: ignore[union-attr]
    (live,) = project.state.deployments("lc-auto")
    assert live.actor == AUTO_ACTOR and live.action == "auto-approve"
    assert "passed the gate" in live.note
    assert project.registry.get(register["version"]).tags["approved_by"] == AUTO_ACTOR
