"""Detection output formats by the names `--format` accepts: `opex` (OPEX JSON) and `roi` (ROI CSV)."""

from __future__ import annotations

from optik.errors import OptikError
from optik.outputs.opex import OpexFormat
from optik.outputs.roi_csv import RoiCsvFormat

DETECTION_FORMATS = {"opex": OpexFormat, "roi": RoiCsvFormat}
FORMATS = tuple(DETECTION_FORMATS)


def detection_format(
    name: str,
    *,
    min_score: float | None = None,
    mask_threshold: float = 0.1,
    mask_nth: int = 1,
    output_minrect: bool = False,
    fit_bbox_to_polygon: bool = False,
    bbox_as_fallback: float = -1.0,
) -> OpexFormat | RoiCsvFormat:
    """The detection format called `name` ("opex" or "roi") with the given options (see `DetectionOptions`)."""
    if name not in DETECTION_FORMATS:
        raise OptikError(f"unknown detection format {name!r}: use one of {', '.join(FORMATS)}")
    return DETECTION_FORMATS[name](
        min_score=min_score,
        mask_threshold=mask_threshold,
        mask_nth=mask_nth,
        output_minrect=output_minrect,
        fit_bbox_to_polygon=fit_bbox_to_polygon,
        bbox_as_fallback=bbox_as_fallback,
    )
