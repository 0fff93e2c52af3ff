"""An index's encoders run without torch: exported once to ONNX beside the index
(:mod:`.export`, the only module here importing torch), then run with onnxruntime — the CLIP's
text tower on token ids from a torch-free CLIP tokenizer (:mod:`.text`, :mod:`.tokenizer`), and
the whole image encoder (decomposition, aligner, property sums) on pixels prepared with PIL and
NumPy as the model's own transform prepares them (:mod:`.image`, :mod:`.pixels`). So a query
from the shell loads neither torch nor the models. Each tower is another backend of the one
encoder, not another encoder: it is checked against it when written (:data:`TOLERANCE`), and a
file names inside itself what it was exported from (:mod:`.towers`)."""
