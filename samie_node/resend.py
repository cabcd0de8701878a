"""Re-sending results: pick outputs from the outbox by study, accession, date or state, queue them again
(to their own destination or another one) and deliver them now."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from samie_node.config import DicomwebPeer, Peer
from samie_node.net.send import Sender
from samie_node.spool import OutputRecord, Spool


@dataclass
class ResendSummary:
    """What a resend did; ``failed`` counts outputs left retrying or dead."""

    sent: int = 0
    failed: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (sop_instance_uid, destination, error)


def resend(
    spool: Spool,
    sender: Sender,
    outputs: Sequence[OutputRecord],
    *,
    to: Peer | DicomwebPeer | None = None,
    progress: Callable[[int], None] | None = None,
) -> ResendSummary:
    """Queue ``outputs`` again and deliver them, one association per destination.

    Nothing is lost: an output that cannot be delivered stays in the outbox (retrying or dead) with its
    file.
    """
    summary = ResendSummary()
    if not outputs:
        return summary
    spool.requeue_outputs([o.id for o in outputs], destination=to.label if to is not None else None)
    wanted = {(o.sop_instance_uid, to.label if to is not None else o.destination) for o in outputs}
    queued = [o for o in spool.select_outputs(states=["pending"]) if (o.sop_instance_uid, o.destination) in wanted]
    by_destination: dict[str, list[OutputRecord]] = {}
    for output in queued:
        by_destination.setdefault(output.destination, []).append(output)
    for destination, group in by_destination.items():
        counts = sender.deliver(destination, group)
        summary.sent += counts.sent
        summary.failed += counts.retrying + counts.dead
        if progress is not None:
            progress(len(group))
    sent_ids = {o.id for o in spool.select_outputs(states=["sent"])}
    for output in queued:
        if output.id not in sent_ids:
            current = next((o for o in spool.outputs(output.study_instance_uid) if o.id == output.id), output)
            summary.failures.append((output.sop_instance_uid, output.destination, current.last_error))
    return summary
