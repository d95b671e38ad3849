"""Drive a server with the standard OIP client, tritonclient.grpc, unmodified.

Run as a separate process: tritonclient registers its own copy of the
`inference.*` protobuf messages, which cannot share a process with ours.
Reads one JSON job on stdin and prints one JSON answer:

    {"url", "calls": [{"op": "infer" | "ready" | "model_ready" | "metadata" | "index",
                       "model", "version", "id", "inputs": [{"name", "datatype", "shape",
                       "b64" | "strings"}], "outputs": [names]}]}

Numeric tensors travel as base64 of their little-endian bytes, so the test can
compare them bit for bit with onnxruntime's.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, triton_to_np_dtype


def _array(spec: dict[str, Any]) -> np.ndarray[Any, Any]:
    if spec["datatype"] == "BYTES":
        return np.array([s.encode() for s in spec["strings"]], dtype=object).reshape(spec["shape"])
    dtype = np.dtype(triton_to_np_dtype(spec["datatype"])).newbyteorder("<")
    return np.frombuffer(base64.b64decode(spec["b64"]), dtype=dtype).reshape(spec["shape"])


def _call(client: grpcclient.InferenceServerClient, call: dict[str, Any]) -> dict[str, Any]:
    op = call["op"]
    if op == "ready":
        return {"live": client.is_server_live(), "ready": client.is_server_ready()}
    if op == "model_ready":
        return {"ready": client.is_model_ready(call["model"], call.get("version", ""))}
    if op == "metadata":
        meta = client.get_model_metadata(call["model"], call.get("version", ""), as_json=True)
        server = client.get_server_metadata(as_json=True)
        return {"model": meta, "server": server}
    if op == "index":
        return {"index": client.get_model_repository_index(as_json=True)}
    inputs = []
    for spec in call["inputs"]:
        tensor = grpcclient.InferInput(spec["name"], spec["shape"], spec["datatype"])
        tensor.set_data_from_numpy(_array(spec))
        inputs.append(tensor)
    outputs = [grpcclient.InferRequestedOutput(name) for name in call.get("outputs", [])] or None
    result = client.infer(
        call["model"],
        inputs,
        model_version=call.get("version", ""),
        outputs=outputs,
        request_id=call.get("id", ""),
    )
    response = result.get_response()
    answer: dict[str, Any] = {
        "id": response.id,
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": {},
    }
    for output in response.outputs:
        array = result.as_numpy(output.name)
        entry: dict[str, Any] = {"datatype": output.datatype, "shape": list(array.shape)}
        if output.datatype == "BYTES":
            entry["strings"] = [
                item.decode() if isinstance(item, bytes) else str(item) for item in array.ravel()
            ]
        else:
            entry["b64"] = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode()
        answer["outputs"][output.name] = entry
    return answer


def main() -> None:
    job = json.load(sys.stdin)
    client = grpcclient.InferenceServerClient(job["url"])
    answers = []
    for call in job["calls"]:
        try:
            answers.append(_call(client, call))
        except InferenceServerException as error:
            answers.append({"error": {"status": error.status(), "message": error.message()}})
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
