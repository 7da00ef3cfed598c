"""Classification JSON: class order or top K, and float32 scores written as the shortest decimals."""

import json

import numpy as np

from optik.outputs.classification import ClassificationFormat
from optik.results import Classification


def test_scores_are_the_shortest_decimals_of_their_float32_values_in_class_or_score_order(tmp_path):
    probs = np.array([0.4789486825466156, 0.25233033299446106, 0.26872098445892334], np.float32)
    result = Classification("a.jpg", ["red", "green", "blue"], probs)
    text = ClassificationFormat().text(result)
    assert text == '{"red": 0.47894868, "green": 0.25233033, "blue": 0.26872098}'
    read = json.loads(text)
    assert all(np.float32(read[name]) == p for name, p in zip(result.classes, probs))  # nothing lost
    top = json.loads(ClassificationFormat(top_k=2).text(result))
    assert list(top) == ["red", "blue"]
    assert ClassificationFormat(min_score=0.26).payload(result) == {"red": 0.47894868, "blue": 0.26872098}
    written = ClassificationFormat().write(result, tmp_path / "a.json")
    assert written.read_text() == text
