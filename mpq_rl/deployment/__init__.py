"""After the search: held-out evaluation and LSQ finetuning of a policy on the train split, its weight files, and ONNX
export checked in onnxruntime."""
