"""Re-processing: put finished studies back in the queue so the running node's worker processes them again.

Outputs of the same study and models get the same UIDs (:func:`samie_node.uids.derive_uid`), so the
new results replace the old ones in the outbox and at the PACS. Only studies that are done or failed are
taken: one still receiving or being processed will be processed anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from samie_node.spool import Spool


@dataclass
class ReprocessSummary:
    """Studies queued again, and those left alone with the reason."""

    queued: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def reprocess(spool: Spool, study_instance_uids: Sequence[str]) -> ReprocessSummary:
    """Queue each done or failed study of ``study_instance_uids`` for processing again."""
    summary = ReprocessSummary()
    for uid in study_instance_uids:
        study = spool.study(uid)
        if study is None:
            summary.skipped.append((uid, "not in the index"))
        elif study.state not in ("done", "failed"):
            summary.skipped.append((uid, f"{study.state}: it will be processed anyway"))
        elif spool.requeue_study(uid):
            summary.queued.append(uid)
    return summary
