"""The scheduler with the local engine: chunks, the smallest study first, retries of lost chunks.

The segmenter here is :class:`~engine_fixtures.ThresholdSegmenter` (milliseconds per image): these tests
are about which chunk runs when and how results come back together, not about the masks. The Ray backend
runs the same scheduler (tests/test_ray.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from engine_fixtures import ThresholdSegmenter

from samie_node.config import Settings, load_settings
from samie_node.encode.seg import AlgorithmInfo
from samie_node.engine.backend import ChunkLost, ChunkOutcome, ChunkTask, LocalEngine
from samie_node.engine.models import Models
from samie_node.engine.selection import Candidate
from samie_node.pipeline import load_images
from samie_node.scheduler import Scheduler
from samie_node.testing.sample_studies import ct_series, ultrasound_image, write_datasets


def settings_with(**engine: object) -> Settings:
    return load_settings(None, {"engine": {"device": "cpu", **engine}})


def threshold_models() -> Models:
    segmenter = ThresholdSegmenter()
    algorithm = AlgorithmInfo(segmenter.name, segmenter.version, segmenter.weights_sha256)
    return Models(segmenter, None, algorithm, "cpu")  # type: ignore[arg-type]


def images(paths: list[Path], settings: Settings) -> list[Candidate]:
    return load_images(paths, settings).images


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    datasets, _ = ct_series(slices=6, rows=64, columns=64, seed=21)
    return write_datasets(datasets, tmp_path_factory.mktemp("ct"))


@pytest.fixture(scope="module")
def us(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_datasets([ultrasound_image(rows=64, columns=80, seed=22)[0]], tmp_path_factory.mktemp("us"))


def test_a_small_study_arriving_during_a_large_one_finishes_first(ct: list[Path], us: list[Path]) -> None:
    settings = settings_with(chunk_images=2)
    scheduler = Scheduler(LocalEngine(threshold_models(), settings), settings)
    scheduler.add("ct", images(ct, settings))
    assert scheduler.step(timeout_s=0) == []  # the CT's first chunk ran; two of three remain
    scheduler.add("us", images(us, settings))
    finished = scheduler.step(timeout_s=0)
    assert [f.key for f in finished] == ["us"]  # next chunk: the study with fewest images left
    order = [f.key for _ in range(3) for f in scheduler.step(timeout_s=0)]
    assert order == ["ct"] and len(scheduler) == 0


def test_chunked_results_come_back_in_the_order_of_the_images(ct: list[Path]) -> None:
    whole, chunked = settings_with(chunk_images=100), settings_with(chunk_images=1)
    results = []
    for settings in (whole, chunked):
        scheduler = Scheduler(LocalEngine(threshold_models(), settings), settings)
        scheduler.add("ct", images(ct, settings))
        finished = [f for _ in range(10) for f in scheduler.step(timeout_s=0)]
        assert len(finished) == 1 and finished[0].inference is not None
        results.append(finished[0].inference)
    assert list(results[0].frames) == list(results[1].frames)
    assert [str(d.SOPInstanceUID) for d in results[0].usable] == [str(d.SOPInstanceUID) for d in results[1].usable]
    for key, frame in results[0].frames.items():
        assert (frame.mask() == results[1].frames[key].mask()).all()


class LosingEngine(LocalEngine):
    """The local engine, except that chunks holding ``sop`` come back lost (as from a worker that died)."""

    def __init__(self, models: Models, settings: Settings, sop: str, times: int) -> None:
        super().__init__(models, settings)
        self.sop, self.times = sop, times

    def collect(self, timeout_s: float) -> list[ChunkOutcome]:
        task: ChunkTask | None = self._task
        if task is not None and self.times > 0 and any(i.sop_instance_uid == self.sop for i in task.images):
            self._task, self.times = None, self.times - 1
            return [ChunkLost(task.task_id, "worker died (test)")]
        return super().collect(timeout_s)


def test_a_lost_chunk_is_retried_and_a_chunk_lost_too_often_fails_only_its_study(
    ct: list[Path], us: list[Path]
) -> None:
    settings = settings_with(chunk_images=2, max_chunk_attempts=3)
    ct_images = images(ct, settings)
    lost_once = LosingEngine(threshold_models(), settings, str(ct_images[2].header.SOPInstanceUID), times=1)
    scheduler = Scheduler(lost_once, settings)
    scheduler.add("ct", ct_images)
    finished = [f for _ in range(10) for f in scheduler.step(timeout_s=0)]
    assert [f.key for f in finished] == ["ct"] and finished[0].inference is not None
    assert len(finished[0].inference.usable) == 6  # every image accounted for after the retry
    always_lost = LosingEngine(threshold_models(), settings, str(ct_images[2].header.SOPInstanceUID), times=99)
    scheduler = Scheduler(always_lost, settings)
    scheduler.add("ct", ct_images)
    scheduler.add("us", images(us, settings))
    finished = [f for _ in range(10) for f in scheduler.step(timeout_s=0)]
    outcome = {f.key: f for f in finished}
    assert outcome["us"].inference is not None
    assert outcome["ct"].inference is None and "lost a chunk of this study 3 times" in outcome["ct"].error
