"""The structure profiles of LiteMedSAM's automatic mode: when a decoded mask counts as a structure, per
modality family (``[segmenter.profiles.*]`` of the config; :mod:`samie_node.engine.structures` measures).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StructureProfile(BaseModel):
    """When an automatic-mode mask counts as a structure, for one modality family (LiteMedSAM).

    Every threshold is a label-free measurement of the mask against a ring around it and along its
    border (see :mod:`samie_node.engine.structures`). The defaults were tuned on generated images of one
    seed and checked on another (``bench/quality.py``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_contrast: float = Field(default=2.5, ge=0)
    min_z: float = Field(default=6.0, ge=0)
    min_edge: float = Field(default=1.0, ge=0)
    min_edge_local: float = Field(default=1.6, ge=0)
    #: The border's median gradient at the finest scale against the image's typical one (``edge_fine``):
    #: a border that is a step all the way round, not a smooth swell of tissue or texture. 0.0: not asked.
    min_edge_fine: float = Field(default=0.0, ge=0)
    min_thickness: float = Field(default=0.5, ge=0, le=1)
    min_solidity: float = Field(default=0.6, ge=0, le=1)
    min_pred_iou: float = Field(default=0.6, ge=0, le=1)
    min_stability: float = Field(default=0.6, ge=0, le=1)
    #: A *distinct* region stands out from its ring clearly: ``contrast`` at least ``distinct_contrast``
    #: and ``z`` at least ``distinct_z`` (both: ``z`` grows with the area, so a large tissue layer's piece
    #: of modest contrast has a large one, and a small speckle blob of high contrast a small one).
    distinct_contrast: float = Field(default=0.0, ge=0)
    distinct_z: float = Field(default=0.0, ge=0)
    #: Only a distinct region may be thinner than this (but at least ``min_thickness``): elongated, as a
    #: tissue layer's piece is. 0.0: no such rule. (An ellipse of axes a : b measures a thickness of
    #: sqrt(b / a): 0.6 is 2.8 : 1.)
    elongated_thickness: float = Field(default=0.0, ge=0, le=1)
    #: A distinct region needs only these of LiteMedSAM's own scores (when lower than ``min_pred_iou`` and
    #: ``min_stability``): the model scores some plainly visible masses on speckle low. 1.0: no such rule.
    distinct_min_pred_iou: float = Field(default=1.0, ge=0, le=1)
    distinct_min_stability: float = Field(default=1.0, ge=0, le=1)
    #: A *stark* region stands out from its ring by at least this ``contrast``, with ``z`` at least twice
    #: ``min_z``: it needs none of the border tests (``edge``, ``edge_local``, ``edge_fine``). A hypodense
    #: lesion on noisy CT has a step no larger, at the scale it is measured at, than the soft tissue's smooth
    #: swells, yet stands out far more than they do. 0.0: no such rule.
    stark_contrast: float = Field(default=0.0, ge=0)
    #: The probability of being a lesion that the learned verifier on LiteMedSAM's embedding must give
    #: (:mod:`samie_node.engine.verifier`); 0.0: not asked. Only weights with a packaged verifier (the
    #: packaged LiteMedSAM) have the score; with others the hand thresholds decide alone.
    min_learned: float = Field(default=0.0, ge=0, le=1)
    #: A region whose learned score is more than this is one the verifier is *sure* of: it may be thinner
    #: than ``elongated_thickness`` (distinct or not), and it needs only ``sure_z_share`` of ``min_z``
    #: (a faint mass on coarse speckle has few independent samples). LiteMedSAM's own scores are asked as
    #: for any region. 1.0: no such rule.
    sure_learned: float = Field(default=1.0, ge=0, le=1)
    sure_z_share: float = Field(default=1.0, gt=0, le=1)
    #: Thresholds that replace the ones above when the segmenter has a verifier for its weights (usually
    #: ``min_learned`` and hand thresholds lowered, since the verifier drops what they let through); a
    #: distinct region that passes the hand thresholds is kept too (:func:`samie_node.engine.automatic.keeps`).
    #: Weights without a verifier keep the hand thresholds; so do proposals (before decoding).
    with_verifier: dict[str, float] = Field(default_factory=dict)
    min_area_fraction: float = Field(default=0.0015, ge=0, le=1)
    max_area_fraction: float = Field(default=0.45, gt=0, le=1)
    #: A region whose bounding box covers more than this share of the image's width or height is a layer
    #: running across the image (ultrasound's subcutaneous fat), not a lesion; 1.0: no limit.
    max_span: float = Field(default=1.0, gt=0, le=1)
    #: Overlapping kept masks: the better structure stays, unless a larger mask that passes the filter holds
    #: kept ones (each more than 80 % inside it) and scores at least this share of the best of them; then
    #: it replaces them (a pigmented skin lesion is one lesion, not its darker patches). So may a larger mask
    #: that failed only the border tests and passes measured on its refined border, when the kept ones
    #: cover less than 30 % of it (``engine/automatic.py``, ``PATCHES``). 1.0: never.
    whole_share: float = Field(default=1.0, gt=0, le=1)
    #: Where a kept mask's border is put, from the ring's mean (0) to the inside's (1): 0.5 is halfway,
    #: where a blurred step edge lies (:func:`samie_node.engine.structures.refine_border`).
    border_level: float = Field(default=0.5, gt=0, lt=1)

    @field_validator("with_verifier")
    @classmethod
    def _verifier_names_thresholds(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - (set(cls.model_fields) - {"with_verifier", "border_level"}))
        if unknown:
            raise ValueError(f"with_verifier names no threshold of a profile: {unknown}")
        return value

    def verified(self) -> StructureProfile:
        """This profile as it is when the segmenter has a verifier (``with_verifier`` applied, validated)."""
        if not self.with_verifier:
            return self
        return StructureProfile.model_validate({**self.model_dump(exclude={"with_verifier"}), **self.with_verifier})


def default_profiles() -> dict[str, StructureProfile]:
    return {
        "US": StructureProfile(
            min_contrast=3.0,
            min_edge=1.5,
            min_thickness=0.5,
            min_pred_iou=0.7,
            distinct_contrast=4.0,
            distinct_z=8.0,
            elongated_thickness=0.6,
            distinct_min_pred_iou=0.6,
            distinct_min_stability=0.5,
            min_area_fraction=0.008,
            max_span=0.9,
            border_level=0.7,
            with_verifier={
                "min_learned": 0.3,
                "min_contrast": 2.5,
                "min_z": 5.0,
                "min_edge_local": 1.4,
                "min_pred_iou": 0.65,
                "min_stability": 0.5,
                "min_area_fraction": 0.006,
                "sure_learned": 0.9,
                "sure_z_share": 0.8,
            },
        ),
        "XC": StructureProfile(
            min_contrast=2.8, min_edge=2.1, min_edge_local=1.6, min_z=0.0, min_area_fraction=0.005, whole_share=0.5
        ),
        "OP": StructureProfile(min_contrast=3.5, min_edge_local=2.2, min_z=6.0, min_area_fraction=0.005),
        "CT": StructureProfile(min_contrast=2.8, min_z=5.5, min_edge_fine=2.5, min_stability=0.7, stark_contrast=5.5),
        "MR": StructureProfile(min_contrast=3.5, min_edge_local=1.8, min_edge_fine=2.0, min_z=6.0),
        "default": StructureProfile(
            min_contrast=4.0, min_edge=1.7, min_edge_local=1.8, min_edge_fine=2.5, min_z=8.0, min_area_fraction=0.003
        ),
    }
