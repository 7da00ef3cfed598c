"""What a request carries, before any model sees it: JSON envelopes and the names of images sent without an id."""

import base64

import numpy as np
import pytest

from optik.results import Detection
from optik.services.loop import UNNAMED, envelope_request, predict_requests


@pytest.mark.parametrize(
    ("envelope", "error"),
    [
        ({"id": "x"}, 'the JSON envelope has no "image" field'),
        ({"id": "x", "image": 5}, 'the envelope\'s "image" is a number, not a base64 string'),
        ({"id": "x", "image": ["a"]}, 'the envelope\'s "image" is a list, not a base64 string'),
        ({"id": "x", "image": "###"}, "not valid base64"),
        ([1, 2], "must be an object"),
    ],
)
def test_an_envelope_without_a_usable_image_says_what_is_wrong_with_it(envelope, error):
    request = envelope_request(envelope)
    assert request.image is None and error in request.error


def test_an_envelope_carries_its_id_and_decoded_bytes():
    request = envelope_request({"id": 7, "image": base64.b64encode(b"\xff\xd8 bytes").decode()})
    assert (request.id, request.image, request.error, request.envelope) == (7, b"\xff\xd8 bytes", None, True)


class NamesEcho:
    """A predictor that detects nothing and keeps the names it was given: what the services name each image."""

    batch_size = 4

    def predict_stream(self, images, names):
        for name in names:
            yield Detection(name, ["thing"], np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int))


def test_images_without_an_id_are_named_unnamed_and_the_others_by_their_id():
    requests = [envelope_request({"image": base64.b64encode(b"x").decode()}), envelope_request({"id": 3, "image": ""})]
    results = predict_requests(NamesEcho(), requests)
    assert [r.source for r in results] == [UNNAMED, "3"]
