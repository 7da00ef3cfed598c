"""`--format` names to detection formats."""

from __future__ import annotations

import pytest

from optik.errors import OptikError
from optik.outputs.detection import FORMATS, detection_format
from optik.outputs.opex import OpexFormat
from optik.outputs.roi_csv import RoiCsvFormat


def test_names_map_to_formats_with_their_options():
    assert FORMATS == ("opex", "roi")
    opex = detection_format("opex", min_score=0.3, mask_nth=2, output_minrect=True)
    assert opex == OpexFormat(min_score=0.3, mask_nth=2, output_minrect=True) and opex.suffix == ".json"
    roi = detection_format("roi", mask_threshold=0.5, bbox_as_fallback=0.2)
    assert roi == RoiCsvFormat(mask_threshold=0.5, bbox_as_fallback=0.2) and roi.suffix == "-rois.csv"


def test_unknown_names_and_conflicting_options_are_user_errors():
    with pytest.raises(OptikError, match="opex, roi"):
        detection_format("coco")
    with pytest.raises(OptikError, match="cannot be used together"):
        detection_format("roi", fit_bbox_to_polygon=True, bbox_as_fallback=0.0)
