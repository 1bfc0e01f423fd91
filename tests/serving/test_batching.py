"""ModelRunner, the batch function of a model's scheduler: one pipeline call per kind, isolation of bad items."""

from __future__ import annotations

import numpy as np
import pytest

from mmfusion.serving.batching import Call, InferTensors, ModelRunner, Predict
from mmfusion.types import InputError, Inputs


class FakeBackend:
    """Outputs the row sums of 'x' (B, 1) and its first column (B,); refuses negative values like a real graph."""

    def __init__(self, batchless: bool = False) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.batchless = batchless

    def run(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = arrays["x"]
        self.calls.append(x.shape)
        if (x < 0).any():
            raise RuntimeError("index out of range in self")
        if self.batchless:
            return {"total": np.asarray(x.sum())}
        return {"sums": x.sum(axis=1, keepdims=True), "first": x[:, 0]}  # (B, 1), (B,)


class FakePipeline:
    """predict_batch records each call; a text 'bad' is refused like a user error."""

    name = "fake"

    def __init__(self, batchless: bool = False) -> None:
        self.backend = FakeBackend(batchless)
        self.predict_calls: list[list[str]] = []

    def predict_batch(self, items: list[Inputs]) -> list[str]:
        self.predict_calls.append([item.text for item in items])
        if any(item.text == "bad" for item in items):
            raise InputError("text: 'bad'; expected a good text")
        return [f"prediction of {item.text}" for item in items]


def tensors(*rows: list[float]) -> InferTensors:
    return InferTensors(lambda: {"x": np.asarray(rows, np.float32)})


def test_predict_items_go_through_one_predict_batch_call():
    pipeline = FakePipeline()
    outcomes = ModelRunner(pipeline)([Predict(Inputs(text=text)) for text in ("a", "b", "c")])
    assert [outcome.unwrap() for outcome in outcomes] == ["prediction of a", "prediction of b", "prediction of c"]
    assert pipeline.predict_calls == [["a", "b", "c"]]
    assert all(o.batch_size == 3 and o.started <= o.finished and o.error is None for o in outcomes)


def test_a_bad_item_fails_alone_and_its_neighbours_are_served():
    pipeline = FakePipeline()
    outcomes = ModelRunner(pipeline)([Predict(Inputs(text=text)) for text in ("a", "bad", "c")])
    assert outcomes[0].unwrap() == "prediction of a" and outcomes[2].unwrap() == "prediction of c"
    with pytest.raises(InputError, match="text: 'bad'"):
        outcomes[1].unwrap()
    assert pipeline.predict_calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]


def test_compatible_tensor_requests_are_concatenated_and_split_back():
    pipeline = FakePipeline()
    outcomes = ModelRunner(pipeline)([tensors([1, 2]), tensors([3, 4], [5, 6]), tensors([7, 8])])
    assert pipeline.backend.calls == [(4, 2)]  # one backend call for 1 + 2 + 1 rows
    values = [outcome.unwrap() for outcome in outcomes]
    np.testing.assert_array_equal(values[0]["sums"], [[3]])
    np.testing.assert_array_equal(values[1]["sums"], [[7], [11]])
    np.testing.assert_array_equal(values[1]["first"], [3, 5])
    np.testing.assert_array_equal(values[2]["first"], [7])


def test_tensor_requests_of_other_shapes_or_dtypes_run_on_their_own():
    pipeline = FakePipeline()
    wide = tensors([1, 2, 3])
    as_int = InferTensors(lambda: {"x": np.asarray([[1, 1]], np.int64)})
    outcomes = ModelRunner(pipeline)([tensors([1, 2]), wide, tensors([3, 4]), as_int])
    assert sorted(pipeline.backend.calls) == [(1, 2), (1, 3), (2, 2)]
    assert [outcome.unwrap()["sums"].tolist() for outcome in outcomes] == [[[3]], [[6]], [[7]], [[2]]]


def test_a_request_the_backend_refuses_fails_alone_with_an_input_error():
    pipeline = FakePipeline()
    outcomes = ModelRunner(pipeline)([tensors([1, 2]), tensors([-1, 2]), tensors([5, 5])])
    with pytest.raises(InputError, match="model 'fake' cannot run these inputs: index out of range"):
        outcomes[1].unwrap()
    assert outcomes[0].unwrap()["sums"].tolist() == [[3]] and outcomes[2].unwrap()["sums"].tolist() == [[10]]
    assert pipeline.backend.calls == [(3, 2), (1, 2), (1, 2), (1, 2)]  # joined, then one by one


def test_a_preprocessing_error_fails_only_its_request():
    def refuse() -> dict:
        raise InputError("input 'text'[0]: 2 bytes are not UTF-8 text")

    pipeline = FakePipeline()
    outcomes = ModelRunner(pipeline)([InferTensors(refuse), tensors([1, 1])])
    with pytest.raises(InputError, match="not UTF-8"):
        outcomes[0].unwrap()
    assert outcomes[1].unwrap()["sums"].tolist() == [[2]]


def test_outputs_without_a_batch_axis_fall_back_to_one_call_per_request():
    pipeline = FakePipeline(batchless=True)
    outcomes = ModelRunner(pipeline)([tensors([1, 2]), tensors([3, 4])])
    assert [float(outcome.unwrap()["total"]) for outcome in outcomes] == [3.0, 7.0]
    assert pipeline.backend.calls == [(2, 2), (1, 2), (1, 2)]


def test_a_mixed_batch_runs_each_kind_and_keeps_the_order():
    pipeline = FakePipeline()
    batch = [Call(lambda p: p.name), Predict(Inputs(text="a")), tensors([2, 2]), Predict(Inputs(text="b"))]
    outcomes = ModelRunner(pipeline)(batch)
    assert outcomes[0].unwrap() == "fake"
    assert outcomes[1].unwrap() == "prediction of a" and outcomes[3].unwrap() == "prediction of b"
    assert outcomes[2].unwrap()["sums"].tolist() == [[4]]
    assert pipeline.predict_calls == [["a", "b"]] and {o.batch_size for o in outcomes} == {4}
