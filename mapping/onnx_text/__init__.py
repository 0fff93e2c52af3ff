"""A CLIP's text tower run without torch: exported once to ONNX beside an index
(:mod:`.export`, the only module here importing torch), then run with onnxruntime
(:mod:`.tower`) on token ids from a torch-free CLIP tokenizer (:mod:`.tokenizer`) — so a text
query from the shell loads neither torch nor the image model. The tower is another backend of
the CLIP's own ``encode_text``, not another encoder: its outputs equal the torch ones to ~1e-6."""
